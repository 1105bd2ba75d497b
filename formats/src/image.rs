//! Image stages: [`DecodeImage`], [`Resize`], [`EncodeImage`].
//!
//! ```text
//!  bytes (Binary) ──DecodeImage──▶ image: alluvium.image.decoded (RGB, HWC u8) + width, height
//!                 ──Resize──────▶ image resized (exact, fit, fill; SIMD convolution)
//!                 ──EncodeImage─▶ <output>: alluvium.image (JPEG/PNG/WebP bytes, format, size)
//! ```
//!
//! * Decoding supports JPEG, PNG, WebP, GIF (first frame), TIFF and BMP, applies the EXIF
//!   orientation, and refuses images over `max_pixels` **before** allocating their pixels
//!   (decompression bombs).
//! * JPEGs go through libjpeg-turbo (feature `turbojpeg`, default), else through pure-Rust codecs.
//! * With [`DecodeImage::target`] set, JPEGs are decoded at a reduced DCT scale (1/2, 1/4 or 1/8,
//!   as libjpeg-turbo does) when the target is much smaller than the source — the biggest single
//!   speed lever for thumbnails; the result is at least as large as the target, so `Resize` still
//!   only ever shrinks.
//! * Every bad image (corrupt, truncated, unsupported, too large) becomes a dead letter with the
//!   reason; the batch goes on.
//! * **Output bounded by bytes.** Decoded pixels are ~100 times their encoded bytes (ten 3 MB
//!   8900×8900 PNGs are 2.4 GB of RGB, more than one Arrow `Binary` column holds: it panicked),
//!   so `DecodeImage` and `Resize` emit their output through [`Operator::process_into`] in
//!   batches of at most `max_batch_bytes` of pixels (512 MiB), and an image whose pixels alone
//!   would be more is a dead letter, refused before its pixels are allocated. Their `process`
//!   returns the pieces as one batch when one can hold them, else an error.

use std::io::Cursor;
use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, BinaryArray, BinaryBuilder, StringArray, StructArray, UInt32Array};
use alluvium_core::arrow::compute::{concat_batches, take_record_batch};
use alluvium_core::arrow::datatypes::{DataType, Field};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::types::{DecodedImageType, EncodedImageType};
use alluvium_core::{Error, ErrorKind, Operator, Output, Result, RowFailure, RowResults, Stage};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// `max_batch_bytes` by default: pixel bytes per output batch of `DecodeImage` and `Resize`.
pub const MAX_BATCH_BYTES: usize = 512 << 20;
/// The most bytes one Arrow `Binary` array holds (its offsets are `i32`).
const ARRAY_BYTES: usize = i32::MAX as usize;

/// An RGB image in memory.
struct Rgb {
    pixels: Vec<u8>,
    width: u32,
    height: u32,
}

/// Decodes encoded images into RGB pixels. See the module docs.
#[derive(Debug, Clone)]
pub struct DecodeImage {
    column: String,
    output: String,
    max_pixels: u64,
    target: Option<(u32, u32)>,
    keep_encoded: bool,
    max_batch_bytes: usize,
}

impl DecodeImage {
    /// Decodes the `bytes` column into an RGB `image` column; at most 80 megapixels.
    pub fn rgb() -> Self {
        Self {
            column: "bytes".into(),
            output: "image".into(),
            max_pixels: 80_000_000,
            target: None,
            keep_encoded: false,
            max_batch_bytes: MAX_BATCH_BYTES,
        }
    }
    /// The Binary column holding encoded images.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// The decoded image column's name.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.output = name.into();
        self
    }
    /// Images with more pixels become dead letters (decompression bombs).
    pub fn max_pixels(mut self, n: u64) -> Self {
        self.max_pixels = n;
        self
    }
    /// The size the images will be resized to: JPEGs are decoded at a reduced DCT scale when that
    /// still covers it.
    pub fn target(mut self, width: u32, height: u32) -> Self {
        self.target = Some((width, height));
        self
    }
    /// Keeps the encoded bytes column in the output (dropped by default to save memory).
    pub fn keep_encoded(mut self, keep: bool) -> Self {
        self.keep_encoded = keep;
        self
    }
    /// At most this many bytes of decoded pixels per output batch ([`MAX_BATCH_BYTES`]; 1 to
    /// 2 GiB − 1, what one Arrow `Binary` array holds): a batch's images go out in several
    /// batches when they come to more, and an image that alone comes to more (width × height × 3)
    /// is a dead letter.
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n.clamp(1, ARRAY_BYTES);
        self
    }

    fn decode(&self, data: &[u8]) -> std::result::Result<(Rgb, u32, u32), String> {
        let reader =
            ImageReader::new(Cursor::new(data)).with_guessed_format().map_err(|e| format!("cannot read the image: {e}"))?;
        let format = reader.format().ok_or("unsupported image format (not JPEG, PNG, WebP, GIF, TIFF or BMP)")?;
        let mut decoder = reader.into_decoder().map_err(|e| format!("corrupt or truncated {format:?} image: {e}"))?;
        let (w, h) = decoder.dimensions();
        let pixels = w as u64 * h as u64;
        if pixels > self.max_pixels {
            return Err(format!("the image is {w}×{h} = {pixels} pixels, over max_pixels = {}", self.max_pixels));
        }
        // Before its pixels are allocated: an image must fit an output batch on its own.
        let bytes = pixels.saturating_mul(3);
        if bytes > self.max_batch_bytes as u64 {
            return Err(format!(
                "the image is {w}×{h}: {bytes} bytes of RGB decoded, over max_batch_bytes = {}",
                self.max_batch_bytes
            ));
        }
        let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
        #[cfg(feature = "turbojpeg")]
        if format == image::ImageFormat::Jpeg {
            // libjpeg-turbo, with DCT scaling when a target is set; the pure-Rust decoders below
            // handle what it refuses (CMYK, oddities) and produce the precise error.
            if let Some(img) = turbo::decode(data, self.target) {
                let mut img = DynamicImage::ImageRgb8(img);
                img.apply_orientation(orientation);
                return Ok((to_rgb(img), w, h));
            }
        }
        if format == image::ImageFormat::Jpeg {
            if let Some((tw, th)) = self.target {
                if let Some(img) = scaled_jpeg(data, w, h, tw, th)? {
                    let mut img = DynamicImage::ImageRgb8(img);
                    img.apply_orientation(orientation);
                    return Ok((to_rgb(img), w, h));
                }
            }
        }
        let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("corrupt or truncated {format:?} image: {e}"))?;
        img.apply_orientation(orientation);
        Ok((to_rgb(img), w, h))
    }
}

fn to_rgb(img: DynamicImage) -> Rgb {
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    Rgb { pixels: rgb.into_raw(), width, height }
}

/// Decodes a JPEG at the smallest DCT scale (1/8, 1/4, 1/2) that still covers the target, or
/// `None` when full size is needed.
fn scaled_jpeg(data: &[u8], w: u32, h: u32, tw: u32, th: u32) -> std::result::Result<Option<RgbImage>, String> {
    if tw.saturating_mul(2) > w || th.saturating_mul(2) > h || w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Ok(None);
    }
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(data));
    d.read_info().map_err(|e| format!("corrupt or truncated JPEG: {e}"))?;
    let (sw, sh) = d.scale(tw.max(1) as u16, th.max(1) as u16).map_err(|e| format!("corrupt JPEG: {e}"))?;
    let pixels = d.decode().map_err(|e| format!("corrupt or truncated JPEG: {e}"))?;
    let info = d.info().ok_or("corrupt JPEG: no frame header")?;
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|v| [*v, *v, *v]).collect(),
        // CMYK and 16-bit JPEGs are rare: the full decoder handles them.
        _ => return Ok(None),
    };
    Ok(RgbImage::from_raw(sw as u32, sh as u32, rgb))
}

fn binary_column<'a>(batch: &'a RecordBatch, name: &str, stage: &str) -> Result<&'a BinaryArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        .ok_or_else(|| Error::config(format!("{stage}: the input has no Binary column `{name}`; set `column`")))
}

fn decoded_array(images: &[Rgb]) -> Result<StructArray> {
    let mut px = BinaryBuilder::with_capacity(images.len(), images.iter().map(|i| i.pixels.len()).sum());
    images.iter().for_each(|i| px.append_value(&i.pixels));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(px.finish()),
        Arc::new(UInt32Array::from_iter_values(images.iter().map(|i| i.width))),
        Arc::new(UInt32Array::from_iter_values(images.iter().map(|i| i.height))),
    ];
    Ok(StructArray::try_new(DecodedImageType::fields(), cols, None)?)
}

fn read_decoded(batch: &RecordBatch, name: &str, stage: &str) -> Result<Vec<(Vec<u8>, u32, u32)>> {
    let (px, w, h) = DecodedImageType::columns(batch, name, stage)?;
    Ok((0..px.len()).map(|i| (px.value(i).to_vec(), w.value(i), h.value(i))).collect())
}

/// Runs `each` on every row of `input`, in order, and emits what it makes in batches of at most
/// `max_bytes` (as `size` counts them; an item over it alone goes out alone), each built by
/// `build` from its input rows and items; the failed rows ride as dead letters on the last batch,
/// which always goes out (empty when nothing succeeded).
fn in_batches<T>(
    input: &RecordBatch,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
    mut each: impl FnMut(usize) -> std::result::Result<T, String>,
    build: &dyn Fn(RecordBatch, Vec<T>) -> Result<RecordBatch>,
    emit: &mut dyn FnMut(Output) -> Result<()>,
) -> Result<()> {
    let (mut rows, mut items, mut bytes, mut failures) = (Vec::<u32>::new(), Vec::<T>::new(), 0usize, Vec::new());
    let piece = |rows: &mut Vec<u32>, items: &mut Vec<T>| -> Result<RecordBatch> {
        let kept = take_record_batch(input, &UInt32Array::from(std::mem::take(rows)))?;
        build(kept, std::mem::take(items))
    };
    for row in 0..input.num_rows() {
        match each(row) {
            Ok(item) => {
                let n = size(&item);
                if !items.is_empty() && bytes.saturating_add(n) > max_bytes {
                    emit(Output::new(piece(&mut rows, &mut items)?))?;
                    bytes = 0;
                }
                bytes = bytes.saturating_add(n);
                rows.push(row as u32);
                items.push(item);
            }
            Err(why) => failures.push(RowFailure::new(row, ErrorKind::Data, why)),
        }
    }
    emit(Output::with_failures(piece(&mut rows, &mut items)?, failures))
}

/// [`Operator::process`] of a stage that emits through [`in_batches`]: its pieces as one output,
/// when one batch can hold the decoded image column `column`; an error naming `stage` when not
/// (`process_into`, which the runtime calls, has no such limit).
fn one_output(pieces: Vec<Output>, column: &str, stage: &str) -> Result<Output> {
    if pieces.len() <= 1 {
        return pieces.into_iter().next().ok_or_else(|| Error::internal(format!("{stage}: no output")));
    }
    let mut total = 0usize;
    for p in &pieces {
        total = total.saturating_add(DecodedImageType::columns(&p.batch, column, stage)?.0.values().len());
    }
    if total > ARRAY_BYTES {
        return Err(Error::data(format!(
            "{stage}: the batch's images come to {total} bytes of pixels, more than one Arrow batch holds (2 GiB); \
             `process` returns one batch: use `process_into` (as the runtime does), which splits them, or smaller batches"
        )));
    }
    let failures = pieces.iter().flat_map(|p| p.failures.iter().cloned()).collect();
    let schema = pieces[0].batch.schema();
    Ok(Output::with_failures(concat_batches(&schema, pieces.iter().map(|p| &p.batch))?, failures))
}

impl Operator for DecodeImage {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let mut pieces = Vec::new();
        self.process_into(batch, &mut |out| {
            pieces.push(out);
            Ok(())
        })?;
        one_output(pieces, &self.output, "decode_image")
    }

    fn process_into(&mut self, batch: RecordBatch, emit: &mut dyn FnMut(Output) -> Result<()>) -> Result<()> {
        let data = binary_column(&batch, &self.column, "decode_image")?;
        let this = &*self;
        let decoded = DecodedImageType::new(3)?;
        let build = |kept: RecordBatch, rows: Vec<(Rgb, u32, u32)>| -> Result<RecordBatch> {
            let widths: Vec<u32> = rows.iter().map(|(_, w, _)| *w).collect();
            let heights: Vec<u32> = rows.iter().map(|(_, _, h)| *h).collect();
            let images: Vec<Rgb> = rows.into_iter().map(|(img, _, _)| img).collect();
            with_columns(
                &kept,
                (!this.keep_encoded).then_some(this.column.as_str()),
                vec![
                    (decoded.field(&this.output, false), Arc::new(decoded_array(&images)?) as ArrayRef),
                    (Field::new("width", DataType::UInt32, false), Arc::new(UInt32Array::from(widths))),
                    (Field::new("height", DataType::UInt32, false), Arc::new(UInt32Array::from(heights))),
                ],
            )
        };
        let size = |(img, _, _): &(Rgb, u32, u32)| img.pixels.len();
        let each =
            |row: usize| if data.is_null(row) { Err("no image bytes (null)".to_string()) } else { this.decode(data.value(row)) };
        in_batches(&batch, this.max_batch_bytes, size, each, &build, emit)
    }
}

impl From<DecodeImage> for Stage {
    fn from(d: DecodeImage) -> Stage {
        Stage::new("decode_image", d)
    }
}

/// How [`Resize`] maps an image onto the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Exactly the target size; the aspect ratio may change.
    Exact,
    /// Within the target size, keeping the aspect ratio (one side may be smaller).
    Fit,
    /// Exactly the target size, keeping the aspect ratio by cropping the centre.
    Fill,
}

/// Resizes decoded images with a SIMD convolution (Lanczos3). See the module docs.
#[derive(Debug, Clone)]
pub struct Resize {
    column: String,
    width: u32,
    height: u32,
    fit: Fit,
    max_batch_bytes: usize,
}

impl Resize {
    /// Resizes the `image` column to `width`×`height` exactly (see [`Resize::fit`]).
    pub fn to(width: u32, height: u32) -> Self {
        Self { column: "image".into(), width, height, fit: Fit::Exact, max_batch_bytes: MAX_BATCH_BYTES }
    }
    /// At most this many bytes of resized pixels per output batch, as
    /// [`DecodeImage::max_batch_bytes`] (resizing up makes more pixels than came in).
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n.clamp(1, ARRAY_BYTES);
        self
    }
    /// How to keep (or not) the aspect ratio.
    pub fn fit(mut self, fit: Fit) -> Self {
        self.fit = fit;
        self
    }
    /// The decoded image column.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }

    fn resize(&self, pixels: Vec<u8>, w: u32, h: u32) -> std::result::Result<Rgb, String> {
        use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
        let (tw, th) = match self.fit {
            Fit::Exact | Fit::Fill => (self.width, self.height),
            Fit::Fit => {
                let scale = (self.width as f64 / w as f64).min(self.height as f64 / h as f64);
                (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1))
            }
        };
        if (tw, th) == (w, h) {
            return Ok(Rgb { pixels, width: w, height: h });
        }
        let bytes = u64::from(tw) * u64::from(th) * 3;
        if bytes > self.max_batch_bytes as u64 {
            return Err(format!(
                "resized to {tw}×{th}, the image is {bytes} bytes of RGB, over max_batch_bytes = {}",
                self.max_batch_bytes
            ));
        }
        let src = Image::from_vec_u8(w, h, pixels, PixelType::U8x3).map_err(|e| format!("bad pixel buffer: {e}"))?;
        let mut dst = Image::new(tw, th, PixelType::U8x3);
        let mut opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        if self.fit == Fit::Fill {
            opts = opts.fit_into_destination(Some((0.5, 0.5)));
        }
        Resizer::new().resize(&src, &mut dst, &opts).map_err(|e| format!("resize failed: {e}"))?;
        Ok(Rgb { pixels: dst.into_vec(), width: tw, height: th })
    }
}

impl Operator for Resize {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let mut pieces = Vec::new();
        self.process_into(batch, &mut |out| {
            pieces.push(out);
            Ok(())
        })?;
        one_output(pieces, &self.column, "resize")
    }

    fn process_into(&mut self, batch: RecordBatch, emit: &mut dyn FnMut(Output) -> Result<()>) -> Result<()> {
        let (px, w, h) = DecodedImageType::columns(&batch, &self.column, "resize")?;
        let field = batch.schema().field_with_name(&self.column)?.clone();
        let this = &*self;
        let build = |kept: RecordBatch, images: Vec<Rgb>| -> Result<RecordBatch> {
            with_columns(&kept, None, vec![(field.clone(), Arc::new(decoded_array(&images)?) as ArrayRef)])
        };
        let each = |row: usize| this.resize(px.value(row).to_vec(), w.value(row), h.value(row));
        in_batches(&batch, this.max_batch_bytes, |i: &Rgb| i.pixels.len(), each, &build, emit)
    }
}

impl From<Resize> for Stage {
    fn from(r: Resize) -> Stage {
        Stage::new("resize", r)
    }
}

/// Output formats of [`EncodeImage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG with a quality from 1 to 100.
    Jpeg {
        /// Quality, 1–100.
        quality: u8,
    },
    /// PNG (lossless).
    Png,
    /// WebP (lossless).
    WebP,
}

/// Encodes decoded images (JPEG, PNG, WebP) into an `alluvium.image` column.
#[derive(Debug, Clone)]
pub struct EncodeImage {
    column: String,
    output: String,
    format: ImageFormat,
    drop_decoded: bool,
}

impl EncodeImage {
    /// JPEG at `quality` into a `thumbnail` column; the decoded `image` column is dropped.
    pub fn jpeg(quality: u8) -> Self {
        Self {
            column: "image".into(),
            output: "thumbnail".into(),
            format: ImageFormat::Jpeg { quality: quality.clamp(1, 100) },
            drop_decoded: true,
        }
    }
    /// Another format.
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }
    /// The encoded column's name.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.output = name.into();
        self
    }
    /// The decoded image column.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
}

impl ImageFormat {
    /// The format's name in `alluvium.image` columns.
    pub fn name(&self) -> &'static str {
        match self {
            ImageFormat::Jpeg { .. } => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::WebP => "webp",
        }
    }
}

/// Encodes packed RGB pixels (`w × h`) as `format`.
pub(crate) fn encode_rgb(format: ImageFormat, px: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, String> {
    #[cfg(feature = "turbojpeg")]
    if let ImageFormat::Jpeg { quality } = format {
        if let Some(bytes) = turbo::encode(px, w, h, quality) {
            return Ok(bytes);
        }
    }
    let img = image::ImageBuffer::<image::Rgb<u8>, &[u8]>::from_raw(w, h, px)
        .ok_or("the pixel buffer does not match its width and height")?;
    let mut out = Vec::new();
    let r = match format {
        ImageFormat::Jpeg { quality } => {
            img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality))
        }
        ImageFormat::Png => img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out)),
        ImageFormat::WebP => img.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out)),
    };
    r.map_err(|e| format!("encoding failed: {e}"))?;
    Ok(out)
}

impl Operator for EncodeImage {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let images = read_decoded(&batch, &self.column, "encode_image")?;
        let rows =
            RowResults::collect(images.into_iter().map(|(px, w, h)| {
                encode_rgb(self.format, &px, w, h).map(|bytes| (bytes, w, h)).map_err(|m| (ErrorKind::Data, m))
            }));
        let kept = rows.kept(&batch)?;
        let mut data = BinaryBuilder::new();
        rows.ok.iter().for_each(|(bytes, _, _)| data.append_value(bytes));
        let ws: Vec<Option<u32>> = rows.ok.iter().map(|(_, w, _)| Some(*w)).collect();
        let hs: Vec<Option<u32>> = rows.ok.iter().map(|(_, _, h)| Some(*h)).collect();
        let n = ws.len();
        let encoded = EncodedImageType::array(
            data.finish(),
            StringArray::from(vec![self.format.name(); n]),
            UInt32Array::from(ws),
            UInt32Array::from(hs),
        )?;
        let batch = with_columns(
            &kept,
            self.drop_decoded.then_some(self.column.as_str()),
            vec![(EncodedImageType::field(&self.output, false), Arc::new(encoded) as ArrayRef)],
        )?;
        Ok(Output::with_failures(batch, rows.failures))
    }
}

impl From<EncodeImage> for Stage {
    fn from(e: EncodeImage) -> Stage {
        Stage::new("encode_image", e)
    }
}

/// JPEG through libjpeg-turbo (feature `turbojpeg`), with one decompressor and one compressor per
/// thread. `None` means "use the pure-Rust path".
#[cfg(feature = "turbojpeg")]
mod turbo {
    use std::cell::RefCell;

    use image::RgbImage;
    use turbojpeg::{Compressor, Decompressor, Image, PixelFormat, ScalingFactor};

    thread_local! {
        static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
        static COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
    }

    /// Decodes to RGB at the smallest DCT scale (1/8, 1/4, 1/2, 1) whose size still covers `target`.
    pub(super) fn decode(data: &[u8], target: Option<(u32, u32)>) -> Option<RgbImage> {
        DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Decompressor::new().ok();
            }
            let d = cell.as_mut()?;
            let header = d.read_header(data).ok()?;
            let factor = target
                .and_then(|(tw, th)| {
                    [ScalingFactor::ONE_EIGHTH, ScalingFactor::ONE_QUARTER, ScalingFactor::ONE_HALF]
                        .into_iter()
                        .find(|f| f.scale(header.width) >= tw as usize && f.scale(header.height) >= th as usize)
                })
                .unwrap_or(ScalingFactor::ONE);
            d.set_scaling_factor(factor).ok()?;
            let size = header.scaled(factor);
            let mut img = Image {
                pixels: vec![0u8; size.width * size.height * 3],
                width: size.width,
                pitch: size.width * 3,
                height: size.height,
                format: PixelFormat::RGB,
            };
            d.decompress(data, img.as_deref_mut()).ok()?;
            RgbImage::from_raw(size.width as u32, size.height as u32, img.pixels)
        })
    }

    /// Encodes RGB pixels as JPEG at `quality` (4:2:0).
    pub(super) fn encode(px: &[u8], w: u32, h: u32, quality: u8) -> Option<Vec<u8>> {
        COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Compressor::new().ok();
            }
            let c = cell.as_mut()?;
            c.set_quality(quality as i32).ok()?;
            let img =
                Image { pixels: px, width: w as usize, pitch: w as usize * 3, height: h as usize, format: PixelFormat::RGB };
            c.compress_to_vec(img).ok()
        })
    }
}
