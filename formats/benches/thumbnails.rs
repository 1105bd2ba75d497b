//! Thumbnail throughput per core: `cargo bench -p alluvium-formats --bench thumbnails`.
//!
//! Generates `BENCH_IMAGES` (default 1000) photo-like 640×480 JPEGs, then on one thread:
//! decode → resize to 224×224 (fill) → JPEG encode (quality 85), once with full decodes and once
//! with DCT-scaled decodes (`DecodeImage::target`). Reports images/s and peak RSS. When
//! `ALLUVIUM_BENCH_PYTHON` names a Python with Pillow, the same work runs in Pillow in a tight
//! loop (its JPEG codec is libjpeg-turbo), with and without `draft()` (Pillow's DCT scaling), on
//! the same files.

use std::sync::Arc;
use std::time::Instant;

use alluvium_core::arrow::array::{ArrayRef, BinaryArray};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::Operator;
use alluvium_formats::{DecodeImage, EncodeImage, Fit, Resize};
use image::ImageEncoder;

fn photo(i: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        let v = ((x * 7 + y * 3 + i * 13) % 256) as u8;
        image::Rgb([v, ((x ^ y) % 256) as u8, ((x * y / 97 + i) % 256) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .write_image(img.as_raw(), 640, 480, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn run(images: &[Vec<u8>], scaled: bool) -> f64 {
    let mut decode = if scaled { DecodeImage::rgb().target(224, 224) } else { DecodeImage::rgb() };
    let mut resize = Resize::to(224, 224).fit(Fit::Fill);
    let mut encode = EncodeImage::jpeg(85);
    let schema = Arc::new(Schema::new(vec![Field::new("bytes", DataType::Binary, false)]));
    let start = Instant::now();
    for chunk in images.chunks(32) {
        let col: ArrayRef = Arc::new(BinaryArray::from_iter_values(chunk.iter()));
        let batch = RecordBatch::try_new(schema.clone(), vec![col]).unwrap();
        let out = decode.process(batch).unwrap();
        assert!(out.failures.is_empty());
        let out = resize.process(out.batch).unwrap();
        let out = encode.process(out.batch).unwrap();
        assert_eq!(out.batch.num_rows(), chunk.len());
    }
    images.len() as f64 / start.elapsed().as_secs_f64()
}

const PILLOW: &str = r#"
import sys, glob, time, io
from PIL import Image
files = sorted(glob.glob(sys.argv[1] + "/*.jpg"))
datas = [open(f, "rb").read() for f in files]
for draft in (False, True):
    t = time.perf_counter()
    for d in datas:
        im = Image.open(io.BytesIO(d))
        if draft:
            im.draft("RGB", (224, 224))
        im = im.convert("RGB")
        w, h = im.size
        s = max(224 / w, 224 / h)
        cw, ch = 224 / s, 224 / s
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        im = im.resize((224, 224), Image.LANCZOS, box=box)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    print(len(datas) / (time.perf_counter() - t))
"#;

fn main() {
    let n: u32 = std::env::var("BENCH_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let images: Vec<Vec<u8>> = (0..n).map(photo).collect();
    let full = run(&images, false);
    let scaled = run(&images, true);
    let rss = alluvium_integration::peak_rss_mib();
    println!("\nthumbnails: {n} × 640×480 JPEG → decode → 224×224 fill (Lanczos3) → JPEG q85, one thread");
    println!("{:<44} {:>10}", "run", "images/s");
    println!("{:<44} {:>10.0}", "alluvium, full decode", full);
    println!("{:<44} {:>10.0}", "alluvium, DCT-scaled decode", scaled);
    if let Ok(py) = std::env::var("ALLUVIUM_BENCH_PYTHON") {
        let dir = tempfile::tempdir().unwrap();
        for (i, img) in images.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{i:05}.jpg")), img).unwrap();
        }
        let out = std::process::Command::new(py).args(["-c", PILLOW, dir.path().to_str().unwrap()]).output().unwrap();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            println!("{:<44} {:>10.0}", "Pillow (libjpeg-turbo), full decode", v[0]);
            println!("{:<44} {:>10.0}", "Pillow, draft() (DCT-scaled) decode", v[1]);
        } else {
            println!("Pillow comparison failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    } else {
        println!("(Pillow comparison skipped: set ALLUVIUM_BENCH_PYTHON to a Python with Pillow)");
    }
    println!("peak RSS {rss:.1} MiB");
}
