//! What video and audio share on FFmpeg: opening a container read through
//! [`OpenObject`](alluvium_core::OpenObject) under a time budget, and the demux → decode loop.
//!
//! ```text
//!  Box<dyn ReadSeek> ──StreamIo──▶ demuxer (interrupted past the deadline)
//!      ──packets of the best stream of a kind──▶ decoder ──▶ Media::next_frame, one frame at a time
//! ```
//!
//! [`Media::next_frame`] turns FFmpeg's send/receive dance into a pull: it reads and sends
//! packets until the decoder has a frame, counts corrupt packets instead of failing on the first,
//! drains the decoder at the end of the stream, and words every failure for a dead letter.

use std::sync::Once;
use std::time::{Duration, Instant};

use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, StructArray, UInt32Array};
use alluvium_core::arrow::datatypes::{DataType, Field};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::operator::with_columns;
use alluvium_core::types::ObjectRefArray;
use alluvium_core::{Error, ErrorKind, OpenObject, Operator, Output, ReadSeek, Result, RowFailure};
use ffmpeg_next as ffmpeg;

/// Starts FFmpeg once per process, quiet: errors are reported per item with the reason, and
/// FFmpeg's own log would only repeat them.
fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    });
}

/// An open container and the stream being decoded.
pub(crate) struct Media {
    pub input: ffmpeg::format::context::Input,
    /// The decoded stream's index.
    pub stream: usize,
    time_base: f64,
    start: i64,
    deadline: Instant,
    budget: Duration,
    /// `video` or `audio`, for messages.
    what: &'static str,
    eof: bool,
    /// Packets or frames the decoder rejected as corrupt (skipped, counted).
    pub corrupt: u64,
    /// How far the demuxer got in the stream: the latest end (pts + duration) of its packets read,
    /// in ms from the stream's start; `None` before the first.
    reached_ms: Option<i64>,
}

/// Containers whose declared duration is written by the muxer (an index, a header), not guessed
/// from the file's size or bitrate: a stream that ends well before it was cut short. (MP3, ADTS
/// AAC, raw streams and WAV estimate their duration from the bytes there are, and Ogg reads it
/// from its last page: they cannot tell.)
const DECLARING_CONTAINERS: [&str; 6] = ["mov", "mp4", "matroska", "webm", "flac", "avi"];

impl Media {
    /// Opens `media` and picks its best stream of `kind`; the whole read must finish within
    /// `budget` (the demuxer is interrupted after it).
    pub fn open(media: Box<dyn ReadSeek>, kind: ffmpeg::media::Type, budget: Duration) -> std::result::Result<Self, String> {
        init();
        let what = if kind == ffmpeg::media::Type::Audio { "audio" } else { "video" };
        let deadline = Instant::now() + budget;
        let io = ffmpeg::format::context::StreamIo::from_read_seek(media).map_err(|e| format!("cannot read: {e}"))?;
        // The media is these bytes only: demuxers that open what a file names (HLS and DASH
        // playlists, concat lists) may open no protocol at all, so a reference cannot read local
        // files or reach URLs past the access policy.
        let mut options = ffmpeg::Dictionary::new();
        options.set("protocol_whitelist", "none");
        let input = ffmpeg::format::input_from_stream_with_interrupt(io, None, Some(options), move || Instant::now() > deadline)
            .map_err(|e| match Instant::now() > deadline {
                true => format!("opening took longer than the time budget of {budget:?}"),
                false => format!("not a readable {what} container: {e}"),
            })?;
        let stream = input.streams().best(kind).ok_or_else(|| format!("no {what} stream"))?;
        let (index, tb) = (stream.index(), stream.time_base());
        let time_base = if tb.denominator() == 0 { 0.0 } else { f64::from(tb.numerator()) / f64::from(tb.denominator()) };
        let start = if stream.start_time() == ffmpeg::ffi::AV_NOPTS_VALUE { 0 } else { stream.start_time() };
        Ok(Self { input, stream: index, time_base, start, deadline, budget, what, eof: false, corrupt: 0, reached_ms: None })
    }

    /// The stream being decoded.
    pub fn stream(&self) -> ffmpeg::Stream<'_> {
        self.input.stream(self.stream).expect("the stream chosen at open")
    }

    /// The stream's duration, else the container's, in ms.
    pub fn duration_ms(&self) -> Option<i64> {
        let d = self.stream().duration();
        if d > 0 && self.time_base > 0.0 {
            Some((d as f64 * self.time_base * 1000.0).round() as i64)
        } else if self.input.duration() > 0 {
            Some(self.input.duration() / 1000)
        } else {
            None
        }
    }

    /// A decoder context for the stream, `threads` frame threads (1: none).
    pub fn codec(&self, threads: usize) -> std::result::Result<(ffmpeg::codec::Context, String), String> {
        let params = self.stream().parameters();
        let codec = params.id().name().to_string();
        let mut context = ffmpeg::codec::Context::from_parameters(params).map_err(|e| format!("codec parameters: {e}"))?;
        if threads > 1 {
            context.set_threading(ffmpeg::codec::threading::Config {
                kind: ffmpeg::codec::threading::Type::Frame,
                count: threads,
                ..Default::default()
            });
        }
        Ok((context, codec))
    }

    /// A timestamp in the stream's time base → ms from the stream's start.
    pub fn pts_ms(&self, pts: Option<i64>) -> i64 {
        pts.map_or(0, |p| (p.saturating_sub(self.start) as f64 * self.time_base * 1000.0).round() as i64)
    }

    /// Notes how far a packet of the stream reaches.
    fn note(&mut self, packet: &ffmpeg::Packet) {
        if let Some(ts) = packet.pts().or(packet.dts()) {
            let end = self.pts_ms(Some(ts.saturating_add(packet.duration().max(0))));
            self.reached_ms = Some(self.reached_ms.map_or(end, |r| r.max(end)));
        }
    }

    /// Whether the container's duration is one its muxer wrote (see [`DECLARING_CONTAINERS`]).
    fn declares_duration(&self) -> bool {
        self.input.format().name().split(',').any(|n| DECLARING_CONTAINERS.contains(&n))
    }

    /// At the end of the stream: why it ended too early, when its packets stopped well before the
    /// duration its container declares (a truncated or cut-short file: the index promises
    /// packets that are not there). The slack is 5% of the duration, 1 to 10 s, so that
    /// containers whose tracks end a little apart are not flagged.
    pub fn ended_early(&self) -> Option<String> {
        let declared = self.duration_ms().filter(|d| *d > 0)?;
        // Packets without timestamps tell nothing.
        let reached = self.reached_ms?.max(0);
        if !self.declares_duration() {
            return None;
        }
        let slack = (declared / 20).clamp(1000, 10_000);
        if reached.saturating_add(slack) >= declared {
            return None;
        }
        let corrupt = match self.corrupt {
            0 => String::new(),
            n => format!("; {n} corrupt packets were skipped"),
        };
        Some(format!(
            "the {} stream ended at {:.1} s of the {:.1} s its container declares: the file is truncated or damaged{corrupt}",
            self.what,
            reached as f64 / 1000.0,
            declared as f64 / 1000.0
        ))
    }

    /// The reason to stop, once past the time budget.
    pub fn over_budget(&self) -> Option<String> {
        (Instant::now() > self.deadline).then(|| format!("decoding took longer than the time budget of {:?}", self.budget))
    }

    /// Seeks to the keyframe at or before `ms` and drops what `decoder` holds.
    pub fn seek(&mut self, decoder: &mut ffmpeg::decoder::Opened, ms: i64) -> std::result::Result<(), String> {
        let start_us = (self.start as f64 * self.time_base * 1e6) as i64;
        let ts = start_us + ms * 1000;
        self.input.seek(ts, ..ts).map_err(|e| format!("seeking to {ms} ms: {e}"))?;
        decoder.flush();
        self.eof = false;
        Ok(())
    }

    /// Decodes the next frame of the stream into `frame`: `Ok(true)` with a frame, `Ok(false)`
    /// at the end of the stream, `Err(reason)` when the input is bad or over its budget. Packets
    /// for which `skip` says so are not decoded (keyframe-only decoding).
    pub fn next_frame(
        &mut self,
        decoder: &mut ffmpeg::decoder::Opened,
        frame: &mut ffmpeg::Frame,
        skip: impl Fn(&ffmpeg::Packet) -> bool,
    ) -> std::result::Result<bool, String> {
        loop {
            if let Some(why) = self.over_budget() {
                return Err(why);
            }
            match decoder.receive_frame(frame) {
                Ok(()) => return Ok(true),
                Err(ffmpeg::Error::Eof) => return Ok(false),
                Err(ffmpeg::Error::InvalidData) => {
                    self.corrupt += 1;
                    continue;
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {}
                Err(e) => return Err(format!("decoding failed: {e}")),
            }
            // The decoder wants input.
            if self.eof {
                // Drained but not at EOF (a decoder that never says EOF): the stream is over.
                return Ok(false);
            }
            // A fresh packet each time: `av_read_frame` fills it without releasing what it held.
            let mut packet = ffmpeg::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() != self.stream {
                        continue;
                    }
                    // Skipped packets count too: the demuxer got that far.
                    self.note(&packet);
                    if skip(&packet) {
                        continue;
                    }
                    match decoder.send_packet(&packet) {
                        Ok(()) => {}
                        Err(ffmpeg::Error::InvalidData) => self.corrupt += 1,
                        Err(e) => return Err(format!("decoding failed: {e}")),
                    }
                }
                Err(ffmpeg::Error::Eof) => {
                    self.eof = true;
                    let _ = decoder.send_eof();
                }
                Err(ffmpeg::Error::InvalidData) => self.corrupt += 1,
                Err(ffmpeg::Error::Exit) => return Err(self.over_budget().unwrap_or_else(|| "reading was interrupted".into())),
                Err(e) => return Err(format!("reading the {} failed: {e}", self.what)),
            }
        }
    }

    /// Why a stream that ended without a single frame is bad.
    pub fn nothing_decoded(&self) -> String {
        let unit = if self.what == "audio" { "samples" } else { "frames" };
        match self.corrupt {
            0 => format!("the {} stream has no {unit}", self.what),
            n => format!("no {unit} could be decoded ({n} corrupt packets)"),
        }
    }
}

/// How an item's decoding ended, when it did not end well: the reason, and what was sent before.
pub(crate) fn failed_after(sent: u64, unit: &str, why: String) -> String {
    if sent == 0 {
        why
    } else {
        format!("{why} (after {sent} {unit} were extracted)")
    }
}

/// The ObjectRef column `name` of `batch` (an ObjectRef, or a probed `alluvium.video` /
/// `alluvium.audio` column's `ref` field): the array itself (for `take`) and its typed view.
pub(crate) fn refs(batch: &RecordBatch, name: &str, stage: &str) -> Result<(ArrayRef, ObjectRefArray)> {
    let col = batch.column_by_name(name).ok_or_else(|| {
        Error::config(format!("{stage}: the input has no column `{name}`; set `column` to the ObjectRef column"))
    })?;
    let inner = match col.as_any().downcast_ref::<StructArray>().and_then(|s| s.column_by_name("ref")) {
        Some(inner) => inner.clone(),
        None => col.clone(),
    };
    let typed = ObjectRefArray::try_new(&inner).map_err(|e| e.context(format!("{stage}: column `{name}`")))?;
    Ok((inner, typed))
}

/// Runs `each` on every object of an ObjectRef column, opened through `opener`: a null reference,
/// one that cannot be opened, and an `Ok(Err(reason))` from `each` are row failures worded
/// `stage: reason` (dead letters); an `Err` from `each` fails the stage.
pub(crate) fn each_object(
    refs: &ObjectRefArray,
    opener: &dyn OpenObject,
    stage: &str,
    mut each: impl FnMut(usize, Box<dyn ReadSeek>) -> Result<std::result::Result<(), String>>,
) -> Result<Vec<RowFailure>> {
    let mut failures = Vec::new();
    for row in 0..refs.len() {
        let outcome = match refs.get(row) {
            None => Err("the reference is null".to_string()),
            Some(r) => match opener.open(&r) {
                Ok(media) => each(row, media)?,
                Err(why) => Err(why),
            },
        };
        if let Err(why) = outcome {
            failures.push(RowFailure::new(row, ErrorKind::Data, format!("{stage}: {why}")));
        }
    }
    Ok(failures)
}

/// What a probe stage found: the input rows that probed, the reference of each, what each probe
/// returned, and the rows that did not probe (dead letters).
pub(crate) struct Probed<T> {
    kept: RecordBatch,
    refs: ArrayRef,
    pub found: Vec<T>,
    failures: Vec<RowFailure>,
}

/// The body of a probe stage: `probe` on every object of the ObjectRef column `column`.
pub(crate) fn probe_each<T>(
    batch: &RecordBatch,
    column: &str,
    stage: &str,
    opener: &dyn OpenObject,
    mut probe: impl FnMut(Box<dyn ReadSeek>) -> std::result::Result<T, String>,
) -> Result<Probed<T>> {
    let (refs_col, refs) = refs(batch, column, stage)?;
    let mut found = Vec::new();
    let failures = each_object(&refs, opener, stage, |row, media| Ok(probe(media).map(|t| found.push((row, t)))))?;
    let mut keep = vec![false; batch.num_rows()];
    found.iter().for_each(|(row, _)| keep[*row] = true);
    let kept = alluvium_core::arrow::compute::filter_record_batch(batch, &keep.into())?;
    let rows = UInt32Array::from_iter_values(found.iter().map(|(r, _)| *r as u32));
    let refs = alluvium_core::arrow::compute::take(refs_col.as_ref(), &rows, None)?;
    Ok(Probed { kept, refs, found: found.into_iter().map(|(_, t)| t).collect(), failures })
}

impl<T> Probed<T> {
    /// The output: the kept rows plus `field`, a struct of the reference and then `columns`
    /// (what was found, one value per kept row), with the dead letters.
    pub fn finish(self, field: Field, columns: Vec<ArrayRef>) -> Result<Output> {
        let DataType::Struct(fields) = field.data_type().clone() else { unreachable!("a probe's output is a struct") };
        let columns = std::iter::once(self.refs).chain(columns).collect();
        let probed = StructArray::try_new(fields, columns, None)?;
        let batch = with_columns(&self.kept, None, vec![(field, Arc::new(probed) as ArrayRef)])?;
        Ok(Output::with_failures(batch, self.failures))
    }
}

/// How one input fans out into outputs (audio windows, video frames), and how far it may: more
/// outputs than `max_outputs`, or outputs worth more than `max_bytes`, make the input a dead letter
/// that names the limit's key and says how far it got (never a silently truncated input).
pub(crate) struct FanOut<'a, T> {
    /// The stage's name, for messages.
    pub stage: &'a str,
    /// What the outputs are, plural (`frames`, `windows`).
    pub unit: &'a str,
    /// Outputs per emitted batch.
    pub per_batch: usize,
    /// `max_outputs_per_input`.
    pub max_outputs: u64,
    /// `max_output_bytes_per_input`.
    pub max_bytes: u64,
    /// An output's size in bytes (as it goes out) and its time in the input (ms).
    pub measure: &'a dyn Fn(&T) -> (u64, i64),
}

/// Why the next output of an input is one too many, if it is: `made` outputs of `bytes` bytes
/// so far, the next of `size` bytes at `at_ms`.
fn over_the_limits<T>(f: &FanOut<'_, T>, made: u64, bytes: u64, size: u64, at_ms: i64) -> Option<String> {
    let at = at_ms as f64 / 1000.0;
    if made >= f.max_outputs {
        return Some(format!(
            "over max_outputs_per_input = {}: the input makes more than {} {} (stopped at {at:.1} s)",
            f.max_outputs, f.max_outputs, f.unit
        ));
    }
    if bytes.saturating_add(size) > f.max_bytes {
        return Some(format!(
            "over max_output_bytes_per_input = {}: the input's {} come to more than that (stopped at {at:.1} s, after {made} {} \
             of {bytes} bytes)",
            f.max_bytes, f.unit, f.unit
        ));
    }
    None
}

/// The body of a streaming `process_into`: the items `each` makes of every object of an ObjectRef
/// column go out through `emit` in batches of `per_batch` rows, built by `build` from
/// `(row, item)` pairs; the objects that failed ride as dead letters on the last batch.
///
/// An object that fails (a bad stream, one that ends early, one over the fan-out limits) is a
/// dead letter, and its items not yet sent on are dropped with it: only a long object's batches
/// that went downstream before the failure was known stay there, and its dead letter says how
/// many did. (Holding every item back until its object is done would hold a whole video's frames
/// in memory; the limits bound how much can have gone on.)
pub(crate) fn stream_objects<T>(
    refs: &ObjectRefArray,
    opener: &dyn OpenObject,
    fan: &FanOut<'_, T>,
    build: &dyn Fn(Vec<(usize, T)>) -> Result<RecordBatch>,
    emit: &mut dyn FnMut(Output) -> Result<()>,
    mut each: impl FnMut(Box<dyn ReadSeek>, &mut dyn FnMut(T) -> Result<()>) -> Result<std::result::Result<(), String>>,
) -> Result<()> {
    let mut pending: Vec<(usize, T)> = Vec::new();
    let failures = each_object(refs, opener, fan.stage, |row, media| {
        // This object's items so far, their bytes, and how many of them went on.
        let (mut made, mut bytes, mut sent) = (0u64, 0u64, 0u64);
        let mut over: Option<String> = None;
        let outcome = {
            let mut send = |item: T| -> Result<()> {
                if let Some(why) = &over {
                    return Err(Error::data(why.clone()));
                }
                let (size, at_ms) = (fan.measure)(&item);
                if let Some(why) = over_the_limits(fan, made, bytes, size, at_ms) {
                    over = Some(why.clone());
                    // Stops the decoding; turned back into this object's dead letter below.
                    return Err(Error::data(why));
                }
                made += 1;
                bytes = bytes.saturating_add(size);
                pending.push((row, item));
                if pending.len() >= fan.per_batch.max(1) {
                    sent += pending.iter().filter(|(r, _)| *r == row).count() as u64;
                    emit(Output::new(build(std::mem::take(&mut pending))?))?;
                }
                Ok(())
            };
            each(media, &mut send)
        };
        // Over a limit, the object is a dead letter for that, whatever `each` made of the error.
        let outcome = match (outcome, over.take()) {
            (_, Some(why)) => Err(why),
            (Ok(outcome), None) => outcome,
            (Err(e), None) => return Err(e),
        };
        Ok(outcome.map_err(|why| {
            pending.retain(|(r, _)| *r != row);
            let unit = fan.unit;
            match (made, sent) {
                (0, _) => why,
                (made, 0) => format!("{why}; none of its {made} {unit} were sent on"),
                (made, sent) if sent == made => format!("{why}; its {sent} {unit} before that had already been sent on"),
                (made, sent) => {
                    format!("{why}; {sent} of its {made} {unit} had already been sent on, the other {} were dropped", made - sent)
                }
            }
        }))
    })?;
    if !pending.is_empty() || !failures.is_empty() {
        emit(Output::with_failures(build(pending)?, failures))?;
    }
    Ok(())
}

/// [`Operator::process`] for an operator that streams through `process_into`: everything it
/// emits for `batch`, in one output; `empty` builds the (empty) batch when it emitted no rows.
pub(crate) fn gather<O: Operator>(
    op: &mut O,
    batch: RecordBatch,
    empty: impl FnOnce(&O, &RecordBatch) -> Result<RecordBatch>,
) -> Result<Output> {
    let mut pieces = Vec::new();
    op.process_into(batch.clone(), &mut |out| {
        pieces.push(out);
        Ok(())
    })?;
    let failures = pieces.iter_mut().flat_map(|p| std::mem::take(&mut p.failures)).collect();
    let batches: Vec<RecordBatch> = pieces.into_iter().map(|p| p.batch).collect();
    let all = match batches.first() {
        None => empty(op, &batch)?,
        Some(first) => alluvium_core::arrow::compute::concat_batches(&first.schema(), &batches)?,
    };
    Ok(Output::with_failures(all, failures))
}
