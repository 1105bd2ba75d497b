//! The CPU path next to FFmpeg's swscale, the GPU kernels next to the CPU path (where a GPU is
//! found; skipped with a message elsewhere), and the `to_tensor` stage on either.

use std::sync::{Arc, Mutex};

use alluvium_core::arrow::array::{AsArray, BinaryArray, RecordBatch, StructArray, UInt32Array};
use alluvium_core::arrow::datatypes::{Float32Type, Schema};
use alluvium_core::types::DecodedImageType;
use alluvium_core::Operator;
use alluvium_gpu::ops::{normalize_chw, resize_rgb, yuv420p_to_rgb, Rgb, Yuv420p};
use alluvium_gpu::{discover, Gpu, Resources, ToTensor};
use alluvium_integration::ffmpeg;

/// One 320×240 frame of FFmpeg's testsrc2 as raw yuv420p, and as FFmpeg's CLI converts it to RGB
/// with `flags` (swscale).
fn frame(dir: &std::path::Path, flags: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (yuv, rgb) = (dir.join("f.yuv"), dir.join("f.rgb"));
    let src = "testsrc2=size=320x240:rate=1";
    ffmpeg(&["-f", "lavfi", "-i", src, "-frames:v", "1", "-pix_fmt", "yuv420p", "-f", "rawvideo", yuv.to_str().unwrap()])?;
    let size = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "320x240", "-i", yuv.to_str().unwrap()];
    let mut args = size.to_vec();
    args.extend(["-sws_flags", flags, "-pix_fmt", "rgb24", "-f", "rawvideo", rgb.to_str().unwrap()]);
    ffmpeg(&args)?;
    Some((std::fs::read(yuv).unwrap(), std::fs::read(rgb).unwrap()))
}

fn planes(yuv: &[u8]) -> Yuv420p<'_> {
    let (w, h) = (320, 240);
    let (y, uv) = yuv.split_at(w * h);
    let (u, v) = uv.split_at(w * h / 4);
    Yuv420p { width: w, height: h, y, y_stride: w, u, v, uv_stride: w / 2 }
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn yuv_conversion_matches_ffmpeg_swscale() {
    let dir = tempfile::tempdir().unwrap();
    // swscale's exact path (nearest chroma, accurate rounding): within 1 of 255.
    let Some((yuv, exact)) = frame(dir.path(), "neighbor+accurate_rnd+full_chroma_int") else { return };
    let ours = yuv420p_to_rgb(&planes(&yuv)).unwrap();
    assert!(max_diff(&ours.pixels, &exact) <= 1, "{}", max_diff(&ours.pixels, &exact));
    // What the CLI does by default (its fast table-driven path): within 3.
    let (_, default) = frame(dir.path(), "bicubic").unwrap();
    assert!(max_diff(&ours.pixels, &default) <= 3);
}

/// The GPU, or why the GPU tests are skipped (printed, so a run shows it).
fn gpu() -> Option<Gpu> {
    let opened = match discover() {
        Ok(devices) => Gpu::open(devices[0].ordinal),
        Err(why) => Err(why.clone()),
    };
    match opened {
        Ok(gpu) => Some(gpu),
        Err(why) => {
            eprintln!("SKIPPED: the GPU half of this test needs a CUDA GPU with NVRTC ({why})");
            None
        }
    }
}

/// The kernels compile with NVRTC, which needs no GPU: `.ci/run` puts NVRTC from PyPI
/// (nvidia-cuda-nvrtc-cu12) on the library path, so CI checks the CUDA source on every run.
#[test]
fn the_kernels_compile_with_nvrtc() {
    let ptx = match alluvium_gpu::kernels::compile() {
        Ok(ptx) => ptx.to_src(),
        Err(why) if std::env::var_os("CI").is_none() => return eprintln!("SKIPPED: {why}"),
        Err(why) => panic!("{why}; .ci/run puts NVRTC on LD_LIBRARY_PATH under CI"),
    };
    for kernel in ["yuv420p_to_rgb", "resize_rgb", "normalize_chw"] {
        assert!(ptx.contains(&format!(".entry {kernel}(")), "{kernel} is in the PTX");
    }
    assert!(!ptx.contains("fma.rn.f32"), "no fused multiply-adds: the CPU path does not fuse them");
}

/// A deterministic RGB picture with edges and gradients.
fn picture(width: usize, height: usize) -> Rgb {
    let pixels = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            [(x * 255 / width) as u8, (y * 255 / height) as u8, if (x / 7 + y / 5) % 2 == 0 { 250 } else { 3 }]
        })
        .collect();
    Rgb { width, height, pixels }
}

#[test]
fn gpu_kernels_give_the_cpu_paths_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(gpu) = gpu() else { return };
    if let Some((yuv, _)) = frame(dir.path(), "neighbor") {
        let (cpu, dev) = (yuv420p_to_rgb(&planes(&yuv)).unwrap(), gpu.yuv420p_to_rgb(&planes(&yuv)).unwrap());
        assert_eq!(cpu, dev, "integer math: identical");
    }
    for (src, (w, h)) in [(picture(640, 480), (224, 224)), (picture(97, 31), (300, 200)), (picture(1, 1), (3, 2))] {
        let (mean, std) = (alluvium_gpu::tensor::IMAGENET_MEAN, alluvium_gpu::tensor::IMAGENET_STD);
        let cpu = normalize_chw(&resize_rgb(&src, w, h), mean, std);
        let dev = gpu.to_tensor(&src, w, h, mean, std).unwrap();
        // Stated tolerance: one byte step (1/255/std) per value; in practice identical.
        let worst = cpu.iter().zip(&dev).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1.0 / 255.0 / 0.224 + 1e-6, "{w}×{h}: differs by {worst}");
    }
}

/// A batch of decoded images: two pictures and a row whose pixels do not match its size.
fn images() -> RecordBatch {
    let (a, b) = (picture(64, 48), picture(30, 90));
    let px = BinaryArray::from_vec(vec![&a.pixels[..], &b.pixels[..], &[1, 2, 3][..]]);
    let s = StructArray::try_new(
        DecodedImageType::fields(),
        vec![Arc::new(px), Arc::new(UInt32Array::from(vec![64, 30, 5])), Arc::new(UInt32Array::from(vec![48, 90, 5]))],
        None,
    )
    .unwrap();
    let field = DecodedImageType::new(3).unwrap().field("image", false);
    RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![Arc::new(s)]).unwrap()
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_stage_runs_where_it_can_says_so_once_and_dead_letters_bad_rows() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cpu = ToTensor::new(32, 24);
    cpu.validate().unwrap();
    let expected = cpu.clone().process(images()).unwrap();
    assert_eq!(expected.batch.num_rows(), 2);
    assert_eq!(expected.failures.len(), 1);
    assert!(expected.failures[0].message.contains("3 bytes are not a 5×5 RGB image"), "{:?}", expected.failures);
    let field = expected.batch.schema().field_with_name("tensor").unwrap().clone();
    assert_eq!(field.extension_type_name(), Some("arrow.fixed_shape_tensor"));
    let t = expected.batch.column_by_name("tensor").unwrap().as_fixed_size_list();
    assert_eq!(t.value_length(), 3 * 24 * 32);
    let first = t.value(0);
    let want = normalize_chw(
        &resize_rgb(&picture(64, 48), 32, 24),
        alluvium_gpu::tensor::IMAGENET_MEAN,
        alluvium_gpu::tensor::IMAGENET_STD,
    );
    assert_eq!(first.as_primitive::<Float32Type>().values().to_vec(), want);

    // Two subtasks asking for a GPU each: with one, the first runs on it; without, both run on
    // the CPU and the stage says so once, with the reason. The numbers are the CPU's either way.
    let asking = ToTensor::new(32, 24).resources(Resources::gpu(1.0));
    let (mut one, mut two) = (asking.clone(), asking.clone());
    let (a, b) = (one.process(images()).unwrap(), two.process(images()).unwrap());
    for out in [&a, &b] {
        let got = out.batch.column_by_name("tensor").unwrap().as_fixed_size_list().value(0);
        let worst = got.as_primitive::<Float32Type>().values().iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1.0 / 255.0 / 0.224 + 1e-6);
        assert_eq!(out.failures.len(), 1);
    }
    let said = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let fallbacks = said.lines().filter(|l| l.contains("asked for a GPU and runs on the CPU instead")).count();
    match (one.on_gpu(), discover()) {
        (true, _) => assert!(!two.on_gpu() && fallbacks == 1, "one GPU each: the second waits on the CPU\n{said}"),
        (false, Err(why)) => {
            assert_eq!(fallbacks, 1, "once for the stage, not per subtask:\n{said}");
            assert!(said.contains(why.as_str()), "the reason is in the line:\n{said}");
        }
        (false, Ok(_)) => assert_eq!(fallbacks, 1, "{said}"),
    }
    let e = ToTensor::new(0, 24).validate().unwrap_err().to_string();
    assert!(e.contains("zero side"), "{e}");
    let e = ToTensor::new(8, 8).resources(Resources::gpu(1.5)).validate().unwrap_err().to_string();
    assert!(e.contains("`gpus = 1.5`"), "{e}");
}
