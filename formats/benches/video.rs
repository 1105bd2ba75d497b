//! Video decode speed per core: `cargo bench -p alluvium-formats --bench video`.
//!
//! Makes an H.264 (High, B-frames, yuv420p) video with Debian's `ffmpeg`: `BENCH_VIDEO_SECONDS`
//! (default 20) of `testsrc2` with temporal noise at 1280×720, 30 fps, a keyframe every 2 seconds,
//! so the decoder has real work. Then, on one core:
//!
//! * the floor: `ffmpeg -threads 1 -i in.mp4 -f null -` (decode only), best of 3;
//! * ours, full decode: every frame decoded through `extract` (one frame converted: decode speed);
//! * ours, one frame per second to 224 on the short side, JPEG (the example's work);
//! * ours, keyframes only (non-key packets are never decoded).
//!
//! Targets: full decode ≥ 90% of the CLI's rate; keyframes ≥ 10× faster than a full decode. Also
//! reports peak RSS, which stays far below the video's size (frames stream, the file is read in
//! chunks).

use std::time::Instant;

use alluvium_formats::video::{extract, Limits};
use alluvium_formats::{FrameSize, Sampling};

fn ffmpeg(args: &[&str]) -> bool {
    std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Best of three: seconds, and what `extract` returned.
fn best(path: &std::path::Path, sampling: &Sampling, size: FrameSize) -> (f64, u64) {
    let mut times = Vec::new();
    let mut sent = 0;
    for _ in 0..3 {
        let file = Box::new(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).unwrap()));
        let start = Instant::now();
        sent = extract(file, sampling, size, &Limits::default(), &mut |_| Ok(())).unwrap().unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    (times.into_iter().fold(f64::MAX, f64::min), sent)
}

fn main() {
    let seconds: u32 = std::env::var("BENCH_VIDEO_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noisy.mp4");
    let src = format!("testsrc2=size=1280x720:rate=30:duration={seconds},noise=alls=20:allf=t");
    // Outside CI a missing ffmpeg skips (inside, `ffmpeg` panics: the bench is never run there).
    if alluvium_integration::h264(&path, &src, 60, "veryfast").is_none() {
        eprintln!("SKIPPED: the ffmpeg CLI is needed to make the benchmark video");
        return;
    }
    let size_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
    let frames = f64::from(seconds * 30);
    println!("video: {seconds} s, 1280×720, 30 fps, H.264 High with B-frames, 2 s GOP, {size_mib:.1} MiB");

    let mut cli = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        assert!(ffmpeg(&["-threads", "1", "-i", path.to_str().unwrap(), "-f", "null", "-"]));
        cli = cli.min(start.elapsed().as_secs_f64());
    }
    println!("ffmpeg CLI, decode only, 1 thread:   {:>7.1} frames/s", frames / cli);

    let (full, _) = best(&path, &Sampling::EveryNth(u64::MAX), FrameSize::ShortSide(224));
    println!(
        "alluvium, full decode, 1 thread:      {:>7.1} frames/s  ({:.0}% of the CLI; target ≥ 90%)",
        frames / full,
        100.0 * cli / full
    );
    let (per_second, sent) = best(&path, &Sampling::PerSecond(1.0), FrameSize::ShortSide(224));
    println!("alluvium, 1 frame/s → 224 → JPEG:     {:>7.1} video-seconds/s ({sent} frames)", f64::from(seconds) / per_second);
    let (keys, sent) = best(&path, &Sampling::Keyframes, FrameSize::ShortSide(224));
    println!(
        "alluvium, keyframes only → 224 JPEG:  {:>7.1} video-seconds/s ({sent} frames; {:.1}× a full decode; target ≥ 10×)",
        f64::from(seconds) / keys,
        full / keys
    );
    println!("peak RSS: {:.0} MiB", alluvium_integration::peak_rss_mib());
}
