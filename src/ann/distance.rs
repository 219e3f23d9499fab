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
///
/// This is the graph's inner loop (every insert and search evaluates it hundreds of times), so
/// x86-64 CPUs with F16C and FMA (every x86-64 CPU since 2013) get a hand-written kernel:
/// 8 lanes per step, two accumulators. Others use `half`'s slice conversion.
pub fn dot_f16_bits(a: &[u16], b: &[u16]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the kernel is compiled for were just detected.
            return unsafe { x86::dot_f16c(a, b) };
        }
    }
    dot_f16_bits_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX, F16C and FMA.
    #[target_feature(enable = "avx,f16c,fma")]
    pub(super) unsafe fn dot_f16c(a: &[u16], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, so both 8-lane loads at i and i + 8 are in bounds;
            // loadu has no alignment requirement.
            unsafe {
                let a0 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
                let b0 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                let a1 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i + 8) as *const __m128i));
                let b1 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8) as *const __m128i));
                acc0 = _mm256_fmadd_ps(a0, b0, acc0);
                acc1 = _mm256_fmadd_ps(a1, b1, acc1);
            }
            i += 16;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds exactly 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1)) };
        let mut sum: f32 = lanes.iter().sum();
        for j in i..n {
            sum += half::f16::from_bits(a[j]).to_f32() * half::f16::from_bits(b[j]).to_f32();
        }
        sum
    }
}

/// Portable f16 dot: convert chunks to f32 on the stack, then [`dot_f32`].
fn dot_f16_bits_portable(a: &[u16], b: &[u16]) -> f32 {
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
        let (ha, hb) = (to_f16_bits(&a), to_f16_bits(&b));
        let d16 = dot_f16_bits(&ha, &hb) as f64;
        assert!(
            (d16 - naive).abs() < 77.0 * 2.0 * 4.9e-4,
            "{d16} vs {naive}"
        );
        // The SIMD kernel and the portable path agree up to summation order.
        let portable = dot_f16_bits_portable(&ha, &hb) as f64;
        assert!((d16 - portable).abs() < 1e-5, "{d16} vs {portable}");
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
