//! The CUDA kernels, compiled by NVRTC when a [`Gpu`] is opened, and their launches.
//!
//! Each kernel does what its CPU twin in [`crate::ops`] does, in the same order and in single
//! precision; compiling with `--fmad=false` keeps the device from fusing multiply-adds the CPU
//! does not fuse, so results match the CPU path (see the tolerance in [`crate::ops`]).
//!
//! Everything here can fail, and nothing panics out of it: cudarc panics on a missing library or
//! symbol, so every entry point runs under `catch_unwind` and turns such a panic into an error
//! the caller falls back to the CPU on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::ops::{Rgb, Yuv420p};

/// The kernels' CUDA C source.
pub const SOURCE: &str = r#"
extern "C" __global__ void yuv420p_to_rgb(
    const unsigned char* y, const unsigned char* u, const unsigned char* v,
    int y_stride, int uv_stride, int width, int height, unsigned char* rgb)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= width * height) return;
    int row = i / width, col = i % width;
    int c = y[row * y_stride + col] - 16;
    int ci = (row / 2) * uv_stride + col / 2;
    int d = u[ci] - 128, e = v[ci] - 128;
    int r = (298 * c + 409 * e + 128) >> 8;
    int g = (298 * c - 100 * d - 208 * e + 128) >> 8;
    int b = (298 * c + 516 * d + 128) >> 8;
    rgb[i * 3 + 0] = (unsigned char)min(max(r, 0), 255);
    rgb[i * 3 + 1] = (unsigned char)min(max(g, 0), 255);
    rgb[i * 3 + 2] = (unsigned char)min(max(b, 0), 255);
}

__device__ void tap(int i, int len, int out, int* i0, int* i1, float* f)
{
    float scale = (float)len / (float)out;
    float s = fmaxf(((float)i + 0.5f) * scale - 0.5f, 0.0f);
    int a = min((int)s, len - 1);
    *i0 = a;
    *i1 = min(a + 1, len - 1);
    *f = s - (float)a;
}

extern "C" __global__ void resize_rgb(
    const unsigned char* src, int sw, int sh, unsigned char* dst, int dw, int dh)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dw * dh) return;
    int y = i / dw, x = i % dw;
    int y0, y1, x0, x1;
    float fy, fx;
    tap(y, sh, dh, &y0, &y1, &fy);
    tap(x, sw, dw, &x0, &x1, &fx);
    for (int c = 0; c < 3; c++) {
        float p00 = src[(y0 * sw + x0) * 3 + c], p01 = src[(y0 * sw + x1) * 3 + c];
        float p10 = src[(y1 * sw + x0) * 3 + c], p11 = src[(y1 * sw + x1) * 3 + c];
        float top = (1.0f - fx) * p00 + fx * p01;
        float bottom = (1.0f - fx) * p10 + fx * p11;
        float v = (1.0f - fy) * top + fy * bottom;
        dst[i * 3 + c] = (unsigned char)fminf(fmaxf(floorf(v + 0.5f), 0.0f), 255.0f);
    }
}

extern "C" __global__ void normalize_chw(
    const unsigned char* rgb, int n, float m0, float m1, float m2, float s0, float s1, float s2, float* out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = ((float)rgb[i * 3 + 0] / 255.0f - m0) / s0;
    out[n + i] = ((float)rgb[i * 3 + 1] / 255.0f - m1) / s1;
    out[2 * n + i] = ((float)rgb[i * 3 + 2] / 255.0f - m2) / s2;
}
"#;

/// A GPU with the kernels loaded: one context (the device's primary one) and one stream.
pub struct Gpu {
    ordinal: usize,
    stream: Arc<CudaStream>,
    yuv: CudaFunction,
    resize: CudaFunction,
    normalize: CudaFunction,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("ordinal", &self.ordinal).finish()
    }
}

/// Runs `f`, turning a cudarc panic (a missing library or symbol) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("{what}: {why}"))
        }
    }
}

fn launch_config(n: usize) -> LaunchConfig {
    let threads = 256u32;
    LaunchConfig { grid_dim: ((n as u32).div_ceil(threads), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// A CUDA library cudarc uses.
pub(crate) enum Library {
    /// `libcuda.so`, the driver.
    Driver,
    /// `libnvrtc.so`, the run-time compiler.
    Nvrtc,
}

/// Whether `library` can be used: looked for by name when CUDA is loaded at run time (the
/// default); always, when it is linked (the `linked-cuda` feature: the process would not have
/// started without it).
pub(crate) fn library_present(library: Library) -> bool {
    #[cfg(feature = "linked-cuda")]
    {
        let _ = library;
        true
    }
    #[cfg(not(feature = "linked-cuda"))]
    #[allow(unsafe_code)]
    // SAFETY: only looks for the library by name (dlopen); calls nothing in it.
    unsafe {
        match library {
            Library::Driver => cudarc::driver::sys::is_culib_present(),
            Library::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
        }
    }
}

/// Compiles [`SOURCE`] to PTX with NVRTC (no GPU needed, only the NVRTC library).
pub fn compile() -> Result<Ptx, String> {
    guarded("compiling the kernels", || {
        if !library_present(Library::Nvrtc) {
            return Err("no NVRTC library (libnvrtc.so) to compile the kernels with".into());
        }
        let opts = CompileOptions { fmad: Some(false), ..Default::default() };
        compile_ptx_with_opts(SOURCE, opts).map_err(|e| format!("compiling the kernels: {e}"))
    })
}

impl Gpu {
    /// Opens device `ordinal` and compiles the kernels with NVRTC.
    pub fn open(ordinal: usize) -> Result<Self, String> {
        guarded("opening the GPU", || {
            let ptx = compile()?;
            let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e}"))?;
            let module = ctx.load_module(ptx).map_err(|e| format!("loading the kernels: {e}"))?;
            let f = |name: &str| module.load_function(name).map_err(|e| format!("kernel {name}: {e}"));
            Ok(Self {
                ordinal,
                stream: ctx.default_stream(),
                yuv: f("yuv420p_to_rgb")?,
                resize: f("resize_rgb")?,
                normalize: f("normalize_chw")?,
            })
        })
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn upload(&self, bytes: &[u8]) -> Result<CudaSlice<u8>, String> {
        self.stream.clone_htod(bytes).map_err(|e| format!("copying to the GPU: {e}"))
    }

    fn launch_error(e: impl std::fmt::Display) -> String {
        format!("running a kernel: {e}")
    }

    /// [`crate::ops::yuv420p_to_rgb`] on the GPU.
    pub fn yuv420p_to_rgb(&self, src: &Yuv420p<'_>) -> Result<Rgb, String> {
        src.check()?;
        guarded("yuv420p_to_rgb", || {
            let (w, h) = (src.width, src.height);
            let (y, u, v) = (self.upload(src.y)?, self.upload(src.u)?, self.upload(src.v)?);
            let mut rgb = self.stream.alloc_zeros::<u8>(w * h * 3).map_err(|e| format!("GPU memory: {e}"))?;
            let (ys, uvs, wi, hi) = (src.y_stride as i32, src.uv_stride as i32, w as i32, h as i32);
            let mut b = self.stream.launch_builder(&self.yuv);
            b.arg(&y).arg(&u).arg(&v).arg(&ys).arg(&uvs).arg(&wi).arg(&hi).arg(&mut rgb);
            #[allow(unsafe_code)]
            // SAFETY: the arguments match the kernel's signature, and every index it touches is
            // within the buffers (`check` verified the planes; `rgb` is w·h·3).
            unsafe { b.launch(launch_config(w * h)) }.map_err(Self::launch_error)?;
            let pixels = self.stream.clone_dtoh(&rgb).map_err(|e| format!("copying from the GPU: {e}"))?;
            Ok(Rgb { width: w, height: h, pixels })
        })
    }

    /// Resize then normalise on the device: [`crate::ops::resize_rgb`] followed by
    /// [`crate::ops::normalize_chw`], one upload and one download.
    pub fn to_tensor(
        &self,
        src: &Rgb<impl AsRef<[u8]>>,
        width: usize,
        height: usize,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Vec<f32>, String> {
        if src.pixels.as_ref().len() != src.width * src.height * 3
            || src.width == 0
            || src.height == 0
            || width == 0
            || height == 0
        {
            return Err(format!("cannot resize {}×{} to {width}×{height}", src.width, src.height));
        }
        guarded("to_tensor", || {
            let input = self.upload(src.pixels.as_ref())?;
            let memory = |e: cudarc::driver::DriverError| format!("GPU memory: {e}");
            let mut resized = self.stream.alloc_zeros::<u8>(width * height * 3).map_err(memory)?;
            let mut out = self.stream.alloc_zeros::<f32>(width * height * 3).map_err(memory)?;
            let (sw, sh, dw, dh) = (src.width as i32, src.height as i32, width as i32, height as i32);
            let mut b = self.stream.launch_builder(&self.resize);
            b.arg(&input).arg(&sw).arg(&sh).arg(&mut resized).arg(&dw).arg(&dh);
            #[allow(unsafe_code)]
            // SAFETY: the arguments match `resize_rgb`; it reads within sw·sh·3 and writes within
            // dw·dh·3, the sizes of `input` and `resized`.
            unsafe { b.launch(launch_config(width * height)) }.map_err(Self::launch_error)?;
            let n = (width * height) as i32;
            let mut b = self.stream.launch_builder(&self.normalize);
            b.arg(&resized)
                .arg(&n)
                .arg(&mean[0])
                .arg(&mean[1])
                .arg(&mean[2])
                .arg(&std[0])
                .arg(&std[1])
                .arg(&std[2])
                .arg(&mut out);
            #[allow(unsafe_code)]
            // SAFETY: the arguments match `normalize_chw`; it reads n·3 bytes and writes 3·n floats.
            unsafe { b.launch(launch_config(width * height)) }.map_err(Self::launch_error)?;
            self.stream.clone_dtoh(&out).map_err(|e| format!("copying from the GPU: {e}"))
        })
    }
}
