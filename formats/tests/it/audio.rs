//! Audio probing and windowing on files FFmpeg's CLI makes at test time: every codec the issue
//! names, the samples next to the CLI's own resampling, tensors and WAV clips, streaming in
//! pieces, and bad input as dead letters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alluvium_core::arrow::array::{Array, AsArray};
use alluvium_core::arrow::datatypes::{Float32Type, Int64Type, UInt64Type};
use alluvium_core::open::LocalFiles;
use alluvium_core::{Operator, Output};
use alluvium_formats::audio::{probe, windows, Window};
use alluvium_formats::{AudioEncoding, AudioWindows, LastWindow, ProbeAudio, Target, Windowing};
use alluvium_integration::{ffmpeg, test_video};

use crate::refs;

/// Three seconds of a 440 Hz tone at 44.1 kHz stereo, encoded with `codec` into `dir/name`.
fn tone(dir: &Path, name: &str, codec: &[&str]) -> Option<PathBuf> {
    let path = dir.join(name);
    let mut args = vec!["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=3", "-ac", "2"];
    args.extend_from_slice(codec);
    args.push(path.to_str().unwrap());
    ffmpeg(&args)?;
    Some(path)
}

/// The five codecs of the issue: (file, encoder arguments, FFmpeg's decoder name).
const CODECS: [(&str, &[&str], &str); 5] = [
    ("tone.wav", &["-c:a", "pcm_s16le"], "pcm_s16le"),
    ("tone.flac", &["-c:a", "flac"], "flac"),
    ("tone.mp3", &["-c:a", "libmp3lame", "-b:a", "128k"], "mp3"),
    ("tone.ogg", &["-c:a", "libvorbis"], "vorbis"),
    ("tone.m4a", &["-c:a", "aac", "-b:a", "128k"], "aac"),
];

/// What FFmpeg's CLI makes of `path` at `rate` Hz and `channels` channels: f32 samples,
/// interleaved.
fn cli_resampled(path: &Path, rate: u32, channels: u16, dir: &Path) -> Vec<f32> {
    let raw = dir.join("cli.f32");
    let (rate, channels) = (rate.to_string(), channels.to_string());
    ffmpeg(&["-i", path.to_str().unwrap(), "-ar", &rate, "-ac", &channels, "-f", "f32le", raw.to_str().unwrap()]).unwrap();
    std::fs::read(&raw).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every window of `path`.
fn all_windows(path: &Path, target: Target, windowing: Windowing) -> Vec<Window> {
    let mut got = Vec::new();
    let media = Box::new(std::fs::File::open(path).unwrap());
    let n = windows(media, target, &windowing, Duration::from_secs(60), &mut |w| {
        got.push(w);
        Ok(())
    })
    .unwrap()
    .unwrap();
    assert_eq!(n as usize, got.len());
    got
}

#[test]
fn every_codec_is_probed_and_resampled_as_the_ffmpeg_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    for (name, codec, decoder) in CODECS {
        let Some(path) = tone(dir.path(), name, codec) else { return };
        let info = probe(Box::new(std::fs::File::open(&path).unwrap()), Duration::from_secs(10)).unwrap();
        assert_eq!((info.codec.as_str(), info.sample_rate, info.channels), (decoder, 44100, 2), "{name}");
        assert!((2900..=3200).contains(&info.duration_ms.unwrap()), "{name}: {info:?}");

        // One-second windows at 16 kHz mono: back to back they are the CLI's `-ar 16000 -ac 1`.
        let target = Target { sample_rate: 16_000, channels: 1 };
        let got = all_windows(&path, target, Windowing { window_ms: 1000, hop_ms: 1000, last: LastWindow::Pad });
        assert!(got.len() >= 3, "{name}: {} windows", got.len());
        assert!(got.iter().all(|w| w.samples.len() == 16_000), "{name}: padded to whole windows");
        assert_eq!(
            got.iter().map(|w| w.start).collect::<Vec<_>>(),
            (0..got.len() as u64).map(|i| i * 16_000).collect::<Vec<_>>()
        );
        let ours: Vec<f32> = got.iter().flat_map(|w| w.samples[..w.filled].iter().copied()).collect();
        let cli = cli_resampled(&path, 16_000, 1, dir.path());
        assert!(ours.len().abs_diff(cli.len()) <= 32, "{name}: {} samples, the CLI {}", ours.len(), cli.len());
        let worst = ours.iter().zip(&cli).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: differs from the CLI by up to {worst}");
        // It is the tone: ~880 zero crossings a second, loud.
        let crossings = ours.windows(2).filter(|p| (p[0] < 0.0) != (p[1] < 0.0)).count();
        assert!((2550..=2700).contains(&crossings), "{name}: {crossings} zero crossings");
    }
}

#[test]
fn stereo_targets_keep_both_channels_channel_major() {
    let dir = tempfile::tempdir().unwrap();
    // Left: 440 Hz; right: silence.
    let path = dir.path().join("lr.wav");
    let Some(()) = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=22050:duration=2",
        "-af",
        "pan=stereo|c0=c0|c1=0*c0",
        path.to_str().unwrap(),
    ]) else {
        return;
    };
    let target = Target { sample_rate: 22_050, channels: 2 };
    let got = all_windows(&path, target, Windowing { window_ms: 1000, hop_ms: 1000, last: LastWindow::Drop });
    assert_eq!(got.len(), 2);
    let (left, right) = got[0].samples.split_at(22_050);
    assert!(left.iter().any(|v| v.abs() > 0.1), "the tone is on the left");
    assert!(right.iter().all(|v| v.abs() < 1e-6), "the right is silent");
    let cli = cli_resampled(&path, 22_050, 2, dir.path());
    assert!(left.iter().zip(cli.iter().step_by(2)).all(|(a, b)| (a - b).abs() < 1e-4), "de-interleaved as the CLI's left");
}

/// `(window_index, start_ms, duration_ms)` of every window row.
fn rows(out: &Output) -> Vec<(u64, i64, i64)> {
    let b = &out.batch;
    let index = b.column_by_name("window_index").unwrap().as_primitive::<UInt64Type>();
    let start = b.column_by_name("start_ms").unwrap().as_primitive::<Int64Type>();
    let duration = b.column_by_name("duration_ms").unwrap().as_primitive::<Int64Type>();
    (0..b.num_rows()).map(|i| (index.value(i), start.value(i), duration.value(i))).collect()
}

#[test]
fn windows_stream_out_in_pieces_as_tensors_or_wav_clips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.flac");
    let Some(()) = ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=8000:duration=25", path.to_str().unwrap()])
    else {
        return;
    };
    // Tensors: 10 s at 16 kHz mono, the last padded; about one window per batch.
    let mut op = AudioWindows::new(Arc::new(LocalFiles)).batch_bytes(700_000);
    op.validate().unwrap();
    let pieces = crate::pieces(&mut op, refs(&[&path]));
    assert_eq!(pieces.len(), 3, "one window per batch (640,000 bytes each)");
    let all: Vec<(u64, i64, i64)> = pieces.iter().flat_map(rows).collect();
    assert_eq!(all, [(0, 0, 10_000), (1, 10_000, 10_000), (2, 20_000, 5_000)]);
    let b = &pieces[0].batch;
    let field = b.schema().field_with_name("audio").unwrap().clone();
    assert_eq!(field.extension_type_name(), Some("arrow.fixed_shape_tensor"));
    let tensor = b.column_by_name("audio").unwrap().as_fixed_size_list();
    assert_eq!(tensor.value_length(), 160_000, "[1, 160000]");
    assert!(b.column_by_name("label").is_some() && b.column_by_name("source").is_some() && b.column_by_name("ref").is_none());
    let last = pieces[2].batch.column_by_name("audio").unwrap().as_fixed_size_list().value(0);
    let last = last.as_primitive::<Float32Type>();
    assert!(last.values()[..80_000].iter().any(|v| v.abs() > 0.1) && last.values()[80_000..].iter().all(|v| *v == 0.0));

    // WAV clips overlapping by 2 s, the last one short: FFmpeg reads them back.
    let wav_op = AudioWindows::new(Arc::new(LocalFiles))
        .encoding(AudioEncoding::Wav)
        .target(Target { sample_rate: 8000, channels: 2 })
        .windowing(Windowing { window_ms: 10_000, hop_ms: 8_000, last: LastWindow::Short });
    wav_op.validate().unwrap();
    let out = wav_op.clone().process(refs(&[&path])).unwrap();
    assert_eq!(rows(&out), [(0, 0, 10_000), (1, 8_000, 10_000), (2, 16_000, 9_000)]);
    let clip = out.batch.column_by_name("audio").unwrap().as_binary::<i32>().value(2).to_vec();
    let file = dir.path().join("clip.wav");
    std::fs::write(&file, clip).unwrap();
    let info = probe(Box::new(std::fs::File::open(&file).unwrap()), Duration::from_secs(10)).unwrap();
    assert_eq!((info.codec.as_str(), info.sample_rate, info.channels, info.duration_ms), ("pcm_s16le", 8000, 2, Some(9000)));

    // Settings that cannot work are config errors naming the key.
    let short_tensor =
        AudioWindows::new(Arc::new(LocalFiles)).windowing(Windowing { window_ms: 1000, hop_ms: 1000, last: LastWindow::Short });
    assert!(short_tensor.validate().unwrap_err().to_string().contains("`last = \"short\"` needs `encoding = \"wav\"`"));
    let zero = AudioWindows::new(Arc::new(LocalFiles)).target(Target { sample_rate: 0, channels: 1 });
    assert!(zero.validate().unwrap_err().to_string().contains("`sample_rate`"));
}

#[test]
fn bad_audio_is_dead_letters_with_reasons_and_good_audio_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(good) = tone(d, "good.ogg", &["-c:a", "libvorbis"]) else { return };
    let text = d.join("notes.mp3");
    std::fs::write(&text, b"this is not audio at all").unwrap();
    let empty = d.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    // An M4A keeps its index at the end: cut short, nothing can be read.
    let m4a = tone(d, "whole.m4a", &["-c:a", "aac"]).unwrap();
    let truncated = d.join("truncated.m4a");
    let bytes = std::fs::read(&m4a).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // A video without sound.
    let silent = d.join("silent.mp4");
    test_video(&silent, 1, (64, 64), 10, 10).unwrap();
    // A WAV header claiming 5 million samples a second.
    let absurd = d.join("absurd.wav");
    let mut header = alluvium_formats::audio::wav(&[0.0; 64], 1, 8000);
    header[24..28].copy_from_slice(&5_000_000u32.to_le_bytes());
    std::fs::write(&absurd, header).unwrap();
    let missing = d.join("missing.flac");

    let batch = refs(&[&text, &good, &empty, &truncated, &silent, &absurd, &missing]);
    let mut op =
        AudioWindows::new(Arc::new(LocalFiles)).windowing(Windowing { window_ms: 1000, hop_ms: 1000, last: LastWindow::Pad });
    let out = op.process(batch.clone()).unwrap();
    let labels = out.batch.column_by_name("label").unwrap().as_string::<i32>();
    assert!((0..labels.len()).all(|i| labels.value(i).ends_with("good.ogg")));
    assert_eq!(out.batch.num_rows(), 3, "the good file's three windows");
    let why: Vec<(usize, &str)> = out.failures.iter().map(|f| (f.row, f.message.as_str())).collect();
    assert_eq!(why.iter().map(|w| w.0).collect::<Vec<_>>(), [0, 2, 3, 4, 5, 6], "{why:?}");
    let expect = [
        "audio_windows: not a readable audio container",
        "audio_windows: not a readable audio container",
        "audio_windows: not a readable audio container",
        "audio_windows: no audio stream",
        "out of range (1000 to 768000)",
        "cannot open",
    ];
    for ((_, message), part) in why.iter().zip(expect) {
        assert!(message.contains(part), "{message:?} should say {part:?}");
    }
    // Nothing is lost: every input row is windows or a dead letter.
    assert_eq!(1 + out.failures.len(), batch.num_rows());

    // The probe stage says the same, and keeps the good row with its metadata.
    let probed = ProbeAudio::new(Arc::new(LocalFiles)).process(batch.clone());
    let probed = probed.unwrap();
    assert_eq!(probed.batch.num_rows(), 1);
    assert_eq!(probed.failures.len(), 6);
    let audio = probed.batch.column_by_name("audio").unwrap().as_struct();
    assert_eq!(audio.column_by_name("codec").unwrap().as_string::<i32>().value(0), "vorbis");
    assert_eq!(probed.batch.schema().field_with_name("audio").unwrap().extension_type_name(), Some("alluvium.audio"));

    // A time budget too short for anything is a dead letter, not a hang.
    let mut hurried = AudioWindows::new(Arc::new(LocalFiles)).time_budget(Duration::from_nanos(1));
    let out = hurried.process(refs(&[&good])).unwrap();
    assert_eq!(out.batch.num_rows(), 0);
    assert!(out.failures[0].message.contains("time budget"), "{:?}", out.failures[0].message);
}

/// A 3 KB WAV whose header declares 1 sample a second is 25 minutes of audio: resampled to 16 kHz
/// it made 150 ten-second windows (96 MB of tensors) from 3 KB, and a 12 KB one 750 MB. A rate
/// that low is out of range: one dead letter, no windows.
#[test]
fn a_wav_declaring_a_tiny_sample_rate_is_a_dead_letter_not_hundreds_of_windows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one_hz.wav");
    let mut wav = alluvium_formats::audio::wav(&[0.25; 1500], 1, 8000);
    wav[24..28].copy_from_slice(&1u32.to_le_bytes()); // samples per second
    wav[28..32].copy_from_slice(&2u32.to_le_bytes()); // bytes per second
    std::fs::write(&path, &wav).unwrap();
    assert!(wav.len() < 4096);

    let out = AudioWindows::new(Arc::new(LocalFiles)).process(refs(&[&path])).unwrap();
    assert_eq!(out.batch.num_rows(), 0, "no windows from a 3 KB file");
    assert_eq!(out.failures.len(), 1);
    let message = &out.failures[0].message;
    assert!(message.starts_with("audio_windows: ") && message.contains("sample rate of 1 Hz is out of range"), "{message}");
    let probed = probe(Box::new(std::fs::File::open(&path).unwrap()), Duration::from_secs(10));
    assert!(probed.unwrap_err().contains("out of range"));
}

/// `seconds` of a 440 Hz tone at 8 kHz mono, as a WAV written here (no FFmpeg CLI needed).
fn tone_wav(dir: &Path, name: &str, seconds: usize) -> PathBuf {
    let samples: Vec<f32> =
        (0..seconds * 8000).map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin() * 0.5).collect();
    let path = dir.join(name);
    std::fs::write(&path, alluvium_formats::audio::wav(&samples, 1, 8000)).unwrap();
    path
}

/// More windows than `max_outputs_per_input`, or windows worth more than
/// `max_output_bytes_per_input`: the item is a dead letter naming the key and how far it got,
/// never a silently cut one; its windows not yet sent on are dropped, the others are counted.
#[test]
fn items_over_the_fan_out_limits_are_dead_letters_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = tone_wav(dir.path(), "short.wav", 1); // 10 windows of 100 ms
    let long = tone_wav(dir.path(), "long.wav", 30); // 300 windows of 100 ms
    let tenths = Windowing { window_ms: 100, hop_ms: 100, last: LastWindow::Pad };
    let op = || AudioWindows::new(Arc::new(LocalFiles)).windowing(tenths);

    // 100 ms at 16 kHz mono is 6,400 bytes a window.
    let counted = op().max_outputs_per_input(50);
    counted.validate().unwrap();
    let out = counted.clone().process(refs(&[&short, &long])).unwrap();
    assert_eq!(out.batch.num_rows(), 10, "the short file's windows");
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].row, 1);
    let message = &out.failures[0].message;
    assert!(message.starts_with("audio_windows: over max_outputs_per_input = 50"), "{message}");
    assert!(message.contains("stopped at 5.0 s") && message.contains("none of its 50 windows were sent on"), "{message}");
    // Exactly at the limit is fine.
    let out = op().max_outputs_per_input(10).process(refs(&[&short])).unwrap();
    assert_eq!((out.batch.num_rows(), out.failures.len()), (10, 0));

    let out = op().max_output_bytes_per_input(100_000).process(refs(&[&long])).unwrap();
    assert_eq!(out.batch.num_rows(), 0);
    let message = &out.failures[0].message;
    assert!(message.starts_with("audio_windows: over max_output_bytes_per_input = 100000"), "{message}");
    assert!(message.contains("after 15 windows of 96000 bytes"), "{message}");

    // Windows stream out ten at a time: the five batches sent before the limit stay sent, the
    // five windows held back are dropped, and the dead letter says so.
    let pieces = crate::pieces(&mut op().max_outputs_per_input(55).batch_bytes(64_000), refs(&[&long]));
    assert_eq!(pieces.iter().map(|p| p.batch.num_rows()).sum::<usize>(), 50);
    let failures: Vec<_> = pieces.iter().flat_map(|p| p.failures.iter()).collect();
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].message.contains("50 of its 55 windows had already been sent on, the other 5 were dropped"),
        "{}",
        failures[0].message
    );

    // A limit below one window is a config error.
    let e = op().max_output_bytes_per_input(1000).validate().unwrap_err().to_string();
    assert!(e.contains("`max_output_bytes_per_input`") && e.contains("less than one window"), "{e}");
    assert!(op().max_outputs_per_input(0).validate().is_err());
}

/// An M4A whose index is at the front (`+faststart`) cut in half still opens: its packets stop
/// at half the duration its index declares. That is a dead letter saying how far it got, not
/// five seconds of windows passed off as the whole file.
#[test]
fn audio_that_ends_before_its_declared_duration_is_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.m4a");
    let Some(()) = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100:duration=10",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        whole.to_str().unwrap(),
    ]) else {
        return;
    };
    let bytes = std::fs::read(&whole).unwrap();
    let half = dir.path().join("half.m4a");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let op =
        || AudioWindows::new(Arc::new(LocalFiles)).windowing(Windowing { window_ms: 1000, hop_ms: 1000, last: LastWindow::Pad });

    let out = op().process(refs(&[&whole])).unwrap();
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert!(out.batch.num_rows() >= 10);

    let out = op().process(refs(&[&half])).unwrap();
    assert_eq!(out.batch.num_rows(), 0, "its windows are not sent on");
    assert_eq!(out.failures.len(), 1);
    let message = &out.failures[0].message;
    assert!(message.starts_with("audio_windows: the audio stream ended at "), "{message}");
    assert!(message.contains("s of the 10.0 s its container declares"), "{message}");
    // The function says the same.
    let media = Box::new(std::fs::File::open(&half).unwrap());
    let got = windows(
        media,
        Target { sample_rate: 16_000, channels: 1 },
        &Windowing { window_ms: 1000, hop_ms: 1000, last: LastWindow::Pad },
        Duration::from_secs(60),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(got.unwrap_err().contains("ended at"));
}
