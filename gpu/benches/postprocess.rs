//! Frame post-processing speed: `cargo bench -p alluvium-gpu --bench postprocess`.
//!
//! On 1280×720 frames (a deterministic picture with edges and gradients):
//!
//! * yuv420p → RGB, frames/s, on one CPU core and, where a GPU is found, on the GPU;
//! * RGB → resize to 224×224 → normalise to a Float32 `[3, 224, 224]` tensor, frames/s, the same.
//!
//! The GPU figures include the copies to and from the device (what a stage pays per frame), and
//! the speed-up over one core is printed. Without a GPU the GPU rows say why they are missing.

use std::time::Instant;

use alluvium_gpu::ops::{normalize_chw, resize_rgb, yuv420p_to_rgb, Rgb, Yuv420p};
use alluvium_gpu::tensor::{IMAGENET_MEAN, IMAGENET_STD};
use alluvium_gpu::{discover, Gpu};

const W: usize = 1280;
const H: usize = 720;

/// Frames per second of `f` over at least `min_secs` (after one warm-up call).
fn rate(min_secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed().as_secs_f64() < min_secs || n < 3 {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let y: Vec<u8> = (0..W * H).map(|i| (16 + (i % W) * 219 / W) as u8).collect();
    let u: Vec<u8> = (0..W * H / 4).map(|i| (i % 251) as u8).collect();
    let v: Vec<u8> = (0..W * H / 4).map(|i| (255 - i % 241) as u8).collect();
    let yuv = Yuv420p { width: W, height: H, y: &y, y_stride: W, u: &u, v: &v, uv_stride: W / 2 };
    let rgb: Rgb = yuv420p_to_rgb(&yuv).unwrap();
    let secs = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);

    println!("frame post-processing, {W}×{H} frames");
    let cpu_yuv = rate(secs, || drop(yuv420p_to_rgb(&yuv).unwrap()));
    let cpu_tensor = rate(secs, || drop(normalize_chw(&resize_rgb(&rgb, 224, 224), IMAGENET_MEAN, IMAGENET_STD)));
    println!("  cpu (1 core)  yuv420p → rgb          {cpu_yuv:>9.1} frames/s");
    println!("  cpu (1 core)  rgb → 224² tensor       {cpu_tensor:>9.1} frames/s");
    let gpu = match discover() {
        Ok(devices) => Gpu::open(devices[0].ordinal).map(|g| (g, devices[0].name.clone())),
        Err(why) => Err(why.clone()),
    };
    match gpu {
        Ok((gpu, name)) => {
            let g_yuv = rate(secs, || drop(gpu.yuv420p_to_rgb(&yuv).unwrap()));
            let g_tensor = rate(secs, || drop(gpu.to_tensor(&rgb, 224, 224, IMAGENET_MEAN, IMAGENET_STD).unwrap()));
            println!("  gpu ({name})  yuv420p → rgb  {g_yuv:>9.1} frames/s  ({:.1}× one core)", g_yuv / cpu_yuv);
            println!("  gpu ({name})  rgb → 224² tensor {g_tensor:>9.1} frames/s  ({:.1}× one core)", g_tensor / cpu_tensor);
        }
        Err(why) => println!("  gpu           not measured: {why}"),
    }
}
