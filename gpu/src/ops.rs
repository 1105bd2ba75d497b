//! Frame post-processing on the CPU: the reference every GPU kernel is tested against.
//!
//! | step | function | math |
//! |---|---|---|
//! | pixel format | [`yuv420p_to_rgb`] | BT.601 limited range, 8-bit fixed point, chroma shared by each 2×2 block |
//! | resize | [`resize_rgb`] | bilinear, pixel centres aligned (`(x + 0.5)·s − 0.5`), rounded to nearest |
//! | normalise | [`normalize_chw`] | `(v / 255 − mean[c]) / std[c]`, HWC bytes → CHW `f32` |
//!
//! The CUDA kernels in [`crate::kernels`] do the same operations in the same order in single
//! precision, compiled without fused multiply-add, so the two paths agree bit for bit on every
//! platform tested; the stated tolerance is at most 1 (of 255) per byte and 1e-6 per float.

/// A packed RGB image, `width × height × 3` bytes, row-major: owned (`Rgb`), or borrowed from
/// an Arrow buffer (`Rgb<&[u8]>`) so that stages read pixels where they lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb<P = Vec<u8>> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width × height × 3` bytes.
    pub pixels: P,
}

/// A planar YUV 4:2:0 image (FFmpeg's `yuv420p`): a full-size Y plane, quarter-size U and V.
#[derive(Debug, Clone, Copy)]
pub struct Yuv420p<'a> {
    /// Width in pixels (may be odd: chroma covers `ceil(width / 2)`).
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Luma, `y_stride × height` bytes.
    pub y: &'a [u8],
    /// Bytes from one luma row to the next.
    pub y_stride: usize,
    /// Blue-difference chroma, `uv_stride × ceil(height / 2)` bytes.
    pub u: &'a [u8],
    /// Red-difference chroma, as `u`.
    pub v: &'a [u8],
    /// Bytes from one chroma row to the next.
    pub uv_stride: usize,
}

impl Yuv420p<'_> {
    /// Whether the planes hold the pixels the sizes and strides say.
    pub fn check(&self) -> Result<(), String> {
        let (cw, ch) = (self.width.div_ceil(2), self.height.div_ceil(2));
        let need = |len: usize, stride: usize, w: usize, h: usize| h == 0 || (stride >= w && len >= stride * (h - 1) + w);
        if self.width == 0 || self.height == 0 {
            return Err("the picture is empty".into());
        }
        if !need(self.y.len(), self.y_stride, self.width, self.height)
            || !need(self.u.len(), self.uv_stride, cw, ch)
            || !need(self.v.len(), self.uv_stride, cw, ch)
        {
            return Err(format!("the planes are too small for {}×{} yuv420p", self.width, self.height));
        }
        Ok(())
    }
}

fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// One pixel, BT.601 limited range (what FFmpeg's swscale assumes for untagged SD video).
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let (c, d, e) = (i32::from(y) - 16, i32::from(u) - 128, i32::from(v) - 128);
    [
        clamp_u8((298 * c + 409 * e + 128) >> 8),
        clamp_u8((298 * c - 100 * d - 208 * e + 128) >> 8),
        clamp_u8((298 * c + 516 * d + 128) >> 8),
    ]
}

/// YUV 4:2:0 → packed RGB.
pub fn yuv420p_to_rgb(src: &Yuv420p<'_>) -> Result<Rgb, String> {
    src.check()?;
    let (w, h) = (src.width, src.height);
    let mut pixels = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let c = (y / 2) * src.uv_stride + x / 2;
            let rgb = yuv_to_rgb(src.y[y * src.y_stride + x], src.u[c], src.v[c]);
            pixels[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&rgb);
        }
    }
    Ok(Rgb { width: w, height: h, pixels })
}

/// The source coordinate and weight for output position `i` of `out` along a side of `len`.
fn tap(i: usize, len: usize, out: usize) -> (usize, usize, f32) {
    let scale = len as f32 / out as f32;
    let s = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (s as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, s - i0 as f32)
}

/// Bilinear resize of packed RGB to `width × height`. (No anti-aliasing: for reductions of more
/// than 2×, decode at a reduced scale first, as the image and video stages do.)
pub fn resize_rgb(src: &Rgb<impl AsRef<[u8]>>, width: usize, height: usize) -> Rgb {
    let px = src.pixels.as_ref();
    let mut pixels = vec![0u8; width * height * 3];
    for y in 0..height {
        let (y0, y1, fy) = tap(y, src.height, height);
        for x in 0..width {
            let (x0, x1, fx) = tap(x, src.width, width);
            for c in 0..3 {
                let p = |yy: usize, xx: usize| f32::from(px[(yy * src.width + xx) * 3 + c]);
                let top = (1.0 - fx) * p(y0, x0) + fx * p(y0, x1);
                let bottom = (1.0 - fx) * p(y1, x0) + fx * p(y1, x1);
                let v = (1.0 - fy) * top + fy * bottom;
                pixels[(y * width + x) * 3 + c] = (v + 0.5).floor().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Rgb { width, height, pixels }
}

/// Packed RGB bytes → a `[3, height, width]` tensor, `(v / 255 − mean[c]) / std[c]`.
pub fn normalize_chw(src: &Rgb<impl AsRef<[u8]>>, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = src.width * src.height;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in src.pixels.as_ref().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = (f32::from(px[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_limited_range_corners() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0], "video black");
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255], "video white");
        let red = yuv_to_rgb(81, 90, 240);
        assert!(red[0] > 250 && red[1] < 5 && red[2] < 5, "{red:?}");
    }

    #[test]
    fn resizing_keeps_flat_colour_and_halves_evenly() {
        let flat = Rgb { width: 5, height: 3, pixels: [10u8, 200, 30].repeat(15) };
        assert_eq!(resize_rgb(&flat, 11, 7).pixels, [10u8, 200, 30].repeat(77));
        // 4×1 → 2×1 averages pairs: the centre of output pixel 0 falls between inputs 0 and 1.
        let row = Rgb { width: 4, height: 1, pixels: vec![0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255] };
        assert_eq!(resize_rgb(&row, 2, 1).pixels, vec![50, 50, 50, 228, 228, 228]);
    }

    #[test]
    fn normalising_is_channel_major() {
        let px = Rgb { width: 2, height: 1, pixels: vec![255, 0, 51, 0, 255, 102] };
        let t = normalize_chw(&px, [0.0; 3], [1.0; 3]);
        assert_eq!(t, vec![1.0, 0.0, 0.0, 1.0, 0.2, 0.4]);
        let t = normalize_chw(&px, [0.5; 3], [0.5; 3]);
        assert_eq!(&t[..2], &[1.0, -1.0]);
    }

    #[test]
    fn planes_too_small_are_refused() {
        let y = [0u8; 16];
        let uv = [0u8; 3];
        let src = Yuv420p { width: 4, height: 4, y: &y, y_stride: 4, u: &uv, v: &uv, uv_stride: 2 };
        assert!(yuv420p_to_rgb(&src).unwrap_err().contains("too small"));
    }
}
