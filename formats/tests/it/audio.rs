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
    let mut pieces = Vec::new();
    op.process_into(refs(&[&path]), &mut |o| {
        pieces.push(o);
        Ok(())
    })
    .unwrap();
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
        "out of range (1 to 768000)",
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
