//! # alluvium-formats
//!
//! Media codecs for Alluvium, as Arrow-in/Arrow-out operators on top of `alluvium-core`:
//!
//! * **images**: decode (JPEG/PNG/WebP/GIF/TIFF/BMP, EXIF orientation applied, a max-pixels limit
//!   against decompression bombs), resize (exact, fit, fill), encode, with reduced-DCT-scale JPEG
//!   decoding for thumbnails;
//! * **video**: probe, and frame extraction (every Nth frame, N per second, keyframes, timestamps,
//!   scene changes) on FFmpeg, streaming through bounded memory;
//! * **audio**: probe, decode (WAV, FLAC, MP3, Ogg/Vorbis, AAC, … on FFmpeg), resample to a
//!   target rate and channel count, and cut into fixed windows as tensors or WAV clips;
//!
//! Every codec turns bad input into a dead letter with a reason, never a crash.
//!
//! Landed: the image stages ([`image`]: [`DecodeImage`], [`Resize`], [`EncodeImage`]) and video
//! ([`video`]: [`ProbeVideo`], [`ExtractFrames`], on FFmpeg through `ffmpeg-next`, reading
//! objects through [`OpenObject`](alluvium_core::OpenObject)) and audio ([`audio`]:
//! [`ProbeAudio`], [`AudioWindows`]), sharing one FFmpeg demux/decode loop. The crate depends
//! only on `alluvium-core` (and the system's FFmpeg), so connectors can use it without pulling in
//! lake formats or storage code.

#![forbid(unsafe_code)]

#[cfg(feature = "video")]
pub mod audio;
#[cfg(feature = "video")]
mod av;
pub mod image;
#[cfg(feature = "video")]
pub mod video;

#[cfg(feature = "video")]
pub use audio::{AudioEncoding, AudioWindows, LastWindow, ProbeAudio, Target, Windowing};
pub use image::{DecodeImage, EncodeImage, Fit, ImageFormat, Resize};
#[cfg(feature = "video")]
pub use video::{ExtractFrames, FrameSize, ProbeVideo, Sampling};
