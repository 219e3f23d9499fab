//! Bicubic resizing with Pillow's arithmetic.
//!
//! BLIP-2's checkpoints were trained and are evaluated on images resized by PIL
//! (`Image.resize((S, S), BICUBIC)`), and the number-for-number check against transformers
//! needs the same pixels. The `image` crate's CatmullRom filter is close but not equal: Pillow
//! widens the filter support by the downscale factor (antialiasing), rounds its coefficients to
//! 22-bit fixed point, and rounds to 8 bits between the horizontal and the vertical pass. This
//! module follows those steps (written from the description of Pillow's `Resample.c`
//! algorithm), so the output matches PIL byte for byte.

use image::RgbImage;

/// Fractional bits of the fixed-point filter coefficients (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The bicubic kernel with a = −0.5 and support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index, how many inputs contribute, and their
/// fixed-point weights.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let inv = 1.0 / filter_scale;
        // `as` truncates toward zero, like the C casts this mirrors.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(count) {
            *w = bicubic((x as f64 + xmin as f64 - center + 0.5) * inv);
            total += *w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (dst, &w) in row.iter_mut().zip(&k).take(count) {
            let w = if total != 0.0 { w / total } else { w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if fixed < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

/// Rounds a fixed-point accumulator to a byte, saturating.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over 3-channel rows. `stride_*` step between consecutive samples along
/// the resampled axis; `lines` are the positions along the other axis.
fn resample_rows(src: &RgbImage, out_w: usize) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let c = coefficients(w, out_w);
    let mut out = RgbImage::new(out_w as u32, h as u32);
    let src = src.as_raw();
    let dst: &mut [u8] = out.as_mut();
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + count];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &kw) in k.iter().enumerate() {
                let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                acc[0] += i32::from(p[0]) * kw;
                acc[1] += i32::from(p[1]) * kw;
                acc[2] += i32::from(p[2]) * kw;
            }
            let o = (y * out_w + xx) * 3;
            dst[o] = clip8(acc[0]);
            dst[o + 1] = clip8(acc[1]);
            dst[o + 2] = clip8(acc[2]);
        }
    }
    out
}

fn resample_columns(src: &RgbImage, out_h: usize) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let c = coefficients(h, out_h);
    let mut out = RgbImage::new(w as u32, out_h as u32);
    let src = src.as_raw();
    let dst: &mut [u8] = out.as_mut();
    let mut acc = vec![0i32; w * 3];
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + count];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (i, &kw) in k.iter().enumerate() {
            let row = &src[(ymin + i) * w * 3..(ymin + i + 1) * w * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * kw;
            }
        }
        for (d, &a) in dst[yy * w * 3..(yy + 1) * w * 3].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// Resizes to exactly `width`×`height` (aspect ratio not kept) as
/// `PIL.Image.resize((width, height), Image.BICUBIC)` does: horizontal pass first, then
/// vertical, each skipped when that side keeps its size.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut out = if img.width() != width {
        resample_rows(img, width as usize)
    } else {
        img.clone()
    };
    if out.height() != height {
        out = resample_columns(&out, height as usize);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        assert_eq!(resize_bicubic(&img, 7, 5), img);
    }

    #[test]
    fn constant_image_stays_constant_when_scaled_either_way() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 17, 99]));
        for (w, h) in [(10, 10), (100, 61), (37, 5)] {
            let out = resize_bicubic(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 17, 99]), "{w}x{h}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(317, 56), (31, 56), (4000, 224), (224, 224)] {
            let c = coefficients(i, o);
            for xx in 0..o {
                let s: i64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (s - (1i64 << PRECISION_BITS)).abs() <= c.ksize as i64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn downscaling_widens_the_filter_like_pillow() {
        // Pillow's support grows with the scale factor: 2 × 4 = 8 on each side.
        let c = coefficients(400, 100);
        assert_eq!(c.ksize, 17);
        assert_eq!(c.bounds[50], (194, 16));
    }
}
