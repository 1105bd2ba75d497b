//! The hostile media corpus (`fuzz/hostile/media/`), replayed through the stages with their
//! default settings: each file is what once stopped or flooded a job (a batch of huge images, a
//! WAV declaring 1 Hz, a truncated MP4, a header declaring ten gigapixels). Every one must come
//! out as rows within bounds or as a dead letter saying why; a file added to the corpus without an
//! expectation here fails the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use alluvium_core::arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::open::LocalFiles;
use alluvium_core::types::DecodedImageType;
use alluvium_core::{Operator, Output};
use alluvium_formats::{AudioWindows, DecodeImage, ExtractFrames};

use crate::refs;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/hostile/media")
}

/// `copies` rows of `path`'s bytes in a `bytes` column.
fn bytes(path: &Path, copies: usize) -> RecordBatch {
    let data = std::fs::read(path).unwrap();
    let col: ArrayRef = Arc::new(BinaryArray::from_iter_values(std::iter::repeat_n(&data, copies)));
    RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("bytes", DataType::Binary, false)])), vec![col]).unwrap()
}

/// Every piece `op` emits for `batch`: (rows, bytes of the `image` column or 0, dead-letter messages).
fn pieces(mut op: impl Operator, batch: RecordBatch) -> Vec<(usize, usize, Vec<String>)> {
    let summary = |o: &Output| {
        let px = DecodedImageType::columns(&o.batch, "image", "test").map(|(p, _, _)| p.values().len()).unwrap_or(0);
        (o.batch.num_rows(), px, o.failures.iter().map(|f| f.message.clone()).collect())
    };
    crate::pieces(&mut op, batch).iter().map(summary).collect()
}

/// One dead letter and no rows, its message containing `says`.
fn dead_letter(pieces: &[(usize, usize, Vec<String>)], file: &str, says: &str) {
    let rows: usize = pieces.iter().map(|p| p.0).sum();
    let letters: Vec<&String> = pieces.iter().flat_map(|p| &p.2).collect();
    assert_eq!((rows, letters.len()), (0, 1), "{file}: {pieces:?}");
    assert!(letters[0].contains(says), "{file}: expected `{says}` in {}", letters[0]);
}

#[test]
fn every_hostile_media_file_is_rows_within_bounds_or_a_dead_letter() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        match name.as_str() {
            // A 3 KB WAV declaring 1 sample a second: 1,500 s to resample, 16,000× its bytes.
            "one-hz.wav" => {
                dead_letter(&pieces(AudioWindows::new(Arc::new(LocalFiles)), refs(&[&path])), &name, "sample rate of 1 Hz")
            }
            // Half of a faststart MP4: its index promises 6 s; the stream ends at about 3.
            "truncated.mp4" => {
                dead_letter(&pieces(ExtractFrames::new(Arc::new(LocalFiles)), refs(&[&path])), &name, "the video stream ended at")
            }
            // 68 bytes declaring 100,000 × 100,000 pixels: refused before anything is allocated.
            "huge-header.png" => dead_letter(&pieces(DecodeImage::rgb(), bytes(&path, 1)), &name, "over max_pixels"),
            // 300 KB of zeros that decode to 237 MB of RGB each: three in one batch are more than
            // 512 MiB, so they go out in two batches or more (ten once panicked past 2 GiB).
            "zeros-8900.png" => {
                let p = pieces(DecodeImage::rgb(), bytes(&path, 3));
                assert!(p.len() >= 2, "{name}: {:?}", p.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>());
                assert!(p.iter().all(|p| p.1 <= 512 << 20 && p.2.is_empty()), "{name}: {p:?}");
                assert_eq!(p.iter().map(|p| p.0).sum::<usize>(), 3, "{name}");
            }
            other => panic!("fuzz/hostile/media/{other} has no expectation in formats/tests/it/hostile.rs"),
        }
        seen.push(name);
    }
    assert_eq!(seen.len(), 4, "the corpus holds the four files: {seen:?}");
}
