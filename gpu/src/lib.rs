//! # alluvium-gpu
//!
//! GPUs for Alluvium stages, without requiring one:
//!
//! * **device discovery** ([`discover`]) with cudarc's dynamic loading, probed first so that a
//!   machine without CUDA never panics (cudarc panics when a library is missing);
//! * **resources** declared per stage ([`Resources`]: `gpu(1)`, fractional sharing, memory),
//!   shared between subtasks by a process-wide [`GpuPool`]; one clear log line when a stage asked
//!   for a GPU and runs on the CPU instead ([`fall_back`]);
//! * **kernels** compiled with NVRTC at run time ([`kernels`]: pixel-format conversion, resize,
//!   normalise to a tensor), each with a CPU twin in [`ops`] that gives the same numbers;
//! * the [`ToTensor`] stage: decoded images → normalised `[3, H, W]` tensors, on a GPU or not.
//!
//! ```text
//!  discover() ──▶ GpuPool ──acquire(Resources)──▶ Lease ──▶ Gpu::open (NVRTC) ──▶ kernels
//!       └── no CUDA / no share / no NVRTC ──▶ fall_back(stage, why): one log line ──▶ ops (CPU)
//! ```
//!
//! Everything here builds and passes its tests on machines without CUDA; the GPU tests run where
//! a GPU is found and say that they were skipped elsewhere. NVRTC needs no GPU, so CI compiles the
//! kernels on every run (NVRTC from PyPI's `nvidia-cuda-nvrtc-cu12`, put on the library path by
//! `.ci/run`). `ALLUVIUM_GPU=off` turns GPUs off.
//! Unsafe code is limited to looking for the CUDA libraries and launching the kernels, each with
//! its reason next to it.

pub mod device;
pub mod kernels;
pub mod ops;
pub mod tensor;

pub use device::{discover, fall_back, DeviceInfo, GpuPool, Lease, Resources};
pub use kernels::Gpu;
pub use tensor::ToTensor;
