//! # alluvium-gpu
//!
//! GPUs for Alluvium stages, without requiring one:
//!
//! * **device discovery** with cudarc's dynamic loading, probed first so that a machine without
//!   CUDA never panics (cudarc panics when a library is missing); one clear log line when a stage
//!   asked for a GPU and runs on the CPU instead;
//! * **resources** declared per stage (`gpu(1)`, fractional sharing, memory);
//! * **kernels** compiled with NVRTC at run time (pixel-format conversion, resize, normalise to a
//!   tensor), each tested for equal output against its CPU fallback.
//!
//! Status: this crate is the home of the GPU paths; they land with the video/GPU work. Everything
//! here must build and pass its tests on machines without CUDA.

#![forbid(unsafe_code)]
