//! DecodeImage → Resize → EncodeImage on generated images, and every kind of bad image.

use std::sync::Arc;

use alluvium_core::arrow::array::{Array, ArrayRef, BinaryArray, StringArray, StructArray, UInt32Array};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::types::{DecodedImageType, EncodedImageType};
use alluvium_core::{Operator, Output};
use alluvium_formats::{DecodeImage, EncodeImage, Fit, ImageFormat, Resize};
use image::{GrayImage, ImageEncoder, RgbImage};

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]))
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(img).unwrap();
    out
}

fn png_gray(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let img = GrayImage::new(w, h);
    image::codecs::png::PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, image::ExtendedColorType::L8).unwrap();
    out
}

/// A JPEG with an EXIF APP1 segment saying "rotate 90° clockwise" (orientation 6).
fn jpeg_rotated(img: &RgbImage) -> Vec<u8> {
    let plain = jpeg(img);
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

fn batch(images: Vec<Option<Vec<u8>>>) -> RecordBatch {
    let ids: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..images.len() as u32));
    let bytes: ArrayRef = Arc::new(BinaryArray::from_iter(images));
    let schema = Schema::new(vec![Field::new("id", DataType::UInt32, false), Field::new("bytes", DataType::Binary, true)]);
    RecordBatch::try_new(Arc::new(schema), vec![ids, bytes]).unwrap()
}

fn decoded(out: &Output, col: &str) -> Vec<(Vec<u8>, u32, u32)> {
    let s = out.batch.column_by_name(col).unwrap().as_any().downcast_ref::<StructArray>().unwrap();
    let px = s.column(0).as_any().downcast_ref::<BinaryArray>().unwrap();
    let w = s.column(1).as_any().downcast_ref::<UInt32Array>().unwrap();
    let h = s.column(2).as_any().downcast_ref::<UInt32Array>().unwrap();
    (0..s.len()).map(|i| (px.value(i).to_vec(), w.value(i), h.value(i))).collect()
}

fn u32s(out: &Output, col: &str) -> Vec<u32> {
    out.batch.column_by_name(col).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().values().to_vec()
}

#[test]
fn bad_images_become_dead_letters_with_reasons_and_good_ones_go_on() {
    let good = jpeg(&photo(64, 48));
    let truncated = good[..good.len() / 2].to_vec();
    let mut corrupt = good.clone();
    corrupt[200..400].iter_mut().for_each(|b| *b = 0xFF);
    let bomb = png_gray(5000, 5000); // a few KB on disk, 25 megapixels decoded
    let input = batch(vec![
        Some(good),
        Some(truncated),
        Some(b"hello, I am not an image".to_vec()),
        Some(bomb),
        None,
        Some(corrupt),
        Some(png_gray(10, 10)),
    ]);
    let out = DecodeImage::rgb().max_pixels(10_000_000).process(input).unwrap();
    let rows: Vec<usize> = out.failures.iter().map(|f| f.row).collect();
    let msg = |r: usize| out.failures.iter().find(|f| f.row == r).unwrap().message.clone();
    assert!(rows.contains(&1) && msg(1).contains("truncated"), "{:?}", out.failures);
    assert!(msg(2).contains("unsupported image format"), "{}", msg(2));
    assert!(msg(3).contains("5000×5000 = 25000000 pixels, over max_pixels"), "{}", msg(3));
    assert!(msg(4).contains("null"), "{}", msg(4));
    assert!(msg(5).contains("corrupt"), "{}", msg(5));
    // The id column travels with the good rows; the encoded bytes are dropped.
    let ids = out.batch.column_by_name("id").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().values().to_vec();
    assert!(ids.contains(&0) && ids.contains(&6), "{ids:?}");
    assert_eq!(ids.len() + out.failures.len(), 7, "every row is either out or a dead letter");
    assert!(out.batch.column_by_name("bytes").is_none());
    out.batch.schema().field_with_name("image").unwrap().try_extension_type::<DecodedImageType>().unwrap();
    let imgs = decoded(&out, "image");
    assert_eq!((imgs[0].1, imgs[0].2, imgs[0].0.len()), (64, 48, 64 * 48 * 3));
}

#[test]
fn exif_orientation_is_applied() {
    let out = DecodeImage::rgb().process(batch(vec![Some(jpeg_rotated(&photo(40, 20)))])).unwrap();
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let (_, w, h) = decoded(&out, "image")[0].clone();
    assert_eq!((w, h), (20, 40), "rotated by 90°");
}

#[test]
fn jpegs_decode_at_a_reduced_dct_scale_for_small_targets_and_match_a_full_decode() {
    let src = photo(640, 480);
    let input = || batch(vec![Some(jpeg(&src))]);
    let scaled = DecodeImage::rgb().target(64, 48).process(input()).unwrap();
    let (_, w, h) = decoded(&scaled, "image")[0].clone();
    assert_eq!((w, h), (80, 60), "1/8 scale covers 64×48");
    assert_eq!((u32s(&scaled, "width"), u32s(&scaled, "height")), (vec![640], vec![480]), "original size is reported");

    let full = DecodeImage::rgb().process(input()).unwrap();
    let a = decoded(&Resize::to(64, 48).process(scaled.batch).unwrap(), "image")[0].clone();
    let b = decoded(&Resize::to(64, 48).process(full.batch).unwrap(), "image")[0].clone();
    assert_eq!((a.1, a.2), (64, 48));
    let mean_diff = a.0.iter().zip(&b.0).map(|(x, y)| (*x as i32 - *y as i32).abs() as f64).sum::<f64>() / a.0.len() as f64;
    assert!(mean_diff < 6.0, "DCT-scaled thumbnails look like full-decode thumbnails: mean difference {mean_diff}");
}

#[test]
fn resize_modes_and_encoding() {
    let input = || DecodeImage::rgb().process(batch(vec![Some(jpeg(&photo(640, 480)))])).unwrap().batch;
    let size = |fit: Fit| {
        let (_, w, h) = decoded(&Resize::to(224, 224).fit(fit).process(input()).unwrap(), "image")[0].clone();
        (w, h)
    };
    assert_eq!(size(Fit::Exact), (224, 224));
    assert_eq!(size(Fit::Fit), (224, 168));
    assert_eq!(size(Fit::Fill), (224, 224));

    let resized = Resize::to(224, 224).fit(Fit::Fill).process(input()).unwrap().batch;
    for (enc, name) in [
        (EncodeImage::jpeg(85), "jpeg"),
        (EncodeImage::jpeg(85).format(ImageFormat::Png), "png"),
        (EncodeImage::jpeg(85).format(ImageFormat::WebP), "webp"),
    ] {
        let mut enc = enc;
        let out = enc.process(resized.clone()).unwrap();
        assert!(out.failures.is_empty());
        assert!(out.batch.column_by_name("image").is_none(), "the decoded pixels are dropped");
        let field = out.batch.schema().field_with_name("thumbnail").unwrap().clone();
        field.try_extension_type::<EncodedImageType>().unwrap();
        let s = out.batch.column_by_name("thumbnail").unwrap().as_any().downcast_ref::<StructArray>().unwrap().clone();
        let bytes = s.column(0).as_any().downcast_ref::<BinaryArray>().unwrap().value(0).to_vec();
        assert_eq!(s.column(1).as_any().downcast_ref::<StringArray>().unwrap().value(0), name);
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (224, 224), "{name}");
    }
}

#[test]
fn a_missing_column_is_a_config_error_naming_it() {
    let e = DecodeImage::rgb().column("photo").process(batch(vec![])).unwrap_err();
    assert_eq!(e.kind(), alluvium_core::ErrorKind::Config);
    assert!(e.to_string().contains("`photo`"), "{e}");
}

fn ids(out: &Output) -> Vec<u32> {
    u32s(out, "id")
}

/// Decoded pixels go out in batches of at most `max_batch_bytes`; an image over it alone is a
/// dead letter (before its pixels are allocated); `process` puts the batches back together.
/// Resizing up is bounded the same way.
#[test]
fn decoded_and_resized_images_go_out_in_batches_bounded_by_bytes() {
    // 100×100 is 30,000 bytes of RGB: two fit in 70,000; 200×200 (120,000) fits none.
    let small = || Some(png_gray(100, 100));
    let input = batch(vec![small(), small(), Some(png_gray(200, 200)), small(), None, small(), small()]);
    let mut op = DecodeImage::rgb().max_batch_bytes(70_000);
    let pieces = crate::pieces(&mut op, input.clone());
    assert_eq!(pieces.iter().map(ids).collect::<Vec<_>>(), [vec![0, 1], vec![3, 5], vec![6]]);
    let failures: Vec<_> = pieces.iter().flat_map(|p| p.failures.iter()).collect();
    assert_eq!(failures.iter().map(|f| f.row).collect::<Vec<_>>(), [2, 4]);
    assert!(failures[0].message.contains("200×200: 120000 bytes of RGB decoded, over max_batch_bytes = 70000"), "{failures:?}");

    let out = op.process(input).unwrap();
    assert_eq!(ids(&out), [0, 1, 3, 5, 6]);
    assert_eq!(out.failures.len(), 2);
    assert!(decoded(&out, "image").iter().all(|(px, w, h)| (px.len(), *w, *h) == (30_000, 100, 100)));

    // Up to 150×150 (67,500 bytes): one image a batch.
    let mut resize = Resize::to(150, 150).max_batch_bytes(70_000);
    let sizes: Vec<usize> = crate::pieces(&mut resize, out.batch.clone()).iter().map(|o| o.batch.num_rows()).collect();
    assert_eq!(sizes, [1, 1, 1, 1, 1]);
    // Up to 200×200, over the limit alone: dead letters, not a batch too big to build.
    let over = Resize::to(200, 200).max_batch_bytes(70_000).process(out.batch).unwrap();
    assert_eq!((over.batch.num_rows(), over.failures.len()), (0, 5));
    assert!(over.failures[0].message.contains("over max_batch_bytes = 70000"), "{:?}", over.failures);
}

/// Ten 8900×8900 images (79 megapixels each, under `max_pixels`; a few hundred KB encoded)
/// decode to 2.4 GB of RGB, more than one Arrow `Binary` column holds: `decode_image` panicked
/// with "byte array offset overflow". They now go out in several batches of at most 512 MiB.
/// (Holds about 1 GB at a time.)
#[test]
fn a_batch_of_big_images_goes_out_in_several_batches_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jpg");
    let Some(()) = alluvium_integration::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=black:size=8900x8900",
        "-frames:v",
        "1",
        path.to_str().unwrap(),
    ]) else {
        return;
    };
    let big = std::fs::read(&path).unwrap();
    let mut op = DecodeImage::rgb();
    // (rows, bytes of pixels, dead letters) of each batch, dropped as it comes.
    let mut pieces = Vec::new();
    op.process_into(batch(vec![Some(big); 10]), &mut |out| {
        let (px, _, _) = DecodedImageType::columns(&out.batch, "image", "test").unwrap();
        pieces.push((out.batch.num_rows(), px.values().len(), out.failures.len()));
        Ok(())
    })
    .unwrap();
    assert_eq!(pieces.iter().map(|p| p.0).sum::<usize>(), 10, "{pieces:?}");
    assert!(pieces.iter().all(|p| p.1 <= 512 << 20 && p.2 == 0), "{pieces:?}");
    assert_eq!(pieces.iter().map(|p| p.1).sum::<usize>(), 10 * 8900 * 8900 * 3);
}
