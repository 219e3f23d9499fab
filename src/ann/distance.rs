//! Distances and vector arithmetic for the ANN index.
//!
//! Why not hnsw_rs's own `DistDot`: it asserts `dot <= 1`, and the dot of two f32-normalised
//! vectors routinely comes out a few ulps above 1, so it panics on exactly the data BLIP-2
//! produces (see `rust-stack.md` §4). [`DotF16`] computes `(1 - dot).max(0)` instead.
//!
//! Why f16 in the graph: the graph only has to *find* candidates; the final scores are recomputed
//! exactly in f32 from the owner store (see `index.rs`). Storing graph points as f16 halves the
//! largest part of the graph's memory and dump size at no measurable cost in recall (the test
//! `recall_at_10_against_brute_force` runs with this distance). The graph's element type is
//! `u16` holding IEEE binary16 bits because hnsw_rs needs serde on its element type and `half`
//! is built here without its serde feature.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use hnsw_rs::prelude::Distance;

/// Elements converted per step; a stack buffer this size keeps the conversion in L1.
const CHUNK: usize = 64;

/// `1 - dot(a, b)` clamped at 0, on f16 vectors stored as raw bits.
///
/// For unit vectors this is the cosine distance; the clamp absorbs rounding that would make it
/// slightly negative for (near-)identical vectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct DotF16;

impl Distance<u16> for DotF16 {
    fn eval(&self, va: &[u16], vb: &[u16]) -> f32 {
        (1.0 - dot_f16_bits(va, vb)).max(0.0)
    }
}

/// Dot product of two f16 vectors (raw bits), accumulated in f32.
pub fn dot_f16_bits(a: &[u16], b: &[u16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut fa = [0f32; CHUNK];
    let mut fb = [0f32; CHUNK];
    let mut sum = 0f32;
    for (ca, cb) in a.chunks(CHUNK).zip(b.chunks(CHUNK)) {
        let n = ca.len();
        // Runtime-detected F16C conversion inside `half`.
        ca.reinterpret_cast::<f16>()
            .convert_to_f32_slice(&mut fa[..n]);
        cb.reinterpret_cast::<f16>()
            .convert_to_f32_slice(&mut fb[..n]);
        sum += dot_f32(&fa[..n], &fb[..n]);
    }
    sum
}

/// Dot product in f32 with eight independent accumulators, so the compiler vectorises it.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Converts f32 values to f16 bits (round to nearest even).
pub fn to_f16_bits(v: &[f32]) -> Vec<u16> {
    let mut out = vec![f16::ZERO; v.len()];
    out.convert_from_f32_slice(v);
    out.iter().map(|h| h.to_bits()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..77).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..77).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot_f32(&a, &b) as f64 - naive).abs() < 1e-4);
        // f16 rounding: relative error 2^-11 per element, |x|,|y| <= 1, 77 terms.
        let d16 = dot_f16_bits(&to_f16_bits(&a), &to_f16_bits(&b)) as f64;
        assert!(
            (d16 - naive).abs() < 77.0 * 2.0 * 4.9e-4,
            "{d16} vs {naive}"
        );
    }

    #[test]
    fn distance_is_never_negative_for_identical_unit_vectors() {
        // Components chosen so that the rounded squared norm exceeds 1.
        for seed in 0..200 {
            let mut v: Vec<f32> = (0..256)
                .map(|i| ((i * 7 + seed) as f32 * 0.37).sin())
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            let bits = to_f16_bits(&v);
            let d = DotF16.eval(&bits, &bits);
            // f16 rounding moves |v|² by at most ~2 · 2^-11.
            assert!((0.0..1e-3).contains(&d), "distance {d}");
        }
    }
}
