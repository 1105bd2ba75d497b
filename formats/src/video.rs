//! Video on FFmpeg (`ffmpeg-next`, Debian's FFmpeg 5.1): [`ProbeVideo`] and [`ExtractFrames`].
//!
//! ```text
//!  ref (ObjectRef) ──OpenObject──▶ ranged reads (one bounded buffer; never the whole file)
//!       ──demux──▶ packets ──decode (only keyframes, with Sampling::Keyframes)──▶ frames
//!       ──sample──▶ every Nth │ N per second │ keyframes │ at timestamps (seeking) │ scene changes
//!       ──swscale to RGB at the output size, rotated upright──▶ JPEG ──▶ frame rows
//! ```
//!
//! * A frame row is `source` (the video's ObjectRef), `frame_index`, `pts_ms`, `keyframe` and
//!   `image` (an `alluvium.image`), after the input's other columns
//!   ([`alluvium_core::types::frame_schema`]).
//! * `frame_index` is the frame's position in the video: `pts × fps` when the frame rate is
//!   known (exact for constant-rate video, also when keyframe sampling or seeking skip frames),
//!   else the count of frames decoded.
//! * **Bounded memory.** The video is read through [`OpenObject`] (ranged GETs) and its frames go
//!   out `frames_per_batch` at a time through [`Operator::process_into`], so neither a 2 GB file
//!   nor its thousands of frames are ever held at once.
//! * **Bad input** (not a video, truncated, corrupt, no video stream, an unsupported codec,
//!   dimensions over `max_pixels`, no frames at all, a stream that ends well before the duration
//!   its container declares — a half-copied MP4 whose index promises frames that are not there —
//!   or over the per-video `time_budget`) is a dead letter with the reason and how far it got.
//! * **Bounded fan-out.** One video makes at most `max_outputs_per_input` frames (100,000) of at
//!   most `max_output_bytes_per_input` encoded bytes (2 GiB) in all; a video over either is a dead
//!   letter that names the key, never a silently cut one.
//! * A video that fails is a dead letter, and its frames not yet sent on are dropped with it:
//!   frames go out `frames_per_batch` at a time before the end of the video is known, so only a
//!   long video's batches that went downstream before the failure stay there, and the dead letter
//!   says how many.

use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray, UInt32Array, UInt64Array,
};
use alluvium_core::arrow::compute::take;
use alluvium_core::arrow::datatypes::Field;
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::types::{EncodedImageType, ObjectRefType, VideoRefType};
use alluvium_core::{Error, OpenObject, Operator, Output, ReadSeek, Result, Stage};
use ffmpeg_next as ffmpeg;
use ffmpeg_next::codec::packet::side_data::Type as SideDataType;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling;

use crate::av::{self, refs, Media};
use crate::image::{encode_rgb, ImageFormat};

/// What probing a video found.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Duration in milliseconds, when the container says.
    pub duration_ms: Option<i64>,
    /// Average frame rate, when known.
    pub fps: Option<f64>,
    /// The codec's FFmpeg name (`h264`, `vp9`, …).
    pub codec: String,
    /// Coded width and height, before rotation.
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// Degrees to turn the picture clockwise to show it upright (0, 90, 180, 270): the
    /// container's display matrix, as phones record portrait video.
    pub rotation: i32,
}

/// Which frames [`ExtractFrames`] keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// Frames 0, N, 2N, … (every frame is decoded).
    EveryNth(u64),
    /// The first frame at or after each 1/N second (frames are decoded up to each; when the next
    /// is more than two seconds ahead, the decoder seeks to the keyframe before it).
    PerSecond(f64),
    /// Keyframes only: the other packets are not even decoded, the fast mode.
    Keyframes,
    /// The first frame at or after each of these times (ms); the decoder seeks to the keyframe
    /// before a time more than two seconds ahead instead of decoding up to it.
    Timestamps(Vec<i64>),
    /// The first frame and each frame whose luma histogram differs from the previous frame's by
    /// more than this fraction (0–1; 0.3 is a cut in most footage).
    SceneChanges(f64),
}

/// The size frames come out at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// As decoded (after rotation).
    Original,
    /// The shorter side becomes this many pixels, keeping the aspect ratio (never enlarged).
    ShortSide(u32),
    /// Within `width × height`, keeping the aspect ratio (never enlarged).
    Fit(u32, u32),
}

/// One extracted frame, RGB.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame's position in the video (see the module docs).
    pub index: u64,
    /// Presentation time from the start of the video, ms.
    pub pts_ms: i64,
    /// Whether it was a keyframe.
    pub keyframe: bool,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Packed RGB, row-major.
    pub rgb: Vec<u8>,
}

/// `max_outputs_per_input` by default: frames per video.
pub const MAX_OUTPUTS_PER_INPUT: u64 = 100_000;
/// `max_output_bytes_per_input` by default: bytes of encoded frames per video.
pub const MAX_OUTPUT_BYTES_PER_INPUT: u64 = 2 << 30;

/// Limits that keep one bad video from hurting the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Refuse videos with more pixels per frame than this (before decoding anything).
    pub max_pixels: u64,
    /// Give up on one video after this long (a hang, a pathological file).
    pub time_budget: Duration,
    /// Decoder threads per video (frame threading); 1 keeps one core per pipeline lane.
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_pixels: 80_000_000, time_budget: Duration::from_secs(600), threads: 1 }
    }
}

/// An open video stream: the container, the decoder and what probing found.
struct Video {
    media: Media,
    decoder: ffmpeg::decoder::Video,
    info: VideoInfo,
}

/// `theta` from a display matrix (9 × i32, 16.16 fixed point): clockwise degrees to upright, as
/// the FFmpeg CLI's autorotate computes it.
fn rotation(matrix: &[u8]) -> i32 {
    if matrix.len() < 36 {
        return 0;
    }
    let m = |i: usize| i32::from_le_bytes(matrix[i * 4..i * 4 + 4].try_into().expect("4 bytes")) as f64 / 65536.0;
    let (s0, s1) = ((m(0)).hypot(m(3)), (m(1)).hypot(m(4)));
    if s0 == 0.0 || s1 == 0.0 {
        return 0;
    }
    let theta = (m(1) / s1).atan2(m(0) / s0).to_degrees().round() as i32;
    (theta.rem_euclid(360) + 45) / 90 * 90 % 360
}

impl Video {
    fn open(media: Box<dyn ReadSeek>, limits: &Limits) -> std::result::Result<Self, String> {
        let media = Media::open(media, ffmpeg::media::Type::Video, limits.time_budget)?;
        let stream = media.stream();
        let rate = stream.avg_frame_rate();
        let fps = (rate.denominator() != 0 && rate.numerator() > 0)
            .then(|| f64::from(rate.numerator()) / f64::from(rate.denominator()));
        let rotation = stream.side_data().find(|d| d.kind() == SideDataType::DisplayMatrix).map_or(0, |d| rotation(d.data()));
        let duration_ms = media.duration_ms();
        let (context, codec) = media.codec(limits.threads)?;
        let decoder = context.decoder().video().map_err(|e| format!("no decoder for codec `{codec}`: {e}"))?;
        let (width, height) = (decoder.width(), decoder.height());
        if width == 0 || height == 0 {
            return Err(format!("the video stream has no picture size ({codec})"));
        }
        if u64::from(width) * u64::from(height) > limits.max_pixels {
            return Err(format!("{width}×{height} is over the limit of {} pixels per frame", limits.max_pixels));
        }
        let info = VideoInfo { duration_ms, fps, codec, width, height, rotation };
        Ok(Self { media, decoder, info })
    }
}

/// Probes a video: container and stream metadata, no decoding.
pub fn probe(media: Box<dyn ReadSeek>, limits: &Limits) -> std::result::Result<VideoInfo, String> {
    Video::open(media, limits).map(|v| v.info)
}

/// The luma histogram of a decoded frame (plane 0, every 4th pixel and row), normalised.
fn histogram(frame: &ffmpeg::frame::Video) -> [f32; 64] {
    let mut h = [0f32; 64];
    let (w, rows, stride) = (frame.width() as usize, frame.height() as usize, frame.stride(0));
    let data = frame.data(0);
    let mut n = 0f32;
    for y in (0..rows).step_by(4) {
        let row = &data[y * stride..(y * stride + w).min(data.len())];
        for &v in row.iter().step_by(4) {
            h[(v >> 2) as usize] += 1.0;
            n += 1.0;
        }
    }
    h.iter_mut().for_each(|x| *x /= n.max(1.0));
    h
}

/// What to do with each decoded frame.
struct Sampler {
    sampling: Sampling,
    /// PerSecond: the next time to take a frame at; Timestamps: the index of the next target.
    next_ms: f64,
    next_target: usize,
    previous: Option<[f32; 64]>,
    /// The last time sought to.
    sought: Option<i64>,
}

impl Sampler {
    fn new(sampling: &Sampling) -> Self {
        let mut sampling = sampling.clone();
        if let Sampling::Timestamps(ts) = &mut sampling {
            ts.sort_unstable();
            ts.dedup();
        }
        Self { sampling, next_ms: 0.0, next_target: 0, previous: None, sought: None }
    }

    /// Whether to keep the frame at `index`/`pts_ms`.
    fn keep(&mut self, index: u64, pts_ms: i64, frame: &ffmpeg::frame::Video) -> bool {
        match &self.sampling {
            Sampling::EveryNth(n) => index.is_multiple_of((*n).max(1)),
            Sampling::Keyframes => true,
            Sampling::PerSecond(r) => {
                let step = 1000.0 / r.max(1e-6);
                if (pts_ms as f64) < self.next_ms {
                    return false;
                }
                // The next slot after this frame (frames may skip several slots).
                self.next_ms = ((pts_ms as f64 / step).floor() + 1.0) * step;
                true
            }
            Sampling::Timestamps(ts) => {
                let mut hit = false;
                while self.next_target < ts.len() && ts[self.next_target] <= pts_ms {
                    self.next_target += 1;
                    hit = true;
                }
                hit
            }
            Sampling::SceneChanges(threshold) => {
                let h = histogram(frame);
                let change = match &self.previous {
                    None => true,
                    Some(p) => p.iter().zip(&h).map(|(a, b)| (a - b).abs()).sum::<f32>() / 2.0 > *threshold as f32,
                };
                self.previous = Some(h);
                change
            }
        }
    }

    /// Timestamps and N per second: the next frame wanted, when it is far enough ahead to seek
    /// to. Each target is sought once: a seek that lands on a keyframe long before the target
    /// (a long GOP) decodes forward from there instead of seeking again.
    fn seek_target(&mut self, at_ms: i64) -> Option<i64> {
        let next = match &self.sampling {
            Sampling::Timestamps(ts) => ts.get(self.next_target).copied(),
            Sampling::PerSecond(_) => Some(self.next_ms.ceil() as i64),
            _ => None,
        };
        let t = next.filter(|t| *t > at_ms + 2000 && self.sought != Some(*t))?;
        self.sought = Some(t);
        Some(t)
    }

    fn done(&self) -> bool {
        matches!(&self.sampling, Sampling::Timestamps(ts) if self.next_target >= ts.len())
    }
}

/// Converts decoded frames to RGB at the output size, upright.
struct Converter {
    size: FrameSize,
    rotation: i32,
    scaler: Option<(scaling::Context, (Pixel, u32, u32))>,
}

impl Converter {
    /// The output size for a `w × h` picture (after rotation).
    fn target(&self, w: u32, h: u32) -> (u32, u32) {
        let (w, h) = if self.rotation % 180 == 90 { (h, w) } else { (w, h) };
        let scale = match self.size {
            FrameSize::Original => 1.0,
            FrameSize::ShortSide(s) => (f64::from(s) / f64::from(w.min(h))).min(1.0),
            FrameSize::Fit(mw, mh) => (f64::from(mw) / f64::from(w)).min(f64::from(mh) / f64::from(h)).min(1.0),
        };
        let (tw, th) = (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1));
        if self.rotation % 180 == 90 {
            (th, tw)
        } else {
            (tw, th)
        }
    }

    fn convert(&mut self, frame: &ffmpeg::frame::Video) -> std::result::Result<(Vec<u8>, u32, u32), String> {
        let key = (frame.format(), frame.width(), frame.height());
        let (tw, th) = self.target(frame.width(), frame.height());
        if self.scaler.as_ref().is_none_or(|(_, k)| *k != key) {
            let ctx = scaling::Context::get(key.0, key.1, key.2, Pixel::RGB24, tw, th, scaling::Flags::BILINEAR)
                .map_err(|e| format!("cannot convert {:?} {}×{} to RGB: {e}", key.0, key.1, key.2))?;
            self.scaler = Some((ctx, key));
        }
        let (scaler, _) = self.scaler.as_mut().expect("scaler");
        let mut rgb = ffmpeg::frame::Video::empty();
        scaler.run(frame, &mut rgb).map_err(|e| format!("converting a frame to RGB: {e}"))?;
        let (w, h, stride) = (rgb.width() as usize, rgb.height() as usize, rgb.stride(0));
        let data = rgb.data(0);
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            px.extend_from_slice(&data[y * stride..y * stride + w * 3]);
        }
        let img = image::RgbImage::from_raw(w as u32, h as u32, px).ok_or("the RGB frame does not match its size")?;
        let img = match self.rotation {
            90 => image::imageops::rotate90(&img),
            180 => image::imageops::rotate180(&img),
            270 => image::imageops::rotate270(&img),
            _ => img,
        };
        let (w, h) = img.dimensions();
        Ok((img.into_raw(), w, h))
    }
}

fn failed_after(frames: u64, why: String) -> String {
    av::failed_after(frames, "frames", why)
}

/// Decodes `media` and hands each sampled frame to `emit`. `Ok(Err(reason))`: the video is bad
/// (a dead letter; also when its stream ends well before the duration its container declares);
/// `Err`: `emit` failed (the stage).
pub fn extract(
    media: Box<dyn ReadSeek>,
    sampling: &Sampling,
    size: FrameSize,
    limits: &Limits,
    emit: &mut dyn FnMut(Frame) -> Result<()>,
) -> Result<std::result::Result<u64, String>> {
    let mut video = match Video::open(media, limits) {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    let keyframes_only = matches!(sampling, Sampling::Keyframes);
    if keyframes_only {
        video.decoder.skip_frame(ffmpeg::Discard::NonKey);
    }
    let mut sampler = Sampler::new(sampling);
    let mut converter = Converter { size, rotation: video.info.rotation, scaler: None };
    let (mut decoded, mut sent) = (0u64, 0u64);
    let mut frame = ffmpeg::frame::Video::empty();
    loop {
        match video.media.next_frame(&mut video.decoder, &mut frame, |p| keyframes_only && !p.is_key()) {
            Ok(true) => {}
            Ok(false) if decoded == 0 => return Ok(Err(video.media.nothing_decoded())),
            Ok(false) => {
                return Ok(match video.media.ended_early() {
                    Some(why) => Err(failed_after(sent, why)),
                    None => Ok(sent),
                })
            }
            Err(why) => return Ok(Err(failed_after(sent, why))),
        }
        let pts_ms = video.media.pts_ms(frame.timestamp().or(frame.pts()));
        let index = match video.info.fps {
            Some(fps) => (pts_ms as f64 * fps / 1000.0).round().max(0.0) as u64,
            None => decoded,
        };
        decoded += 1;
        if sampler.keep(index, pts_ms, &frame) {
            let (rgb, width, height) = match converter.convert(&frame) {
                Ok(c) => c,
                Err(why) => return Ok(Err(failed_after(sent, why))),
            };
            emit(Frame { index, pts_ms, keyframe: frame.is_key(), width, height, rgb })?;
            sent += 1;
        }
        if sampler.done() {
            return Ok(Ok(sent));
        }
        if let Some(t) = sampler.seek_target(pts_ms) {
            if let Err(why) = video.media.seek(&mut video.decoder, t) {
                return Ok(Err(failed_after(sent, why)));
            }
        }
    }
}

/// Probes videos: adds a `video` column (`alluvium.video`: the reference plus duration, fps,
/// codec, size and rotation). Unreadable videos are dead letters.
#[derive(Clone)]
pub struct ProbeVideo {
    opener: Arc<dyn OpenObject>,
    column: String,
    output: String,
    limits: Limits,
}

impl ProbeVideo {
    /// Probes the ObjectRefs in `ref`, read through `opener`.
    pub fn new(opener: Arc<dyn OpenObject>) -> Self {
        Self { opener, column: "ref".into(), output: "video".into(), limits: Limits::default() }
    }
    /// The ObjectRef column.
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// The output column's name.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.output = name.into();
        self
    }
}

impl Operator for ProbeVideo {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let limits = self.limits;
        let p = av::probe_each(&batch, &self.column, "probe_video", self.opener.as_ref(), |m| probe(m, &limits))?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter(p.found.iter().map(|v| v.duration_ms))),
            Arc::new(Float64Array::from_iter(p.found.iter().map(|v| v.fps))),
            Arc::new(StringArray::from_iter_values(p.found.iter().map(|v| v.codec.as_str()))),
            Arc::new(UInt32Array::from_iter_values(p.found.iter().map(|v| v.width))),
            Arc::new(UInt32Array::from_iter_values(p.found.iter().map(|v| v.height))),
            Arc::new(Int32Array::from_iter_values(p.found.iter().map(|v| v.rotation))),
        ];
        p.finish(VideoRefType::field(&self.output, false), columns)
    }
}

impl From<ProbeVideo> for Stage {
    fn from(p: ProbeVideo) -> Stage {
        Stage::new("probe_video", p)
    }
}

/// Extracts frames from videos. See the module docs.
#[derive(Clone)]
pub struct ExtractFrames {
    opener: Arc<dyn OpenObject>,
    column: String,
    sampling: Sampling,
    size: FrameSize,
    format: ImageFormat,
    frames_per_batch: usize,
    limits: Limits,
    max_outputs_per_input: u64,
    max_output_bytes_per_input: u64,
}

impl ExtractFrames {
    /// Frames of the videos in the ObjectRef column `ref`, read through `opener`: one per
    /// second, 224 pixels on the short side, JPEG at quality 90, 64 frames per batch.
    pub fn new(opener: Arc<dyn OpenObject>) -> Self {
        Self {
            opener,
            column: "ref".into(),
            sampling: Sampling::PerSecond(1.0),
            size: FrameSize::ShortSide(224),
            format: ImageFormat::Jpeg { quality: 90 },
            frames_per_batch: 64,
            limits: Limits::default(),
            max_outputs_per_input: MAX_OUTPUTS_PER_INPUT,
            max_output_bytes_per_input: MAX_OUTPUT_BYTES_PER_INPUT,
        }
    }
    /// Which frames to keep.
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }
    /// The output size.
    pub fn size(mut self, size: FrameSize) -> Self {
        self.size = size;
        self
    }
    /// The frames' encoding.
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }
    /// The ObjectRef column (or a probed `alluvium.video` column).
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// Frames per output batch.
    pub fn frames_per_batch(mut self, n: usize) -> Self {
        self.frames_per_batch = n.max(1);
        self
    }
    /// Limits per video.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// A video with more frames to extract is a dead letter ([`MAX_OUTPUTS_PER_INPUT`]).
    pub fn max_outputs_per_input(mut self, n: u64) -> Self {
        self.max_outputs_per_input = n;
        self
    }
    /// A video whose extracted frames come to more bytes, encoded, is a dead letter
    /// ([`MAX_OUTPUT_BYTES_PER_INPUT`]).
    pub fn max_output_bytes_per_input(mut self, n: u64) -> Self {
        self.max_output_bytes_per_input = n;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::config(format!("extract_frames: {m}")));
        match &self.sampling {
            Sampling::EveryNth(0) => bad("`every_nth` must be 1 or more"),
            Sampling::PerSecond(r) if !(*r > 0.0 && r.is_finite()) => bad("`fps` must be a positive number, e.g. 1 or 0.5"),
            Sampling::Timestamps(t) if t.is_empty() => bad("`timestamps_ms` is empty; list times in ms, e.g. [0, 5000]"),
            Sampling::SceneChanges(t) if !(0.0..=1.0).contains(t) => {
                bad("`scene_threshold` must be between 0 and 1 (0.3 is typical)")
            }
            _ => match self.size {
                FrameSize::ShortSide(0) | FrameSize::Fit(0, _) | FrameSize::Fit(_, 0) => bad("the frame size must not be 0"),
                _ if self.max_outputs_per_input == 0 => bad("`max_outputs_per_input` must be 1 or more"),
                _ if self.max_output_bytes_per_input == 0 => bad("`max_output_bytes_per_input` must be 1 or more"),
                _ => Ok(()),
            },
        }
    }

    /// Builds a batch of frames: the input's other columns of each frame's video, then the
    /// frame columns.
    fn batch(&self, input: &RecordBatch, refs: &ArrayRef, frames: Vec<(usize, (Frame, Vec<u8>))>) -> Result<RecordBatch> {
        let rows = UInt32Array::from_iter_values(frames.iter().map(|(r, _)| *r as u32));
        let taken = RecordBatch::try_new(
            input.schema(),
            input.columns().iter().map(|c| take(c.as_ref(), &rows, None)).collect::<std::result::Result<Vec<_>, _>>()?,
        )?;
        let mut data = BinaryBuilder::new();
        frames.iter().for_each(|(_, (_, bytes))| data.append_value(bytes));
        let image = EncodedImageType::array(
            data.finish(),
            StringArray::from(vec![self.format.name(); frames.len()]),
            UInt32Array::from_iter_values(frames.iter().map(|(_, (f, _))| f.width)),
            UInt32Array::from_iter_values(frames.iter().map(|(_, (f, _))| f.height)),
        )?;
        let add: Vec<(Field, ArrayRef)> = vec![
            (ObjectRefType::field("source", false), take(refs.as_ref(), &rows, None)?),
            (Field::new("frame_index", alluvium_core::arrow::datatypes::DataType::UInt64, false), {
                Arc::new(UInt64Array::from_iter_values(frames.iter().map(|(_, (f, _))| f.index)))
            }),
            (Field::new("pts_ms", alluvium_core::arrow::datatypes::DataType::Int64, false), {
                Arc::new(Int64Array::from_iter_values(frames.iter().map(|(_, (f, _))| f.pts_ms)))
            }),
            (Field::new("keyframe", alluvium_core::arrow::datatypes::DataType::Boolean, false), {
                Arc::new(BooleanArray::from(frames.iter().map(|(_, (f, _))| f.keyframe).collect::<Vec<_>>()))
            }),
            (EncodedImageType::field("image", false), Arc::new(image)),
        ];
        with_columns(&taken, Some(&self.column), add)
    }
}

impl Operator for ExtractFrames {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        av::gather(self, batch, |this, input| this.batch(input, &refs(input, &this.column, "extract_frames")?.0, Vec::new()))
    }

    fn process_into(&mut self, batch: RecordBatch, emit: &mut dyn FnMut(Output) -> Result<()>) -> Result<()> {
        let (refs_col, refs) = refs(&batch, &self.column, "extract_frames")?;
        let this = &*self;
        let build = |frames| this.batch(&batch, &refs_col, frames);
        let measure = |(f, encoded): &(Frame, Vec<u8>)| (encoded.len() as u64, f.pts_ms);
        let fan: av::FanOut<'_, (Frame, Vec<u8>)> = av::FanOut {
            stage: "extract_frames",
            unit: "frames",
            per_batch: this.frames_per_batch,
            max_outputs: this.max_outputs_per_input,
            max_bytes: this.max_output_bytes_per_input,
            measure: &measure,
        };
        av::stream_objects(&refs, this.opener.as_ref(), &fan, &build, emit, |media, send| {
            let mut encode = |f: Frame| -> Result<()> {
                let encoded = encode_rgb(this.format, &f.rgb, f.width, f.height)
                    .map_err(|m| Error::data(format!("extract_frames: encoding a frame: {m}")))?;
                send((Frame { rgb: Vec::new(), ..f }, encoded))
            };
            Ok(extract(media, &this.sampling, this.size, &this.limits, &mut encode)?.map(|_| ()))
        })
    }
}

impl From<ExtractFrames> for Stage {
    fn from(e: ExtractFrames) -> Stage {
        Stage::new("extract_frames", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `av_display_rotation_set(matrix, angle)`.
    fn matrix(angle: f64) -> Vec<u8> {
        let (s, c) = (-angle).to_radians().sin_cos();
        let m = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
        m.iter().flat_map(|v| ((v * 65536.0).round() as i32).to_le_bytes()).collect()
    }

    #[test]
    fn display_matrices_give_clockwise_turns() {
        assert_eq!(rotation(&matrix(0.0)), 0);
        assert_eq!(rotation(&matrix(90.0)), 90);
        assert_eq!(rotation(&matrix(-90.0)), 270);
        assert_eq!(rotation(&matrix(180.0)), 180);
        assert_eq!(rotation(&[]), 0);
    }

    #[test]
    fn sizes_keep_the_aspect_and_never_enlarge() {
        let c = |size, rotation| Converter { size, rotation, scaler: None };
        assert_eq!(c(FrameSize::ShortSide(224), 0).target(640, 360), (398, 224));
        assert_eq!(c(FrameSize::ShortSide(224), 90).target(640, 360), (398, 224), "scaled before it is turned");
        assert_eq!(c(FrameSize::Fit(100, 50), 90).target(640, 360), (50, 28), "28×50 once turned");
        assert_eq!(c(FrameSize::ShortSide(1000), 0).target(640, 360), (640, 360));
        assert_eq!(c(FrameSize::Fit(100, 100), 0).target(640, 360), (100, 56));
    }
}
