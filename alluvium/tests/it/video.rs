//! Video end to end: the videos_to_frames example reading videos from a real S3 server into a
//! Lance dataset, exactly once across a SIGKILL (read back with pylance); and the ranged reader
//! under frame extraction reading only the parts of an object a seek needs.

use std::time::Duration;

use alluvium::formats::video::{extract, Limits};
use alluvium::formats::{FrameSize, Sampling};
use alluvium_integration::{test_video, S3Server};
use object_store::{ObjectStoreExt, PutPayload};

use crate::registry;

/// Videos in a bucket (a 40-second one, the bundled samples and a truncated one) → one frame per
/// second → Lance: every frame once, in order, after a SIGKILL and a rerun; the truncated video
/// is a dead letter.
#[test]
fn the_videos_to_frames_example_writes_each_frame_once_from_s3() {
    let Some(s3) = S3Server::start() else { return };
    let Some(py) = alluvium_integration::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.mp4");
    let Some(()) = test_video(&long, 40, (640, 360), 25, 50) else { return };
    let bucket = s3.bucket();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples/data/videos");
    let files = [
        ("videos/long.mp4", long.clone()),
        ("videos/testsrc.mp4", samples.join("testsrc.mp4")),
        ("videos/portrait.mp4", samples.join("portrait.mp4")),
        ("videos/truncated.mp4", samples.join("truncated.mp4")),
    ];
    crate::put_files(&s3, &bucket, &files);
    let out = dir.path().join("lake");
    let run = || crate::example_on_s3("videos_to_frames", &format!("s3://{bucket}/videos/"), &out, &s3);
    crate::killed_then_run_twice(run, Duration::from_millis(700));
    let script = r#"
import sys, os, io, lance
t = lance.dataset(sys.argv[1] + "/frames.lance").to_table()
rows = t.to_pylist()
keys = {(r["source"]["uri"].rsplit("/", 1)[1], r["frame_index"]) for r in rows}
long = sorted((r["frame_index"], r["pts_ms"], r["keyframe"]) for r in rows if r["source"]["uri"].endswith("long.mp4"))
img = [r["image"] for r in rows if r["source"]["uri"].endswith("long.mp4")][0]
print(len(rows), len(keys))
print(" ".join(f"{i}:{p}" for i, p, _ in long[:3]), sum(1 for _ in long), all(p == i * 40 for i, p, _ in long))
print(img["format"], img["width"], img["height"], img["data"][:2].hex())
sys.stdout.flush(); os._exit(0)
"#;
    let seen = alluvium_integration::python_run(&py, script, &[out.to_str().unwrap()]);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "47 47", "40 + 4 + 3 frames, each once");
    assert_eq!(lines[1], "0:0 25:1000 50:2000 40 True", "one per second, at the frame's index and time");
    assert_eq!(lines[2], "jpeg 398 224 ffd8", "224 on the short side, a JPEG");
    let letters = crate::dead_letters(&out.join("_dead_letters/frames"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(crate::dead_letter_message(&letters, "truncated.mp4").contains("not a readable video container"), "{letters:?}");
}

/// Frames at a few times of a video in S3 are read with ranged GETs around them: far less than
/// the object, and never more than one chunk held.
#[test]
fn frames_at_timestamps_read_only_the_ranges_they_need() {
    let Some(s3) = S3Server::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.mp4");
    // Moov first (faststart), as streaming services store video.
    let Some(()) = test_video(&long, 60, (640, 360), 25, 50) else { return };
    let fast = dir.path().join("fast.mp4");
    alluvium_integration::ffmpeg(&[
        "-i",
        long.to_str().unwrap(),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        fast.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&fast).unwrap();
    let bucket = s3.bucket();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = registry(&s3);
    let uri = format!("s3://{bucket}/v/long.mp4");
    rt.block_on(async {
        let (store, path) = reg.resolve(&uri).await.unwrap().unwrap();
        store.put(&path, PutPayload::from(bytes.clone())).await.unwrap();
    });
    // The reader blocks on the runtime for each range (as on the blocking pool in a pipeline).
    let _inside = rt.enter();
    /// Shares what the reader fetched, as it goes.
    struct Counting(alluvium::object::RangedReader, std::sync::Arc<std::sync::atomic::AtomicU64>);
    impl std::io::Read for Counting {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(b)?;
            self.1.store(self.0.fetched(), std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }
    impl std::io::Seek for Counting {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            self.0.seek(to)
        }
    }
    // At three times, and one frame every 20 seconds: both seek between the frames they keep.
    for (sampling, want) in [
        (Sampling::Timestamps(vec![1000, 30_000, 58_000]), vec![1000, 30_000, 58_000]),
        (Sampling::PerSecond(0.05), vec![0, 20_000, 40_000]),
    ] {
        let reader = reg.open_ranged(&alluvium::core::types::ObjectRef::new(uri.clone())).unwrap().chunk(64 * 1024);
        let fetched = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut times = Vec::new();
        let got = extract(
            Box::new(Counting(reader, fetched.clone())),
            &sampling,
            FrameSize::ShortSide(64),
            &Limits::default(),
            &mut |f| {
                times.push(f.pts_ms);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, Ok(want.len() as u64), "{sampling:?}");
        assert_eq!(times, want);
        let read = fetched.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read * 3 < bytes.len() as u64, "{sampling:?}: read {read} of {} bytes", bytes.len());
    }
}
