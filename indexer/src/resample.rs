//! Bicubic resizing with Pillow's arithmetic.
//!
//! BLIP-2's checkpoints were trained and are evaluated on images resized by PIL
//! (`Image.resize((S, S), BICUBIC)`), and the number-for-number check against transformers
//! needs the same pixels. The `image` crate's CatmullRom filter is close but not equal: Pillow
//! widens the filter support by the downscale factor (antialiasing), rounds its coefficients to
//! 22-bit fixed point, and rounds to 8 bits between the two separable passes. This module
//! follows those steps (written from the description of Pillow's `Resample.c` algorithm), so the
//! output matches PIL byte for byte.
//!
//! # Which pass runs first
//!
//! Because the intermediate image is rounded to bytes, the order of the passes changes the
//! result (by up to about 30 levels on noisy input). Matched version: **Pillow 13.0.0** (the one
//! in the reference venv). Up to 12.x Pillow always ran the horizontal pass first; 13.0 has
//! python-pillow/Pillow#9549 ("if height is scaled down significantly more than width, resize
//! vertically first"), which runs the vertical pass first when the height shrinks by more than
//! twice as many pixels as the width does:
//!
//! ```text
//! dh = source height − target height,  dw = source width − target width   (integers)
//! vertical first  ⇔  dh > 0  and  dh > 2·dw
//! ```
//!
//! So a shrinking height with a width that grows or stays always goes vertical first, and e.g.
//! 81×114 → 56×56 (dh 58 > 2·25) goes vertical first while 84×112 → 56×56 (dh 56 = 2·28) does
//! not. Pillow compares the source image's size, not a crop box's (quarry never passes a box).
//! The rule was read from the compiled `ImagingResample` of the 13.0.0 wheel and checked
//! against that Pillow on about 45 000 shapes (`tools/make_resample_fixtures.py --check-rule`).
//! A pass whose side keeps its size is skipped, so with one pass the order cannot matter.
//!
//! The intermediate image differs by order, as in Pillow. Horizontal first resamples only the
//! band of source rows the vertical filter will read (from the first output row's first tap to
//! the last row's last) and shifts the vertical taps to that band; without a crop box the band
//! is every source row, so this saves nothing for quarry and never changes a value. Vertical
//! first resamples every column at full source width into a source-width × target-height
//! image, and the horizontal pass then reads all of its rows.
//!
//! `fixtures/resample/` (written by `tools/make_resample_fixtures.py` with Pillow 13.0.0) holds
//! PIL's outputs for 327 shapes; `indexer/tests/pil_resample.rs` requires a difference of 0 on
//! all of them.

use std::ops::Range;

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

impl Coefficients {
    /// The source indices the taps of all outputs touch, from the first output's first tap to
    /// the last output's last (taps move forward with the output index).
    fn used_range(&self) -> Range<usize> {
        match (self.bounds.first(), self.bounds.last()) {
            (Some(&(first, _)), Some(&(last, count))) => first..last + count,
            _ => 0..0,
        }
    }

    /// The taps of output `index`: the first source index and the fixed-point weights.
    fn taps(&self, index: usize) -> (usize, &[i32]) {
        let (start, count) = self.bounds[index];
        let row = index * self.ksize;
        (start, &self.weights[row..row + count])
    }
}

/// Rounds a fixed-point accumulator to a byte, saturating.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which separable pass runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassOrder {
    HorizontalFirst,
    VerticalFirst,
}

/// Pillow 13's choice (see the module docs): vertical first when the height shrinks, and by
/// more than twice as many pixels as the width.
fn pass_order(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> PassOrder {
    let dh = i64::from(in_h) - i64::from(out_h);
    let dw = i64::from(in_w) - i64::from(out_w);
    if dh > 0 && dh > 2 * dw {
        PassOrder::VerticalFirst
    } else {
        PassOrder::HorizontalFirst
    }
}

/// Packed RGB rows: `width` pixels per row, `rows` rows.
struct Plane {
    width: usize,
    rows: usize,
    data: Vec<u8>,
}

/// Horizontal pass over source rows `rows` of `src` (packed RGB, `src_w` wide): one output row
/// per source row in the range, `c.bounds.len()` pixels wide.
fn resample_horizontal(src: &[u8], src_w: usize, rows: Range<usize>, c: &Coefficients) -> Plane {
    let out_w = c.bounds.len();
    let mut data = vec![0u8; rows.len() * out_w * 3];
    for (out_row, y) in data.chunks_exact_mut(out_w * 3).zip(rows.clone()) {
        let row = &src[y * src_w * 3..(y + 1) * src_w * 3];
        for (xx, dst) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, k) = c.taps(xx);
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (p, &kw) in row[xmin * 3..].chunks_exact(3).zip(k) {
                acc[0] += i32::from(p[0]) * kw;
                acc[1] += i32::from(p[1]) * kw;
                acc[2] += i32::from(p[2]) * kw;
            }
            dst[0] = clip8(acc[0]);
            dst[1] = clip8(acc[1]);
            dst[2] = clip8(acc[2]);
        }
    }
    Plane {
        width: out_w,
        rows: rows.len(),
        data,
    }
}

/// Vertical pass: `src` holds source rows `first_row..` (packed RGB, `width` wide), so the taps
/// of `c`, which count from source row 0, are shifted down by `first_row`.
fn resample_vertical(src: &[u8], width: usize, first_row: usize, c: &Coefficients) -> Plane {
    let out_h = c.bounds.len();
    let line = width * 3;
    let mut data = vec![0u8; out_h * line];
    let mut acc = vec![0i32; line];
    for (yy, out_row) in data.chunks_exact_mut(line).enumerate() {
        let (ymin, k) = c.taps(yy);
        let ymin = ymin - first_row;
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (i, &kw) in k.iter().enumerate() {
            let row = &src[(ymin + i) * line..(ymin + i + 1) * line];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * kw;
            }
        }
        for (d, &a) in out_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    Plane {
        width,
        rows: out_h,
        data,
    }
}

/// Resizes to exactly `width`×`height` (aspect ratio not kept) as Pillow 13.0's
/// `PIL.Image.resize((width, height), Image.BICUBIC)` does, byte for byte: the pass order
/// follows Pillow's rule (module docs), and a pass whose side keeps its size is skipped.
///
/// A zero `width` or `height` gives an empty image (Pillow refuses it; there is nothing to
/// compute).
///
/// # Panics
///
/// If `img` has no pixels while the target does: there is nothing to sample from. Decoded
/// images are never empty.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    assert!(
        in_w > 0 && in_h > 0,
        "resize_bicubic: cannot resize an empty {in_w}x{in_h} image to {width}x{height}"
    );
    let need_horizontal = in_w != width;
    let need_vertical = in_h != height;
    if !need_horizontal && !need_vertical {
        return img.clone();
    }
    let src = img.as_raw();
    let (w, h) = (in_w as usize, in_h as usize);
    let horizontal = need_horizontal.then(|| coefficients(w, width as usize));
    let vertical = need_vertical.then(|| coefficients(h, height as usize));
    let out = match (horizontal, vertical) {
        (Some(hc), None) => resample_horizontal(src, w, 0..h, &hc),
        (None, Some(vc)) => resample_vertical(src, w, 0, &vc),
        (Some(hc), Some(vc)) => match pass_order(in_w, in_h, width, height) {
            PassOrder::HorizontalFirst => {
                let band = vc.used_range();
                let first_row = band.start;
                let tmp = resample_horizontal(src, w, band, &hc);
                resample_vertical(&tmp.data, tmp.width, first_row, &vc)
            }
            PassOrder::VerticalFirst => {
                let tmp = resample_vertical(src, w, 0, &vc);
                resample_horizontal(&tmp.data, tmp.width, 0..tmp.rows, &hc)
            }
        },
        (None, None) => unreachable!("the same-size case returned above"),
    };
    debug_assert_eq!((out.width, out.rows), (width as usize, height as usize));
    RgbImage::from_raw(width, height, out.data).expect("pass output has the target size")
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

    #[test]
    fn pass_order_follows_pillow_13_rule_at_its_boundaries() {
        use PassOrder::{HorizontalFirst as H, VerticalFirst as V};
        // (in_w, in_h, out_w, out_h, order): dh = 2 dw stays horizontal, one more goes vertical.
        for (iw, ih, ow, oh, want) in [
            (70, 84, 56, 56, H),
            (70, 85, 56, 56, V),
            (81, 114, 56, 56, V),
            (84, 112, 56, 56, H),
            (40, 57, 56, 56, V),  // width grows, height shrinks
            (40, 30, 56, 56, H),  // both grow
            (56, 100, 56, 56, V), // width kept
            (100, 56, 56, 56, H), // height kept
            (333, 500, 224, 224, V),
            (375, 500, 224, 224, H),
        ] {
            assert_eq!(pass_order(iw, ih, ow, oh), want, "{iw}x{ih} -> {ow}x{oh}");
        }
    }

    #[test]
    fn pass_order_agrees_with_the_order_pillow_was_seen_to_use() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/resample/cases.json"
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut checked = 0;
        for c in manifest["cases"].as_array().unwrap() {
            let n = |v: &serde_json::Value| v.as_u64().unwrap() as u32;
            let (iw, ih, ow, oh) = (
                n(&c["in"][0]),
                n(&c["in"][1]),
                n(&c["out"][0]),
                n(&c["out"][1]),
            );
            let want = match c["pil_order"].as_str().unwrap() {
                "vertical_first" => PassOrder::VerticalFirst,
                "horizontal_first" => PassOrder::HorizontalFirst,
                _ => continue, // one pass, or both orders give the same bytes
            };
            assert_eq!(pass_order(iw, ih, ow, oh), want, "{iw}x{ih} -> {ow}x{oh}");
            checked += 1;
        }
        assert!(checked >= 150, "only {checked} shapes with a visible order");
    }

    #[test]
    fn horizontal_first_band_covers_the_rows_the_vertical_taps_read() {
        // Without a crop box the first output's taps start at row 0 and the last output's end
        // at the last row, whatever the scale: the band is the whole source height.
        for (i, o) in [(400, 100), (3, 10), (317, 56), (1, 5), (5, 1), (1000, 3)] {
            assert_eq!(coefficients(i, o).used_range(), 0..i, "{i} -> {o}");
        }
        // And no output's taps leave the band.
        let c = coefficients(317, 56);
        let band = c.used_range();
        for yy in 0..56 {
            let (start, k) = c.taps(yy);
            assert!(
                band.start <= start && start + k.len() <= band.end,
                "output {yy}"
            );
        }
    }

    #[test]
    fn zero_sized_target_gives_an_empty_image() {
        let img = RgbImage::from_pixel(5, 4, image::Rgb([1, 2, 3]));
        assert_eq!(resize_bicubic(&img, 0, 7).dimensions(), (0, 7));
        assert_eq!(resize_bicubic(&img, 3, 0).dimensions(), (3, 0));
    }
}
