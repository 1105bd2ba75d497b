//! Finding GPUs without ever panicking, what a stage asks of them ([`Resources`]), and sharing
//! them between a pipeline's subtasks ([`GpuPool`], [`Lease`]).
//!
//! * [`discover`] runs once per process. It first asks whether the CUDA driver library can be
//!   loaded at all (cudarc would panic on first use if not), then initialises the driver and
//!   reads each device's name, memory and compute capability. `ALLUVIUM_GPU=off` turns GPUs off.
//! * A stage declares `Resources::gpu(0.5).memory(4 << 30)`: half a GPU and 4 GiB of its memory
//!   per subtask. Each subtask takes a [`Lease`] from the process-wide pool on its first batch:
//!   fractions of one device add up to at most 1, memory to at most the device's; whole GPUs
//!   (`gpu(1)`, `gpu(2)`) take devices no one else holds. A lease is given back when the subtask
//!   ends.
//! * A subtask that gets no lease runs on the CPU, and the stage says so once, in one log line
//!   naming the reason ([`fall_back`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

/// One CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// The device's name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// `(major, minor)`.
    pub compute_capability: (i32, i32),
}

/// The GPUs of this process, found once: the devices, or why there are none.
pub fn discover() -> &'static Result<Vec<DeviceInfo>, String> {
    static FOUND: OnceLock<Result<Vec<DeviceInfo>, String>> = OnceLock::new();
    FOUND.get_or_init(probe)
}

fn probe() -> Result<Vec<DeviceInfo>, String> {
    if std::env::var("ALLUVIUM_GPU").is_ok_and(|v| v.eq_ignore_ascii_case("off") || v == "0") {
        return Err("GPUs are turned off (ALLUVIUM_GPU=off)".into());
    }
    if !crate::kernels::library_present(crate::kernels::Library::Driver) {
        return Err("no CUDA driver on this machine (libcuda.so was not found)".into());
    }
    crate::kernels::guarded("probing CUDA", || {
        use cudarc::driver::CudaContext;
        cudarc::driver::result::init().map_err(|e| format!("the CUDA driver did not start: {e}"))?;
        let n = CudaContext::device_count().map_err(|e| format!("counting CUDA devices: {e}"))?;
        if n <= 0 {
            return Err("the CUDA driver sees no device".into());
        }
        (0..n as usize)
            .map(|ordinal| {
                let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e}"))?;
                Ok(DeviceInfo {
                    ordinal,
                    name: ctx.name().unwrap_or_else(|_| "unknown".into()),
                    memory_bytes: ctx.total_mem().unwrap_or(0) as u64,
                    compute_capability: ctx.compute_capability().unwrap_or((0, 0)),
                })
            })
            .collect()
    })
}

/// What one subtask of a stage needs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    /// GPUs: 0 (none, the CPU), a fraction of one (shared), or a whole number of them.
    pub gpus: f64,
    /// GPU memory, bytes (0: no claim).
    pub gpu_memory: u64,
}

impl Resources {
    /// `n` GPUs: `gpu(1.0)` one of its own, `gpu(0.25)` a quarter of one, shared.
    pub fn gpu(n: f64) -> Self {
        Self { gpus: n, gpu_memory: 0 }
    }
    /// The CPU only.
    pub fn cpu() -> Self {
        Self::default()
    }
    /// Claims `bytes` of the GPU's memory too.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.gpu_memory = bytes;
        self
    }
    /// Whether these ask for a GPU at all.
    pub fn wants_gpu(&self) -> bool {
        self.gpus > 0.0
    }
    /// Whether the numbers make sense: a fraction in (0, 1] or a whole number; memory only
    /// with a GPU.
    pub fn validate(&self) -> Result<(), String> {
        let g = self.gpus;
        if !(g.is_finite() && g >= 0.0) || (g > 1.0 && g.fract() != 0.0) {
            return Err(format!("`gpus = {g}` must be a fraction of one GPU (e.g. 0.5) or a whole number (1, 2)"));
        }
        if self.gpu_memory > 0 && g == 0.0 {
            return Err("`gpu_memory` needs `gpus` (e.g. gpus = 0.5)".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Slot {
    info: DeviceInfo,
    used: f64,
    memory_used: u64,
}

/// GPUs shared between subtasks by fractions and memory.
#[derive(Debug, Clone)]
pub struct GpuPool {
    slots: Arc<Mutex<Vec<Slot>>>,
}

/// A share of GPUs held by one subtask; given back on drop.
#[derive(Debug)]
pub struct Lease {
    pool: GpuPool,
    /// `(ordinal, fraction)` of each device held.
    shares: Vec<(usize, f64)>,
    memory: u64,
}

impl Lease {
    /// The device to run on (the first held).
    pub fn ordinal(&self) -> usize {
        self.shares[0].0
    }
    /// Every device held.
    pub fn ordinals(&self) -> Vec<usize> {
        self.shares.iter().map(|s| s.0).collect()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut slots = self.pool.slots.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (ordinal, share)) in self.shares.iter().enumerate() {
            if let Some(s) = slots.iter_mut().find(|s| s.info.ordinal == *ordinal) {
                s.used = (s.used - share).max(0.0);
                if i == 0 {
                    s.memory_used = s.memory_used.saturating_sub(self.memory);
                }
            }
        }
    }
}

/// Tolerance for adding fractions (0.1 + 0.2 + 0.7 is one GPU).
const EPSILON: f64 = 1e-9;

impl GpuPool {
    /// A pool of these devices.
    pub fn new(devices: Vec<DeviceInfo>) -> Self {
        let slots = devices.into_iter().map(|info| Slot { info, used: 0.0, memory_used: 0 }).collect();
        Self { slots: Arc::new(Mutex::new(slots)) }
    }

    /// The process's pool: the devices [`discover`] found, or why there are none.
    pub fn global() -> Result<&'static GpuPool, String> {
        static POOL: OnceLock<Result<GpuPool, String>> = OnceLock::new();
        POOL.get_or_init(|| discover().clone().map(GpuPool::new)).as_ref().map_err(Clone::clone)
    }

    /// Takes what `r` asks for, or says why it cannot.
    pub fn acquire(&self, r: &Resources) -> Result<Lease, String> {
        r.validate()?;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.is_empty() {
            return Err("there is no GPU".into());
        }
        let fits_memory = |s: &Slot| s.info.memory_bytes == 0 || s.memory_used + r.gpu_memory <= s.info.memory_bytes;
        let shares: Vec<(usize, f64)> = if r.gpus <= 1.0 {
            // The least used device the fraction and memory fit on.
            let best = slots
                .iter()
                .filter(|s| s.used + r.gpus <= 1.0 + EPSILON && fits_memory(s))
                .min_by(|a, b| a.used.total_cmp(&b.used))
                .map(|s| s.info.ordinal);
            match best {
                Some(o) => vec![(o, r.gpus)],
                None => {
                    let free = slots.iter().map(|s| format!("{:.2}", 1.0 - s.used)).collect::<Vec<_>>().join(", ");
                    return Err(format!(
                        "{} GPU and {} bytes of its memory were asked for; free now: {free} of each GPU",
                        r.gpus, r.gpu_memory
                    ));
                }
            }
        } else {
            let free: Vec<usize> = slots.iter().filter(|s| s.used <= EPSILON && fits_memory(s)).map(|s| s.info.ordinal).collect();
            let n = r.gpus as usize;
            if free.len() < n {
                return Err(format!("{n} whole GPUs were asked for; {} of {} are free", free.len(), slots.len()));
            }
            free[..n].iter().map(|o| (*o, 1.0)).collect()
        };
        for (i, (ordinal, share)) in shares.iter().enumerate() {
            let s = slots.iter_mut().find(|s| s.info.ordinal == *ordinal).expect("a device of the pool");
            s.used += share;
            if i == 0 {
                s.memory_used += r.gpu_memory;
            }
        }
        drop(slots);
        Ok(Lease { pool: self.clone(), shares, memory: r.gpu_memory })
    }
}

/// Says, once per stage and process, that `stage` asked for a GPU and runs on the CPU, and why.
pub fn fall_back(stage: &str, why: &str) {
    static SAID: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = SAID.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner()).insert(stage.to_string());
    if first {
        tracing::warn!(stage, reason = why, "the stage asked for a GPU and runs on the CPU instead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(ordinal: usize, gib: u64) -> DeviceInfo {
        DeviceInfo { ordinal, name: format!("gpu{ordinal}"), memory_bytes: gib << 30, compute_capability: (9, 0) }
    }

    #[test]
    fn fractions_share_a_device_up_to_one() {
        let pool = GpuPool::new(vec![device(0, 80)]);
        let a = pool.acquire(&Resources::gpu(0.5)).unwrap();
        let b = pool.acquire(&Resources::gpu(0.25)).unwrap();
        let c = pool.acquire(&Resources::gpu(0.25)).unwrap();
        assert_eq!((a.ordinal(), b.ordinal(), c.ordinal()), (0, 0, 0));
        let e = pool.acquire(&Resources::gpu(0.1)).unwrap_err();
        assert!(e.contains("free now: 0.00"), "{e}");
        drop(b);
        assert!(pool.acquire(&Resources::gpu(0.25)).is_ok(), "given back on drop");
    }

    #[test]
    fn fractions_spread_over_devices_and_whole_gpus_take_free_ones() {
        let pool = GpuPool::new(vec![device(0, 80), device(1, 80)]);
        let a = pool.acquire(&Resources::gpu(0.5)).unwrap();
        let b = pool.acquire(&Resources::gpu(0.5)).unwrap();
        assert_ne!(a.ordinal(), b.ordinal(), "the least used device first");
        let e = pool.acquire(&Resources::gpu(2.0)).unwrap_err();
        assert!(e.contains("0 of 2 are free"), "{e}");
        drop((a, b));
        let both = pool.acquire(&Resources::gpu(2.0)).unwrap();
        assert_eq!(both.ordinals(), vec![0, 1]);
        assert!(pool.acquire(&Resources::gpu(0.1)).is_err());
    }

    #[test]
    fn memory_claims_add_up_to_the_device() {
        let pool = GpuPool::new(vec![device(0, 16)]);
        let _a = pool.acquire(&Resources::gpu(0.25).memory(10 << 30)).unwrap();
        assert!(pool.acquire(&Resources::gpu(0.25).memory(8 << 30)).is_err(), "10 + 8 GiB > 16 GiB");
        assert!(pool.acquire(&Resources::gpu(0.25).memory(6 << 30)).is_ok());
    }

    #[test]
    fn nonsense_is_refused_with_the_fix() {
        assert!(Resources::gpu(1.5).validate().unwrap_err().contains("whole number"));
        assert!(Resources::gpu(-1.0).validate().is_err());
        assert!(Resources::cpu().memory(1).validate().unwrap_err().contains("needs `gpus`"));
        assert!(GpuPool::new(vec![]).acquire(&Resources::gpu(1.0)).unwrap_err().contains("no GPU"));
    }

    #[test]
    fn discovery_never_panics() {
        // On a machine without CUDA this is an error with the reason; with one, the devices.
        match discover() {
            Ok(devices) => assert!(!devices.is_empty()),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
