//! Audio on FFmpeg (`ffmpeg-next`, Debian's FFmpeg 5.1): [`ProbeAudio`] and [`AudioWindows`].
//!
//! ```text
//!  ref (ObjectRef) ──OpenObject──▶ ranged reads ──demux──▶ packets ──decode──▶ frames
//!       ──swresample to the target rate and channels, f32──▶ fixed windows (hop apart)
//!       ──▶ a Float32 tensor [channels, samples] │ a WAV clip (16-bit PCM) ──▶ window rows
//! ```
//!
//! * Any container and codec FFmpeg decodes works: WAV, FLAC, MP3, Ogg/Vorbis, Opus, AAC in
//!   MP4/M4A, and the audio track of a video.
//! * A window row is `source` (the audio's ObjectRef), `window_index`, `start_ms`, `duration_ms`
//!   (the audio in the window: less than the window for a padded last one), `sample_rate` and
//!   `audio`, after the input's other columns. Times count from the first decoded sample.
//! * `audio` is either a canonical `arrow.fixed_shape_tensor` of `Float32`, shape
//!   `[channels, samples]` (channel-major, the layout audio models take), or an encoded WAV clip.
//! * Resampling is FFmpeg's swresample with its defaults, as `ffmpeg -ar R -ac C` does it, so
//!   windows hold the samples FFmpeg's CLI gives. Channels are mixed down or up by FFmpeg's
//!   matrix (stereo → mono averages the two).
//! * **Bounded memory.** The audio is read through [`OpenObject`] (ranged GETs), at most one
//!   window plus one decoded frame is held, and rows go out in batches of about `batch_bytes`, so
//!   an hour of audio needs no more memory than ten seconds.
//! * **Bad input** (not audio, a truncated container, no audio stream, an unsupported codec, a
//!   sample rate or channel count out of range, no samples at all, a stream that ends well before
//!   the duration its container declares, or over the per-item `time_budget`) is a dead letter
//!   with the reason and how far it got.
//! * **Bounded fan-out.** One item makes at most `max_outputs_per_input` windows (100,000) of at
//!   most `max_output_bytes_per_input` bytes (2 GiB) in all; an item over either is a dead letter
//!   that names the key, never a silently cut one. Sample rates under [`MIN_SAMPLE_RATE`] are out
//!   of range (a 3 KB WAV declaring 1 Hz is 25 minutes of audio: 16,000 times its samples at
//!   16 kHz), and no decoded frame is resampled into more than the byte limit (or 256 MiB) at once.
//! * An item that fails is a dead letter, and its windows not yet sent on are dropped with it;
//!   only a long item's batches that went downstream before the failure was known stay there,
//!   and the dead letter says how many.

use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{ArrayRef, BinaryBuilder, FixedSizeListArray, Float32Array, Int64Array, StringArray};
use alluvium_core::arrow::array::{UInt16Array, UInt32Array, UInt64Array};
use alluvium_core::arrow::compute::take;
use alluvium_core::arrow::datatypes::{DataType, Field};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::types::{tensor_field_named, AudioRefType, ObjectRefType};
use alluvium_core::{Error, OpenObject, Operator, Output, ReadSeek, Result, Stage};
use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::{sample::Type as SampleType, Sample};
use ffmpeg_next::software::resampling;
use ffmpeg_next::ChannelLayout;

use crate::av::{self, refs, Media};

/// The highest sample rate accepted (anything above is a broken or hostile header).
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// The lowest sample rate accepted: audio is never recorded slower, and resampling a header that
/// declares 1 Hz to 16 kHz multiplies its samples 16,000 times.
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// `max_outputs_per_input` by default: windows per item.
pub const MAX_OUTPUTS_PER_INPUT: u64 = 100_000;
/// `max_output_bytes_per_input` by default: bytes of windows per item (2 GiB: 9 hours of 16 kHz
/// mono tensors).
pub const MAX_OUTPUT_BYTES_PER_INPUT: u64 = 2 << 30;
/// The most one decoded frame may become when resampled, whatever the byte limit.
const MAX_RESAMPLED_FRAME_BYTES: u64 = 256 << 20;
/// The most channels accepted.
pub const MAX_CHANNELS: u16 = 64;

/// What probing an audio object found.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    /// Duration in milliseconds, when the container says.
    pub duration_ms: Option<i64>,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// The codec's FFmpeg name (`pcm_s16le`, `flac`, `mp3`, `vorbis`, `aac`, …).
    pub codec: String,
}

/// The windows' rate and channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels (1 = mono, 2 = stereo, …; FFmpeg's default layout for the count).
    pub channels: u16,
}

/// How audio is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    /// Window length, ms.
    pub window_ms: u32,
    /// From one window's start to the next's, ms: the window length for back-to-back windows,
    /// less to overlap them, more to leave gaps.
    pub hop_ms: u32,
    /// What becomes of the audio after the last whole window.
    pub last: LastWindow,
}

/// The last, partial window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastWindow {
    /// Zero-padded to a whole window (`duration_ms` says how much is audio). Audio shorter than
    /// one window is one padded window.
    Pad,
    /// Dropped (audio shorter than one window gives no windows, and is not an error).
    Drop,
    /// Kept short (WAV clips only: tensors have one shape).
    Short,
}

/// How windows are encoded in the `audio` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioEncoding {
    /// A `Float32` tensor `[channels, samples]`, samples in -1…1.
    Tensor,
    /// A WAV file, 16-bit PCM, interleaved.
    Wav,
}

/// One window of audio at the target rate, channel-major.
#[derive(Debug, Clone)]
pub struct Window {
    /// Windows counted from 0 within one item.
    pub index: u64,
    /// The first sample's position in the audio, in samples at the target rate.
    pub start: u64,
    /// Samples per channel that are audio (the rest, if any, is padding).
    pub filled: usize,
    /// `channels × samples per channel` values, channel by channel.
    pub samples: Vec<f32>,
}

/// Opens `media`'s best audio stream and its decoder.
fn open(media: Box<dyn ReadSeek>, budget: Duration) -> std::result::Result<(Media, ffmpeg::decoder::Audio, AudioInfo), String> {
    let media = Media::open(media, ffmpeg::media::Type::Audio, budget)?;
    let duration_ms = media.duration_ms();
    let (context, codec) = media.codec(1)?;
    let decoder = context.decoder().audio().map_err(|e| format!("no decoder for codec `{codec}`: {e}"))?;
    let (sample_rate, channels) = (decoder.rate(), decoder.channels());
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&sample_rate) {
        return Err(format!("a sample rate of {sample_rate} Hz is out of range ({MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE})"));
    }
    if channels == 0 || channels > MAX_CHANNELS {
        return Err(format!("{channels} channels is out of range (1 to {MAX_CHANNELS})"));
    }
    Ok((media, decoder, AudioInfo { duration_ms, sample_rate, channels, codec }))
}

/// Probes audio: container and stream metadata, no decoding.
pub fn probe(media: Box<dyn ReadSeek>, budget: Duration) -> std::result::Result<AudioInfo, String> {
    open(media, budget).map(|(_, _, info)| info)
}

/// Converts decoded frames to planar f32 at the target rate and channels, rebuilding the
/// resampler when the input's format changes mid-stream.
struct Resampler {
    target: Target,
    layout: ChannelLayout,
    context: Option<(resampling::Context, (Sample, ChannelLayout, u32))>,
    /// The most bytes one resampled frame may take (checked before it is allocated).
    max_frame_bytes: u64,
}

impl Resampler {
    fn new(target: Target, max_frame_bytes: u64) -> Self {
        Self { target, layout: ChannelLayout::default(i32::from(target.channels)), context: None, max_frame_bytes }
    }

    fn format() -> Sample {
        Sample::F32(SampleType::Planar)
    }

    /// An output frame with room for `samples` input samples' worth, and then some; refused
    /// before it is allocated when it would take more than `max_frame_bytes`.
    fn room(&self, samples: usize, rate: u32) -> std::result::Result<ffmpeg::frame::Audio, String> {
        let n = (samples as u64).saturating_mul(u64::from(self.target.sample_rate)) / u64::from(rate.max(1)) + 256;
        let bytes = n.saturating_mul(u64::from(self.target.channels)).saturating_mul(4);
        if bytes > self.max_frame_bytes {
            return Err(format!(
                "resampling a frame of {samples} samples from {rate} Hz to {} Hz would take {bytes} bytes at once, over the \
                 {} bytes one resampled frame may take (max_output_bytes_per_input, and at most {MAX_RESAMPLED_FRAME_BYTES})",
                self.target.sample_rate, self.max_frame_bytes
            ));
        }
        Ok(ffmpeg::frame::Audio::new(Self::format(), n as usize, self.layout))
    }

    /// Resamples `frame` and hands the result to `out`.
    fn run(
        &mut self,
        frame: &mut ffmpeg::frame::Audio,
        out: &mut dyn FnMut(&ffmpeg::frame::Audio) -> Result<()>,
    ) -> Result<std::result::Result<(), String>> {
        if frame.channel_layout().is_empty() {
            // Streams without a layout (WAV without a channel mask, …): FFmpeg's default order.
            frame.set_channel_layout(ChannelLayout::default(i32::from(frame.channels())));
        }
        let key = (frame.format(), frame.channel_layout(), frame.rate());
        if self.context.as_ref().is_none_or(|(_, k)| *k != key) {
            if let Err(why) = self.flush(out)? {
                return Ok(Err(why));
            }
            let context = resampling::Context::get(key.0, key.1, key.2, Self::format(), self.layout, self.target.sample_rate);
            match context {
                Ok(c) => self.context = Some((c, key)),
                Err(e) => return Ok(Err(format!("cannot resample {:?} {} Hz {} channels: {e}", key.0, key.2, frame.channels()))),
            }
        }
        let mut resampled = match self.room(frame.samples(), key.2) {
            Ok(room) => room,
            Err(why) => return Ok(Err(why)),
        };
        let (context, _) = self.context.as_mut().expect("resampler");
        if let Err(e) = context.run(frame, &mut resampled) {
            return Ok(Err(format!("resampling failed: {e}")));
        }
        out(&resampled)?;
        Ok(Ok(()))
    }

    /// Drains what the resampler holds (at the end, or before the input changes).
    fn flush(&mut self, out: &mut dyn FnMut(&ffmpeg::frame::Audio) -> Result<()>) -> Result<std::result::Result<(), String>> {
        let Some((mut context, key)) = self.context.take() else { return Ok(Ok(())) };
        loop {
            let mut rest = match self.room(4096, key.2) {
                Ok(room) => room,
                Err(why) => return Ok(Err(why)),
            };
            if let Err(e) = context.flush(&mut rest) {
                return Ok(Err(format!("resampling failed: {e}")));
            }
            if rest.samples() == 0 {
                return Ok(Ok(()));
            }
            out(&rest)?;
        }
    }
}

/// Samples per channel in `ms` at the target rate (at least one).
fn samples(ms: u32, target: Target) -> usize {
    (u64::from(ms) * u64::from(target.sample_rate) / 1000).max(1) as usize
}

/// Cuts a stream of planar samples into windows, holding at most one window.
struct Windower {
    window: usize,
    hop: usize,
    channels: usize,
    /// One buffer per channel; `buffer[c][0]` is sample `start`.
    buffer: Vec<Vec<f32>>,
    start: u64,
    /// Samples still to drop before the next window (a hop longer than the window).
    skip: usize,
    /// The end of the last window sent, in samples.
    sent_until: u64,
    next_index: u64,
}

impl Windower {
    fn new(target: Target, windowing: &Windowing) -> Self {
        let channels = usize::from(target.channels);
        Self {
            window: samples(windowing.window_ms, target),
            hop: samples(windowing.hop_ms, target),
            channels,
            buffer: vec![Vec::new(); channels],
            start: 0,
            skip: 0,
            sent_until: 0,
            next_index: 0,
        }
    }

    fn len(&self) -> usize {
        self.buffer[0].len()
    }

    /// The first `filled` buffered samples as a window, padded to `size`.
    fn take(&mut self, filled: usize, size: usize) -> Window {
        let mut samples = Vec::with_capacity(self.channels * size);
        for b in &self.buffer {
            samples.extend_from_slice(&b[..filled]);
            samples.resize(samples.len() + size - filled, 0.0);
        }
        let w = Window { index: self.next_index, start: self.start, filled, samples };
        self.next_index += 1;
        self.sent_until = self.start + filled as u64;
        w
    }

    /// Adds one resampled frame; sends every window it completes.
    fn push_frame(&mut self, frame: &ffmpeg::frame::Audio, emit: &mut dyn FnMut(Window) -> Result<()>) -> Result<()> {
        let planes: Vec<&[f32]> = (0..self.channels).map(|c| &frame.plane::<f32>(c)[..frame.samples()]).collect();
        self.push(&planes, emit)
    }

    /// Adds samples, one slice per channel; sends every window they complete.
    fn push(&mut self, planes: &[&[f32]], emit: &mut dyn FnMut(Window) -> Result<()>) -> Result<()> {
        let n = planes[0].len();
        let from = self.skip.min(n);
        self.skip -= from;
        self.start += from as u64;
        for (b, plane) in self.buffer.iter_mut().zip(planes) {
            b.extend_from_slice(&plane[from..]);
        }
        while self.len() >= self.window {
            let w = self.take(self.window, self.window);
            emit(w)?;
            let drop = self.hop.min(self.len());
            self.buffer.iter_mut().for_each(|b| drop_front(b, drop));
            self.start += drop as u64;
            self.skip = self.hop - drop;
        }
        Ok(())
    }

    /// Sends the last, partial window, as `last` says.
    fn finish(&mut self, last: LastWindow, emit: &mut dyn FnMut(Window) -> Result<()>) -> Result<()> {
        let n = self.len();
        if n == 0 || self.start + n as u64 <= self.sent_until {
            return Ok(());
        }
        match last {
            LastWindow::Drop => Ok(()),
            LastWindow::Pad => emit(self.take(n, self.window)),
            LastWindow::Short => emit(self.take(n, n)),
        }
    }
}

fn drop_front(b: &mut Vec<f32>, n: usize) {
    b.copy_within(n.., 0);
    b.truncate(b.len() - n);
}

/// Decodes `media`, resamples it to `target` and hands each window to `emit`. `Ok(Err(reason))`:
/// the audio is bad (a dead letter; also when its stream ends well before the duration its
/// container declares); `Err`: `emit` failed (the stage). No decoded frame is resampled into more
/// than [`MAX_OUTPUT_BYTES_PER_INPUT`] (or 256 MiB) at once.
pub fn windows(
    media: Box<dyn ReadSeek>,
    target: Target,
    windowing: &Windowing,
    budget: Duration,
    emit: &mut dyn FnMut(Window) -> Result<()>,
) -> Result<std::result::Result<u64, String>> {
    windows_within(media, target, windowing, budget, MAX_OUTPUT_BYTES_PER_INPUT, emit)
}

/// [`windows`], no resampled frame over `max_bytes` (nor 256 MiB).
fn windows_within(
    media: Box<dyn ReadSeek>,
    target: Target,
    windowing: &Windowing,
    budget: Duration,
    max_bytes: u64,
    emit: &mut dyn FnMut(Window) -> Result<()>,
) -> Result<std::result::Result<u64, String>> {
    let (mut media, mut decoder, _) = match open(media, budget) {
        Ok(o) => o,
        Err(why) => return Ok(Err(why)),
    };
    let mut resampler = Resampler::new(target, max_bytes.min(MAX_RESAMPLED_FRAME_BYTES));
    let mut windower = Windower::new(target, windowing);
    let mut frame = ffmpeg::frame::Audio::empty();
    let mut decoded = 0u64;
    let failed = |w: &Windower, why: String| Ok(Err(av::failed_after(w.next_index, "windows", why)));
    loop {
        match media.next_frame(&mut decoder, &mut frame, |_| false) {
            Ok(true) => decoded += frame.samples() as u64,
            Ok(false) => break,
            Err(why) => return failed(&windower, why),
        }
        if frame.samples() == 0 {
            continue;
        }
        if let Err(why) = resampler.run(&mut frame, &mut |out| windower.push_frame(out, emit))? {
            return failed(&windower, why);
        }
    }
    if let Err(why) = resampler.flush(&mut |out| windower.push_frame(out, emit))? {
        return failed(&windower, why);
    }
    if decoded == 0 {
        return Ok(Err(media.nothing_decoded()));
    }
    if let Some(why) = media.ended_early() {
        return failed(&windower, why);
    }
    windower.finish(windowing.last, emit)?;
    Ok(Ok(windower.next_index))
}

/// A WAV file (RIFF, 16-bit PCM) of planar `samples`: `channels` runs of equal length.
pub fn wav(samples: &[f32], channels: u16, sample_rate: u32) -> Vec<u8> {
    let ch = usize::from(channels.max(1));
    let frames = samples.len() / ch;
    let data = (frames * ch * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for i in 0..frames {
        for c in 0..ch {
            let v = (samples[c * frames + i].clamp(-1.0, 1.0) * 32767.0).round() as i16;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Probes audio: adds an `audio` column (`alluvium.audio`: the reference plus duration, sample
/// rate, channels and codec). Unreadable audio is a dead letter.
#[derive(Clone)]
pub struct ProbeAudio {
    opener: Arc<dyn OpenObject>,
    column: String,
    output: String,
    time_budget: Duration,
}

impl ProbeAudio {
    /// Probes the ObjectRefs in `ref`, read through `opener`.
    pub fn new(opener: Arc<dyn OpenObject>) -> Self {
        Self { opener, column: "ref".into(), output: "audio".into(), time_budget: Duration::from_secs(60) }
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

impl Operator for ProbeAudio {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        let budget = self.time_budget;
        let p = av::probe_each(&batch, &self.column, "probe_audio", self.opener.as_ref(), |m| probe(m, budget))?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter(p.found.iter().map(|a| a.duration_ms))),
            Arc::new(UInt32Array::from_iter_values(p.found.iter().map(|a| a.sample_rate))),
            Arc::new(UInt16Array::from_iter_values(p.found.iter().map(|a| a.channels))),
            Arc::new(StringArray::from_iter_values(p.found.iter().map(|a| a.codec.as_str()))),
        ];
        p.finish(AudioRefType::field(&self.output, false), columns)
    }
}

impl From<ProbeAudio> for Stage {
    fn from(p: ProbeAudio) -> Stage {
        Stage::new("probe_audio", p)
    }
}

/// Cuts audio into fixed windows at a target rate and channel count. See the module docs.
#[derive(Clone)]
pub struct AudioWindows {
    opener: Arc<dyn OpenObject>,
    column: String,
    output: String,
    target: Target,
    windowing: Windowing,
    encoding: AudioEncoding,
    batch_bytes: usize,
    time_budget: Duration,
    max_outputs_per_input: u64,
    max_output_bytes_per_input: u64,
}

impl AudioWindows {
    /// 10-second windows at 16 kHz mono as tensors (what speech and audio models take), of the
    /// audio in the ObjectRef column `ref`, read through `opener`; the last window padded.
    pub fn new(opener: Arc<dyn OpenObject>) -> Self {
        Self {
            opener,
            column: "ref".into(),
            output: "audio".into(),
            target: Target { sample_rate: 16_000, channels: 1 },
            windowing: Windowing { window_ms: 10_000, hop_ms: 10_000, last: LastWindow::Pad },
            encoding: AudioEncoding::Tensor,
            batch_bytes: 16 << 20,
            time_budget: Duration::from_secs(600),
            max_outputs_per_input: MAX_OUTPUTS_PER_INPUT,
            max_output_bytes_per_input: MAX_OUTPUT_BYTES_PER_INPUT,
        }
    }
    /// The target sample rate and channels.
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }
    /// Window length, hop and the last window.
    pub fn windowing(mut self, windowing: Windowing) -> Self {
        self.windowing = windowing;
        self
    }
    /// Tensors or WAV clips.
    pub fn encoding(mut self, encoding: AudioEncoding) -> Self {
        self.encoding = encoding;
        self
    }
    /// The ObjectRef column (or a probed `alluvium.audio` column).
    pub fn column(mut self, name: impl Into<String>) -> Self {
        self.column = name.into();
        self
    }
    /// The output column's name (`audio`).
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.output = name.into();
        self
    }
    /// About how many bytes of windows go out per batch (16 MiB; at least one window).
    pub fn batch_bytes(mut self, n: usize) -> Self {
        self.batch_bytes = n;
        self
    }
    /// Give up on one item after this long.
    pub fn time_budget(mut self, budget: Duration) -> Self {
        self.time_budget = budget;
        self
    }
    /// An item with more windows is a dead letter ([`MAX_OUTPUTS_PER_INPUT`]).
    pub fn max_outputs_per_input(mut self, n: u64) -> Self {
        self.max_outputs_per_input = n;
        self
    }
    /// An item whose windows come to more bytes (as they go out: tensors or WAV clips) is a dead
    /// letter ([`MAX_OUTPUT_BYTES_PER_INPUT`]); no decoded frame is resampled into more at once.
    pub fn max_output_bytes_per_input(mut self, n: u64) -> Self {
        self.max_output_bytes_per_input = n;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(format!("audio_windows: {m}")));
        let (t, w) = (self.target, self.windowing);
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&t.sample_rate) {
            return bad(format!("`sample_rate` must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}, e.g. 16000"));
        }
        if t.channels == 0 || t.channels > 8 {
            return bad("`channels` must be between 1 and 8 (1 = mono, 2 = stereo)".into());
        }
        if w.window_ms == 0 || w.hop_ms == 0 {
            return bad("`window_ms` and `hop_ms` must be 1 or more".into());
        }
        if w.last == LastWindow::Short && self.encoding == AudioEncoding::Tensor {
            return bad("`last = \"short\"` needs `encoding = \"wav\"`: tensors have one shape; use \"pad\" or \"drop\"".into());
        }
        if self.max_outputs_per_input == 0 {
            return bad("`max_outputs_per_input` must be 1 or more".into());
        }
        let window = self.whole_window_bytes();
        if self.max_output_bytes_per_input < window {
            return bad(format!(
                "`max_output_bytes_per_input` = {} is less than one window ({window} bytes): every item would be a dead letter",
                self.max_output_bytes_per_input
            ));
        }
        Ok(())
    }

    /// The bytes of one whole window as it goes out.
    fn whole_window_bytes(&self) -> u64 {
        let values = self.window_samples() as u64 * u64::from(self.target.channels);
        match self.encoding {
            AudioEncoding::Tensor => values * 4,
            AudioEncoding::Wav => 44 + values * 2,
        }
    }

    /// The bytes of `w` as it goes out, and its start in ms.
    fn measure(&self, w: &Window) -> (u64, i64) {
        let bytes = match self.encoding {
            AudioEncoding::Tensor => w.samples.len() as u64 * 4,
            AudioEncoding::Wav => 44 + w.samples.len() as u64 * 2,
        };
        (bytes, (w.start * 1000 / u64::from(self.target.sample_rate.max(1))) as i64)
    }

    /// Samples per channel in a whole window.
    fn window_samples(&self) -> usize {
        samples(self.windowing.window_ms, self.target)
    }

    /// The `audio` field.
    fn audio_field(&self) -> Result<Field> {
        match self.encoding {
            AudioEncoding::Tensor => tensor_field_named(
                &self.output,
                DataType::Float32,
                &[usize::from(self.target.channels), self.window_samples()],
                Some(vec!["channels".into(), "samples".into()]),
                false,
            ),
            AudioEncoding::Wav => Ok(Field::new(&self.output, DataType::Binary, false)),
        }
    }

    /// Builds a batch of windows: the input's other columns of each window's item, then the
    /// window columns.
    fn batch(&self, input: &RecordBatch, refs: &ArrayRef, windows: Vec<(usize, Window)>) -> Result<RecordBatch> {
        let rows = UInt32Array::from_iter_values(windows.iter().map(|(r, _)| *r as u32));
        let taken = RecordBatch::try_new(
            input.schema(),
            input.columns().iter().map(|c| take(c.as_ref(), &rows, None)).collect::<std::result::Result<Vec<_>, _>>()?,
        )?;
        let rate = self.target.sample_rate;
        let ms = |samples: u64| (samples * 1000 / u64::from(rate)) as i64;
        let field = self.audio_field()?;
        let audio: ArrayRef = match self.encoding {
            AudioEncoding::Tensor => {
                let values = Float32Array::from_iter_values(windows.iter().flat_map(|(_, w)| w.samples.iter().copied()));
                let DataType::FixedSizeList(item, size) = field.data_type() else { unreachable!("a tensor field") };
                Arc::new(FixedSizeListArray::try_new(item.clone(), *size, Arc::new(values), None)?)
            }
            AudioEncoding::Wav => {
                let mut b = BinaryBuilder::new();
                windows.iter().for_each(|(_, w)| b.append_value(wav(&w.samples, self.target.channels, rate)));
                Arc::new(b.finish())
            }
        };
        let add: Vec<(Field, ArrayRef)> = vec![
            (ObjectRefType::field("source", false), take(refs.as_ref(), &rows, None)?),
            (Field::new("window_index", DataType::UInt64, false), {
                Arc::new(UInt64Array::from_iter_values(windows.iter().map(|(_, w)| w.index)))
            }),
            (Field::new("start_ms", DataType::Int64, false), {
                Arc::new(Int64Array::from_iter_values(windows.iter().map(|(_, w)| ms(w.start))))
            }),
            (Field::new("duration_ms", DataType::Int64, false), {
                Arc::new(Int64Array::from_iter_values(windows.iter().map(|(_, w)| ms(w.filled as u64))))
            }),
            (Field::new("sample_rate", DataType::UInt32, false), Arc::new(UInt32Array::from(vec![rate; windows.len()]))),
            (field, audio),
        ];
        with_columns(&taken, Some(&self.column), add)
    }
}

impl Operator for AudioWindows {
    fn process(&mut self, batch: RecordBatch) -> Result<Output> {
        av::gather(self, batch, |this, input| this.batch(input, &refs(input, &this.column, "audio_windows")?.0, Vec::new()))
    }

    fn process_into(&mut self, batch: RecordBatch, emit: &mut dyn FnMut(Output) -> Result<()>) -> Result<()> {
        let (refs_col, refs) = refs(&batch, &self.column, "audio_windows")?;
        let this = &*self;
        let window_bytes = this.window_samples() * usize::from(this.target.channels) * 4;
        let per_batch = (this.batch_bytes / window_bytes.max(1)).max(1);
        let build = |windows| this.batch(&batch, &refs_col, windows);
        let measure = |w: &Window| this.measure(w);
        let fan: av::FanOut<'_, Window> = av::FanOut {
            stage: "audio_windows",
            unit: "windows",
            per_batch,
            max_outputs: this.max_outputs_per_input,
            max_bytes: this.max_output_bytes_per_input,
            measure: &measure,
        };
        av::stream_objects(&refs, this.opener.as_ref(), &fan, &build, emit, |media, send| {
            let max_bytes = this.max_output_bytes_per_input;
            Ok(windows_within(media, this.target, &this.windowing, this.time_budget, max_bytes, send)?.map(|_| ()))
        })
    }
}

impl From<AudioWindows> for Stage {
    fn from(w: AudioWindows) -> Stage {
        Stage::new("audio_windows", w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_headers_describe_their_samples() {
        let w = wav(&[0.0, 0.5, -1.0, 1.0], 2, 8000);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(w[4..8].try_into().unwrap()) as usize, w.len() - 8);
        assert_eq!(u16::from_le_bytes(w[22..24].try_into().unwrap()), 2, "channels");
        assert_eq!(u32::from_le_bytes(w[24..28].try_into().unwrap()), 8000);
        assert_eq!(u32::from_le_bytes(w[40..44].try_into().unwrap()), 8, "2 frames × 2 channels × 2 bytes");
        // Interleaved: frame 0 is (0.0, -1.0), frame 1 is (0.5, 1.0).
        let s: Vec<i16> = w[44..].chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(s, vec![0, -32767, 16384, 32767]);
    }

    /// Windows of `n` samples (one channel counting up from 0) in pieces of `piece`.
    fn cut(window: u32, hop: u32, last: LastWindow, n: usize, piece: usize) -> Vec<(u64, u64, usize, Vec<f32>)> {
        let target = Target { sample_rate: 1000, channels: 1 };
        let mut w = Windower::new(target, &Windowing { window_ms: window, hop_ms: hop, last });
        let samples: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = Vec::new();
        let mut emit = |x: Window| {
            out.push((x.index, x.start, x.filled, x.samples));
            Ok(())
        };
        for chunk in samples.chunks(piece) {
            w.push(&[chunk], &mut emit).unwrap();
        }
        w.finish(last, &mut emit).unwrap();
        out
    }

    #[test]
    fn windows_are_cut_back_to_back_overlapping_or_with_gaps() {
        let v = |r: std::ops::Range<usize>| r.map(|i| i as f32).collect::<Vec<_>>();
        // Back to back, the last padded: 0–4, 4–8, 8–10 + 2 zeros; the piece size does not matter.
        for piece in [1, 3, 7, 100] {
            let w = cut(4, 4, LastWindow::Pad, 10, piece);
            assert_eq!(w.len(), 3, "pieces of {piece}");
            assert_eq!(w[1], (1, 4, 4, v(4..8)));
            assert_eq!(w[2], (2, 8, 2, vec![8.0, 9.0, 0.0, 0.0]));
        }
        // Overlapping by half: 0–4, 2–6, 4–8, 6–10 (whole), then nothing new is left.
        let w = cut(4, 2, LastWindow::Pad, 10, 3);
        assert_eq!(w.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0, 2, 4, 6]);
        assert!(w.iter().all(|x| x.2 == 4));
        // Gaps: 0–2, 5–7, then 10–11 short.
        let w = cut(2, 5, LastWindow::Short, 11, 4);
        assert_eq!(w.iter().map(|x| (x.1, x.3.clone())).collect::<Vec<_>>(), vec![(0, v(0..2)), (5, v(5..7)), (10, v(10..11))]);
        // Dropped last window; audio shorter than a window gives nothing, or one padded window.
        assert_eq!(cut(4, 4, LastWindow::Drop, 10, 5).len(), 2);
        assert!(cut(4, 4, LastWindow::Drop, 3, 5).is_empty());
        assert_eq!(cut(4, 4, LastWindow::Pad, 3, 5), vec![(0, 0, 3, vec![0.0, 1.0, 2.0, 0.0])]);
    }
}
