//! Video probing and frame extraction on videos FFmpeg's CLI makes at test time: every sampling
//! mode, the pixels next to the CLI's own decode, rotation, streaming in pieces, and bad input as
//! dead letters.

use std::path::Path;
use std::sync::Arc;

use alluvium_core::arrow::array::{AsArray, RecordBatch};
use alluvium_core::arrow::datatypes::{Int64Type, UInt64Type};
use alluvium_core::open::LocalFiles;
use alluvium_core::{Operator, Output};
use alluvium_formats::video::{extract, probe, Limits};
use alluvium_formats::{ExtractFrames, FrameSize, ImageFormat, ProbeVideo, Sampling};
use alluvium_integration::{ffmpeg, test_video};

use crate::refs;

/// `(frame_index, pts_ms, keyframe)` of every frame row.
fn frames(out: &Output) -> Vec<(u64, i64, bool)> {
    let b = &out.batch;
    let index = b.column_by_name("frame_index").unwrap().as_primitive::<UInt64Type>();
    let pts = b.column_by_name("pts_ms").unwrap().as_primitive::<Int64Type>();
    let key = b.column_by_name("keyframe").unwrap().as_boolean();
    (0..b.num_rows()).map(|i| (index.value(i), pts.value(i), key.value(i))).collect()
}

fn run(op: ExtractFrames, batch: RecordBatch) -> Output {
    let mut op = op;
    op.validate().unwrap();
    op.process(batch).unwrap()
}

/// Four seconds at 25 fps (frames 40 ms apart), a keyframe every 2 seconds.
fn four_seconds(dir: &Path) -> Option<std::path::PathBuf> {
    let path = dir.join("x.mp4");
    test_video(&path, 4, (320, 240), 25, 50)?;
    Some(path)
}

#[test]
fn a_video_is_probed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = four_seconds(dir.path()) else { return };
    let media = Box::new(std::fs::File::open(&path).unwrap());
    let info = probe(media, &Limits::default()).unwrap();
    assert_eq!((info.codec.as_str(), info.width, info.height, info.rotation), ("h264", 320, 240, 0));
    assert_eq!(info.fps, Some(25.0));
    assert!((3900..=4100).contains(&info.duration_ms.unwrap()), "{info:?}");
    // The stage: a `video` column, and the input's columns kept.
    let mut op = ProbeVideo::new(Arc::new(LocalFiles));
    let out = op.process(refs(&[&path])).unwrap();
    assert!(out.failures.is_empty());
    let video = out.batch.column_by_name("video").unwrap().as_struct();
    assert_eq!(video.column_by_name("codec").unwrap().as_string::<i32>().value(0), "h264");
    assert!(out.batch.column_by_name("label").is_some());
    // Unreadable videos are dead letters with the reason; the good one in the batch is probed.
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, b"not a video").unwrap();
    let missing = dir.path().join("missing.mp4");
    let out = op.process(refs(&[&text, &path, &missing])).unwrap();
    assert_eq!(out.batch.num_rows(), 1);
    let why: Vec<(usize, &str)> = out.failures.iter().map(|f| (f.row, f.message.as_str())).collect();
    assert_eq!(why.iter().map(|w| w.0).collect::<Vec<_>>(), [0, 2], "{why:?}");
    assert!(why[0].1.contains("probe_video: not a readable video container"), "{why:?}");
    assert!(why[1].1.contains("cannot open"), "{why:?}");
}

#[test]
fn every_sampling_mode_picks_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = four_seconds(dir.path()) else { return };
    let batch = refs(&[&path]);
    let op = || ExtractFrames::new(Arc::new(LocalFiles)).size(FrameSize::ShortSide(64));
    let every = frames(&run(op().sampling(Sampling::EveryNth(10)), batch.clone()));
    assert_eq!(every.iter().map(|f| f.0).collect::<Vec<_>>(), (0..100).step_by(10).collect::<Vec<_>>());
    assert_eq!(every[5].1, 2000, "frame 50 is at 2 s");
    let per_second = frames(&run(op().sampling(Sampling::PerSecond(1.0)), batch.clone()));
    assert_eq!(per_second.iter().map(|f| f.1).collect::<Vec<_>>(), [0, 1000, 2000, 3000]);
    let keyframes = frames(&run(op().sampling(Sampling::Keyframes), batch.clone()));
    assert_eq!(keyframes, [(0, 0, true), (50, 2000, true)]);
    let at = frames(&run(op().sampling(Sampling::Timestamps(vec![3010, 500, 3000])), batch.clone()));
    assert_eq!(at.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(), [(13, 520), (75, 3000), (76, 3040)], "after a seek too");
    // Frame rows: the video's other columns, the source reference, the image at its size.
    let out = run(op().sampling(Sampling::Keyframes), batch);
    let b = &out.batch;
    assert_eq!(b.column_by_name("label").unwrap().as_string::<i32>().value(1), path.display().to_string());
    let source = b.column_by_name("source").unwrap().as_struct();
    assert!(source.column_by_name("uri").unwrap().as_string::<i32>().value(0).ends_with("x.mp4"));
    let image = b.column_by_name("image").unwrap().as_struct();
    let (w, h) = (
        image.column_by_name("width").unwrap().as_primitive::<alluvium_core::arrow::datatypes::UInt32Type>(),
        image.column_by_name("height").unwrap().as_primitive::<alluvium_core::arrow::datatypes::UInt32Type>(),
    );
    assert_eq!((w.value(0), h.value(0)), (85, 64), "64 on the short side");
    let jpeg = image.column_by_name("data").unwrap().as_binary::<i32>().value(0);
    let decoded = image::load_from_memory(jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (85, 64));
    assert!(b.column_by_name("ref").is_none(), "the reference column becomes `source`");
}

#[test]
fn scene_changes_are_found_by_their_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenes.mp4");
    let p = path.to_str().unwrap();
    let Some(()) = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:size=160x120:rate=25:duration=1",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=25:duration=1",
        "-f",
        "lavfi",
        "-i",
        "color=c=white:size=160x120:rate=25:duration=1",
        "-filter_complex",
        "[0][1][2]concat=n=3:v=1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-preset",
        "ultrafast",
        p,
    ]) else {
        return;
    };
    let out = run(ExtractFrames::new(Arc::new(LocalFiles)).sampling(Sampling::SceneChanges(0.3)), refs(&[&path]));
    assert_eq!(frames(&out).iter().map(|f| f.1).collect::<Vec<_>>(), [0, 1000, 2000], "one frame per scene");
}

/// The first frame of `video` as FFmpeg's CLI gives it: RGB24, swscale bilinear, autorotated.
fn cli_first_frame(video: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("first.rgb");
    let (video, out) = (video.to_str().unwrap(), raw.to_str().unwrap());
    ffmpeg(&["-i", video, "-frames:v", "1", "-pix_fmt", "rgb24", "-sws_flags", "bilinear", "-f", "rawvideo", out]);
    std::fs::read(&raw).unwrap()
}

/// At full size and lossless, the first frame has the pixels FFmpeg's CLI gives (both convert
/// YUV to RGB with swscale, bilinear), and it is turned upright by the display matrix.
#[test]
fn frames_have_the_pixels_the_ffmpeg_cli_gives_and_are_turned_upright() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = four_seconds(dir.path()) else { return };
    let expected = cli_first_frame(&path, dir.path());
    let mut first = None;
    let got = extract(
        Box::new(std::fs::File::open(&path).unwrap()),
        &Sampling::Timestamps(vec![0]),
        FrameSize::Original,
        &Limits::default(),
        &mut |f| {
            first = Some(f);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(got, Ok(1));
    let first = first.unwrap();
    assert_eq!((first.width, first.height), (320, 240));
    let diff = first.rgb.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b) as u64).max().unwrap();
    assert_eq!(first.rgb.len(), expected.len());
    assert!(diff <= 2, "max channel difference to the CLI's frame: {diff}");
    // A phone-style video: stored landscape, shown portrait. `rotate=90` writes a display matrix
    // that FFmpeg's CLI shows turned a quarter counter-clockwise (270° clockwise); the frame is
    // the CLI's autorotated one.
    let rotated = dir.path().join("rotated.mp4");
    ffmpeg(&["-i", path.to_str().unwrap(), "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated.to_str().unwrap()]);
    let info = probe(Box::new(std::fs::File::open(&rotated).unwrap()), &Limits::default()).unwrap();
    assert_eq!(info.rotation, 270);
    let out = run(
        ExtractFrames::new(Arc::new(LocalFiles)).sampling(Sampling::Keyframes).format(ImageFormat::Png).size(FrameSize::Original),
        refs(&[&rotated]),
    );
    let image = out.batch.column_by_name("image").unwrap().as_struct();
    let png = image::load_from_memory(image.column_by_name("data").unwrap().as_binary::<i32>().value(0)).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (240, 320), "upright");
    let upright = cli_first_frame(&rotated, dir.path());
    assert_eq!(upright.len(), png.as_raw().len());
    let mean = upright.iter().zip(png.as_raw()).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / upright.len() as f64;
    assert!(mean < 2.0, "mean channel difference to the CLI's upright frame: {mean}");
}

/// One video's frames go out in several pieces of `frames_per_batch`, each sent before the next
/// is made.
#[test]
fn a_videos_frames_stream_out_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = four_seconds(dir.path()) else { return };
    let mut op = ExtractFrames::new(Arc::new(LocalFiles))
        .sampling(Sampling::EveryNth(1))
        .size(FrameSize::ShortSide(32))
        .frames_per_batch(30);
    let rows: Vec<usize> = crate::pieces(&mut op, refs(&[&path])).iter().map(|o| o.batch.num_rows()).collect();
    assert_eq!(rows, [30, 30, 30, 10]);
}

/// Not a video, truncated, corrupt, audio only, empty, too large, over the time budget: each a
/// dead letter with its reason; the good video in the same batch is extracted.
#[test]
fn bad_videos_are_dead_letters_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let Some(good) = four_seconds(dir.path()) else { return };
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let text = write("notes.mp4", b"this is not a video at all");
    let truncated = write("truncated.mp4", &bytes[..bytes.len() / 2]);
    let empty = write("empty.mp4", b"");
    let audio = dir.path().join("tone.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", audio.to_str().unwrap()]);
    let missing = dir.path().join("missing.mp4");
    let batch = refs(&[&text, &good, &truncated, &empty, &audio, &missing]);
    let out = run(ExtractFrames::new(Arc::new(LocalFiles)).sampling(Sampling::Keyframes), batch.clone());
    assert_eq!(frames(&out).len(), 2, "the good video's keyframes");
    let why: Vec<(usize, &str)> = out.failures.iter().map(|f| (f.row, f.message.as_str())).collect();
    assert_eq!(why.iter().map(|w| w.0).collect::<Vec<_>>(), [0, 2, 3, 4, 5], "{why:?}");
    assert!(why.iter().all(|(_, m)| m.starts_with("extract_frames: ")), "{why:?}");
    assert!(why[3].1.contains("no video stream"), "{why:?}");
    assert!(why[4].1.contains("cannot open"), "{why:?}");
    // Limits: too many pixels, and a time budget too short for any video.
    let tiny = Limits { max_pixels: 1000, ..Limits::default() };
    let out = run(ExtractFrames::new(Arc::new(LocalFiles)).limits(tiny), refs(&[&good]));
    assert!(out.failures[0].message.contains("over the limit of 1000 pixels"), "{:?}", out.failures);
    let hurried = Limits { time_budget: std::time::Duration::from_nanos(1), ..Limits::default() };
    let out = run(ExtractFrames::new(Arc::new(LocalFiles)).limits(hurried), refs(&[&good]));
    assert!(out.failures[0].message.contains("time budget"), "{:?}", out.failures);
    // A video corrupted in the middle still gives the frames around the damage, never a crash.
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 2000].iter_mut().for_each(|b| *b = 0x5a);
    let corrupt = write("corrupt.mp4", &corrupt);
    let out = run(ExtractFrames::new(Arc::new(LocalFiles)).sampling(Sampling::EveryNth(1)), refs(&[&corrupt]));
    assert!(out.batch.num_rows() + out.failures.len() > 0);
}

/// With keyframes 10 s apart, a seek lands long before its target: the decoder goes forward from
/// there (it used to seek to the same keyframe again and again until the time budget ran out).
#[test]
fn seeks_into_long_gops_decode_forward_to_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long_gop.mp4");
    let Some(()) = test_video(&path, 24, (160, 120), 25, 250) else { return };
    let limits = Limits { time_budget: std::time::Duration::from_secs(20), ..Limits::default() };
    for sampling in [Sampling::Timestamps(vec![15_000, 22_000]), Sampling::PerSecond(1.0 / 7.5)] {
        let mut times = Vec::new();
        let media = Box::new(std::fs::File::open(&path).unwrap());
        let got = extract(media, &sampling, FrameSize::ShortSide(32), &limits, &mut |f| {
            times.push(f.pts_ms);
            Ok(())
        })
        .unwrap();
        let want: Vec<i64> = match sampling {
            Sampling::Timestamps(_) => vec![15_000, 22_000],
            _ => vec![0, 7_520, 15_000, 22_520],
        };
        assert_eq!((got, times), (Ok(want.len() as u64), want), "{sampling:?}");
    }
}

/// A reference's media is its own bytes: a playlist (HLS) among them must not make FFmpeg open the
/// files or URLs it names, which would read past the access policy (local files, internal
/// services). Found by `cargo fuzz run video`, which produced an HLS playlist.
#[test]
fn playlists_cannot_make_ffmpeg_open_other_files_or_urls() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = four_seconds(dir.path()) else { return };
    for entry in [format!("file://{}", path.display()), path.display().to_string()] {
        let playlist = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:4.0,\n{entry}\n#EXT-X-ENDLIST\n"
        );
        let media = || Box::new(std::io::Cursor::new(playlist.clone().into_bytes()));
        let probed = probe(media(), &Limits::default());
        assert!(probed.is_err(), "the playlist was followed to {entry}: {probed:?}");
        let extracted = extract(media(), &Sampling::EveryNth(1), FrameSize::Original, &Limits::default(), &mut |_| Ok(()));
        assert!(matches!(extracted, Ok(Err(_))), "the playlist was followed to {entry}: {extracted:?}");
    }
}

/// More frames than `max_outputs_per_input`, or frames worth more than
/// `max_output_bytes_per_input`: the video is a dead letter naming the key and how far it got,
/// never a silently cut one; its frames not yet sent on are dropped, the others are counted.
#[test]
fn a_video_over_the_fan_out_limits_is_a_dead_letter_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = four_seconds(dir.path()) else { return };
    let op = || ExtractFrames::new(Arc::new(LocalFiles)).sampling(Sampling::EveryNth(1)).size(FrameSize::ShortSide(32));

    // 100 frames; 20 allowed.
    let out = run(op().max_outputs_per_input(20), refs(&[&path]));
    assert_eq!(out.batch.num_rows(), 0, "none of its frames go on");
    assert_eq!(out.failures.len(), 1);
    let message = &out.failures[0].message;
    assert!(message.starts_with("extract_frames: over max_outputs_per_input = 20"), "{message}");
    assert!(message.contains("stopped at 0.8 s") && message.contains("none of its 20 frames were sent on"), "{message}");
    // Exactly at the limit is fine.
    let out = run(op().max_outputs_per_input(100), refs(&[&path]));
    assert_eq!((out.batch.num_rows(), out.failures.len()), (100, 0));

    let out = run(op().max_output_bytes_per_input(2000), refs(&[&path]));
    assert_eq!(out.batch.num_rows(), 0);
    let message = &out.failures[0].message;
    assert!(message.starts_with("extract_frames: over max_output_bytes_per_input = 2000"), "{message}");

    // Frames stream out eight at a time: the two batches sent before the limit stay sent, the
    // four frames held back are dropped, and the dead letter says so.
    let pieces = crate::pieces(&mut op().max_outputs_per_input(20).frames_per_batch(8), refs(&[&path]));
    assert_eq!(pieces.iter().map(|p| p.batch.num_rows()).sum::<usize>(), 16);
    let failures: Vec<_> = pieces.iter().flat_map(|p| p.failures.iter()).collect();
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].message.contains("16 of its 20 frames had already been sent on, the other 4 were dropped"),
        "{}",
        failures[0].message
    );
    assert!(op().max_outputs_per_input(0).validate().is_err());
}

/// A ten-second MP4 with its index at the front (`+faststart`, as every streaming MP4 has it),
/// cut in half: it opens, its index promises 100 frames, and the packets stop at 5 s. It used to
/// give its first five frames and report nothing; now it is a dead letter saying how far it got,
/// and its frames are not sent on.
#[test]
fn a_truncated_mp4_is_a_dead_letter_saying_how_far_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.mp4");
    let Some(()) = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=10:duration=10",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "10",
        "-preset",
        "ultrafast",
        "-movflags",
        "+faststart",
        whole.to_str().unwrap(),
    ]) else {
        return;
    };
    let bytes = std::fs::read(&whole).unwrap();
    let half = dir.path().join("half.mp4");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let op = || ExtractFrames::new(Arc::new(LocalFiles)).size(FrameSize::ShortSide(32));

    // The whole file: a frame a second, nothing to report.
    let out = run(op(), refs(&[&whole]));
    assert_eq!((out.batch.num_rows(), out.failures.len()), (10, 0), "{:?}", out.failures);

    // Half of it, between two good videos: one dead letter, and only the good videos' frames.
    let out = run(op(), refs(&[&whole, &half, &whole]));
    assert_eq!(out.batch.num_rows(), 20);
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].row, 1);
    let message = &out.failures[0].message;
    assert!(message.starts_with("extract_frames: the video stream ended at "), "{message}");
    assert!(message.contains("s of the 10.0 s its container declares"), "{message}");
    assert!(message.contains("none of its") && message.contains("frames were sent on"), "{message}");
    // In keyframe mode too (the packets it skips count towards how far the file goes).
    let out = run(op().sampling(Sampling::Keyframes), refs(&[&half]));
    assert_eq!((out.batch.num_rows(), out.failures.len()), (0, 1));
    // The function says the same.
    let media = Box::new(std::fs::File::open(&half).unwrap());
    let got = extract(media, &Sampling::EveryNth(1), FrameSize::ShortSide(32), &Limits::default(), &mut |_| Ok(())).unwrap();
    assert!(got.unwrap_err().contains("ended at"));

    // Streamed in pieces of 16, the pieces that went on before the end was known stay, and the
    // dead letter counts them.
    let pieces = crate::pieces(&mut op().sampling(Sampling::EveryNth(1)).frames_per_batch(16), refs(&[&half]));
    let rows: usize = pieces.iter().map(|p| p.batch.num_rows()).sum();
    assert!(rows > 0 && rows.is_multiple_of(16), "{rows} frames went on");
    let failures: Vec<_> = pieces.iter().flat_map(|p| p.failures.iter()).collect();
    assert_eq!(failures.len(), 1);
    let message = &failures[0].message;
    assert!(message.contains(&rows.to_string()) && message.contains("had already been sent on"), "{message}");
}
