//! # alluvium-formats
//!
//! Media codecs for Alluvium, as Arrow-in/Arrow-out operators on top of `alluvium-core`:
//!
//! * **images**: decode (JPEG/PNG/WebP/GIF/TIFF/BMP, EXIF orientation applied, a max-pixels limit
//!   against decompression bombs), resize (exact, fit, fill), encode, with reduced-DCT-scale JPEG
//!   decoding for thumbnails;
//! * **video**: probe, and frame extraction (every Nth frame, N per second, keyframes, timestamps,
//!   scene changes) on FFmpeg, streaming through bounded memory;
//! * **audio**: probe, decode, resample and window;
//! * **manifests**: CSV / JSON Lines / Parquet files whose rows carry URIs.
//!
//! Every codec turns bad input into a dead letter with a reason, never a crash.
//!
//! Landed: the image stages ([`image`]: [`DecodeImage`], [`Resize`], [`EncodeImage`]). Video, audio
//! and manifests follow. The crate depends only on `alluvium-core`, so connectors can use it without
//! pulling in lake formats.

#![forbid(unsafe_code)]

pub mod image;

pub use image::{DecodeImage, EncodeImage, Fit, ImageFormat, Resize};
