//! Audio end to end: the audio_windows example reading audio from a real S3 server into a Lance
//! dataset, exactly once across a SIGKILL, read back with pylance and compared with FFmpeg's CLI.

use std::time::Duration;

use alluvium_integration::{ffmpeg, S3Server};

/// A 65-second recording and the bundled samples in a bucket → 10 s windows at 16 kHz mono →
/// Lance: every window once, in order, after a SIGKILL and a rerun; the samples are the ones
/// FFmpeg's CLI resamples to; the file that is not audio is a dead letter.
#[test]
fn the_audio_windows_example_writes_each_window_once_from_s3() {
    let Some(s3) = S3Server::start() else { return };
    let Some(py) = alluvium_integration::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.flac");
    let src = "sine=frequency=1000:sample_rate=48000:duration=65";
    let Some(()) = ffmpeg(&["-f", "lavfi", "-i", src, "-ac", "2", long.to_str().unwrap()]) else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let samples = root.join("examples/data/audio");
    let tone_cli = dir.path().join("tone.f32");
    let tone = samples.join("tone.flac");
    ffmpeg(&["-i", tone.to_str().unwrap(), "-ar", "16000", "-ac", "1", "-f", "f32le", tone_cli.to_str().unwrap()]).unwrap();
    let bucket = s3.bucket();
    let files = [
        ("audio/long.flac", long.clone()),
        ("audio/tone.flac", tone.clone()),
        ("audio/chirp.mp3", samples.join("chirp.mp3")),
        ("audio/stereo.ogg", samples.join("stereo.ogg")),
        ("audio/broken.wav", samples.join("broken.wav")),
    ];
    crate::put_files(&s3, &bucket, &files);
    let out = dir.path().join("lake");
    let run = || crate::example_on_s3("audio_windows", &format!("s3://{bucket}/audio/"), &out, &s3);
    crate::killed_then_run_twice(run, Duration::from_millis(300));
    let script = r#"
import sys, os, lance, numpy as np
t = lance.dataset(sys.argv[1] + "/audio_windows.lance").to_table()
rows = t.select(["source", "window_index", "start_ms", "duration_ms", "sample_rate"]).to_pylist()
name = lambda r: r["source"]["uri"].rsplit("/", 1)[1]
keys = {(name(r), r["window_index"]) for r in rows}
long = sorted((r["window_index"], r["start_ms"], r["duration_ms"]) for r in rows if name(r) == "long.flac")
print(len(rows), len(keys), sorted({name(r) for r in rows}) == ["chirp.mp3", "long.flac", "stereo.ogg", "tone.flac"])
print(" ".join(f"{i}:{s}:{d}" for i, s, d in long))
print(t.schema.field("audio").type)
tone = [i for i, r in enumerate(rows) if name(r) == "tone.flac"][0]
x = t.column("audio").combine_chunks().storage
window = np.asarray(x[tone].values, dtype=np.float32)
cli = np.fromfile(sys.argv[2], dtype="<f4")
n = min(len(cli), 48000)
print(window.shape[0], float(np.abs(window[:n] - cli[:n]).max()) < 1e-4, float(np.abs(window[48000:]).max()))
sys.stdout.flush(); os._exit(0)
"#;
    let seen = alluvium_integration::python_run(&py, script, &[out.to_str().unwrap(), tone_cli.to_str().unwrap()]);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "11 11 True", "7 + 1 + 2 + 1 windows, each once:\n{seen}");
    assert_eq!(
        lines[1], "0:0:10000 1:10000:10000 2:20000:10000 3:30000:10000 4:40000:10000 5:50000:10000 6:60000:5000",
        "10 s windows back to back, the last one 5 s of audio"
    );
    assert!(lines[2].contains("arrow.fixed_shape_tensor") && lines[2].contains("shape=[1,160000]"), "{seen}");
    assert_eq!(lines[3], "160000 True 0.0", "the tone as the CLI resamples it, then zeros");
    let letters = crate::dead_letters(&out.join("_dead_letters/audio"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(crate::dead_letter_message(&letters, "broken.wav").contains("not a readable audio container"), "{letters:?}");
}
