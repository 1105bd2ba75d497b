//! The fuzz targets' bodies, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`) and by the
//! regression test that replays `fuzz/regressions/` and `fuzz/seeds/` on every `cargo test`
//! (`alluvium/tests/it/fuzz.rs`), so every input that once crashed stays fixed.
//!
//! Each body states the contract it checks, beyond "no panic, no hang, no crash": bad media are
//! dead letters (a row failure or `Ok(Err(reason))`), never a stage error; a parsed manifest
//! writes back to itself; a job file either parses or gives a config error.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use alluvium::core::arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use alluvium::core::arrow::datatypes::{DataType, Field, Schema};
use alluvium::core::Operator;
use alluvium::formats::{DecodeImage, FrameSize, LastWindow, Resize, Sampling, Target, Windowing};

/// A target's body.
pub type Body = fn(&[u8]);

/// The targets by name, as the fuzz binaries and `fuzz/regressions/NAME/` call them.
pub const TARGETS: &[(&str, Body)] = &[
    ("image", image),
    ("video", video),
    ("audio", audio),
    ("object_ref", object_ref),
    ("manifest", manifest),
    ("job_file", job_file),
];

fn one_row(column: &str, data: &[u8]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Binary, true)]));
    RecordBatch::try_new(schema, vec![Arc::new(BinaryArray::from_iter_values([data])) as ArrayRef]).expect("one row")
}

/// Image bytes through `decode_image` (full and DCT-scaled, with a pixel limit) and `resize`:
/// one row out or one row failure, never a stage error.
pub fn image(data: &[u8]) {
    for decode in [DecodeImage::rgb().max_pixels(1 << 22), DecodeImage::rgb().max_pixels(1 << 22).target(16, 16)] {
        let mut decode = decode.column("bytes");
        let out = decode.process(one_row("bytes", data)).expect("bad image bytes are a row failure, not a stage error");
        assert_eq!(out.batch.num_rows() + out.failures.len(), 1, "a row must come out or be a dead letter");
        if out.batch.num_rows() == 1 {
            let out = Resize::to(8, 8).process(out.batch).expect("resizing a decoded image");
            assert_eq!(out.batch.num_rows() + out.failures.len(), 1);
        }
    }
}

fn media(data: &[u8]) -> Box<dyn alluvium::core::ReadSeek> {
    Box::new(Cursor::new(data.to_vec()))
}

/// Video bytes through probe and frame extraction (every frame, small): an answer or a reason,
/// within the time budget.
pub fn video(data: &[u8]) {
    use alluvium::formats::video::{extract, probe, Limits};
    let limits = Limits { max_pixels: 1 << 22, time_budget: Duration::from_secs(5), threads: 1 };
    let _ = probe(media(data), &limits);
    let mut frames = 0u64;
    let emitted = extract(media(data), &Sampling::EveryNth(1), FrameSize::ShortSide(16), &limits, &mut |f| {
        assert_eq!(f.rgb.len(), f.width as usize * f.height as usize * 3, "a frame's pixels match its size");
        frames += 1;
        Ok(())
    })
    .expect("emitting never fails here");
    if let Ok(n) = emitted {
        assert_eq!(n, frames, "extract counts the frames it emitted");
    }
}

/// Audio bytes through probe and 100 ms windows at 8 kHz mono: an answer or a reason.
pub fn audio(data: &[u8]) {
    use alluvium::formats::audio::{probe, windows};
    let budget = Duration::from_secs(5);
    let _ = probe(media(data), budget);
    let target = Target { sample_rate: 8000, channels: 1 };
    let windowing = Windowing { window_ms: 100, hop_ms: 100, last: LastWindow::Pad };
    let _ = windows(media(data), target, &windowing, budget, &mut |w| {
        assert_eq!(w.samples.len(), 800, "a padded window has the window's samples");
        Ok(())
    })
    .expect("emitting never fails here");
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

/// A string as an object's URI: the registry resolves it (access policy first: only one local
/// root, no HTTP hosts, so nothing leaves the machine) or refuses it; a checkpoint or table
/// location parses or is a config error; an ObjectRef column round-trips it.
pub fn object_ref(data: &[u8]) {
    let Ok(uri) = std::str::from_utf8(data) else { return };
    let config = alluvium::object::StoreConfig {
        access: alluvium::object::AccessPolicy::default().allow_file_root("/nonexistent/alluvium-fuzz"),
        ..Default::default()
    };
    let registry = alluvium::object::ObjectStoreRegistry::new(config);
    let _ = runtime().block_on(registry.resolve(uri));
    if let Err(e) = alluvium::core::store::Location::parse(uri) {
        assert_eq!(e.kind(), alluvium::ErrorKind::Config, "a bad location is a config error: {e}");
    }
    let r = alluvium::core::types::ObjectRef::new(uri).range(1, 2).etag(uri);
    let mut b = alluvium::core::types::ObjectRefBuilder::new();
    b.append(&r);
    let array: ArrayRef = Arc::new(b.finish());
    let refs = alluvium::core::types::ObjectRefArray::try_new(&array).expect("our own ObjectRef column");
    assert_eq!(refs.get(0), Some(r));
}

/// Bytes as a checkpoint manifest or assignment record: parsed or refused with a checkpoint
/// error; what parses writes back to the same value.
pub fn manifest(data: &[u8]) {
    use alluvium::core::checkpoint::{parse_assignment, parse_manifest};
    match parse_manifest(data) {
        Ok(m) => {
            let again = parse_manifest(&serde_json::to_vec(&m).expect("a manifest serializes")).expect("written back");
            assert_eq!(again, m);
        }
        Err(e) => assert_eq!(e.kind(), alluvium::ErrorKind::Checkpoint, "{e}"),
    }
    if let Err(e) = parse_assignment(data) {
        assert_eq!(e.kind(), alluvium::ErrorKind::Checkpoint, "{e}");
    }
}

/// A job file (and, after a line `--set`, one override per line): parsed, or a config error
/// that says where. Environment variables are read from a fixed map, so runs repeat.
pub fn job_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (job, overrides) = text.split_once("\n--set\n").unwrap_or((text, ""));
    let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
    let env = |name: &str| match name {
        "ALLUVIUM_OUTPUT" => Some("/tmp/alluvium-fuzz".to_string()),
        "ALLUVIUM_INPUT" => Some("/tmp/alluvium-fuzz-in".to_string()),
        _ => None,
    };
    if let Err(e) = alluvium::job::JobFile::parse_with_env(job, &overrides, env) {
        assert_eq!(e.kind(), alluvium::ErrorKind::Config, "a bad job file is a config error: {e}");
    }
}
