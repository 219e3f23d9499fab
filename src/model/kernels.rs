//! Fused CPU kernels for the element-wise steps around the matrix products.
//!
//! Profiling the real-size ViT on CPU showed a quarter of the time outside the GEMMs: candle's
//! GELU runs on one thread, and a LayerNorm written with tensor ops makes seven passes over
//! memory, each allocating a fresh buffer. These kernels do each step in one parallel pass
//! (rayon, rows split across cores). They compute the same formulas as transformers — GELU
//! with erf, LayerNorm with the mean subtracted before the variance — and fall back to plain
//! tensor ops on other devices and dtypes, so CUDA and half precision keep working unchanged.
//!
//! The custom ops have no backward pass. When an input takes part in a gradient computation
//! (training: [`needs_grad`]), each function takes the plain tensor-op route instead, which
//! computes the same formula and which candle can differentiate.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows per rayon task: large enough that scheduling costs nothing next to the work.
const MIN_ELEMS_PER_TASK: usize = 1 << 14;

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`, as torch's default `gelu`.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "quarry-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "gelu")?;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .zip(src.par_chunks(MIN_ELEMS_PER_TASK))
            .for_each(|(d, s)| {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = gelu(s);
                }
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Whether any of `tensors` is a training variable or computed from one, i.e. whether the
/// fused (non-differentiable) kernels must be avoided.
pub fn needs_grad(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}

/// Exact GELU; one parallel pass on CPU f32, candle's `gelu_erf` elsewhere.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && !needs_grad(&[x]) {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

struct LayerNormOp {
    eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "quarry-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer_norm input")?;
        let w = contiguous_f32(s2, l2, "layer_norm weight")?;
        let b = contiguous_f32(s3, l3, "layer_norm bias")?;
        let dim = w.len();
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        let rows_per_task = (MIN_ELEMS_PER_TASK / dim).max(1);
        out.par_chunks_mut(dim * rows_per_task)
            .zip(x.par_chunks(dim * rows_per_task))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                    // Two passes in f64: the mean first, then the variance of the centred values,
                    // so a large mean does not cancel the digits of a small variance.
                    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
                    let var = x
                        .iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / dim as f64;
                    let inv = 1.0 / (var + eps).sqrt();
                    for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                        *o = ((f64::from(x) - mean) * inv) as f32 * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm over the last dimension with f32 `weight` and `bias`, computed in f32 (the
/// statistics in f64 on the CPU path); returns the input's dtype.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    if x.device().is_cpu() && dtype == DType::F32 && !needs_grad(&[x, weight, bias]) {
        return x
            .contiguous()?
            .apply_op3_no_bwd(weight, bias, &LayerNormOp { eps });
    }
    let x32 = x.to_dtype(DType::F32)?;
    let mean = x32.mean_keepdim(D::Minus1)?;
    let centred = x32.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)?
        .to_dtype(dtype)
}

/// Most rows for which [`skinny_matmul`] is used: decoding steps (one token per beam) and
/// small batches. Larger inputs go to candle's GEMM, which is faster there.
pub const SKINNY_MAX_ROWS: usize = 16;

/// Output columns per rayon task.
const COLUMNS_PER_TASK: usize = 64;

/// Widens a stored weight row to f32.
fn widen_row(row: &CpuStorage, start: usize, len: usize, out: &mut [f32]) {
    match row {
        CpuStorage::F32(w) => out.copy_from_slice(&w[start..start + len]),
        CpuStorage::BF16(w) => {
            for (o, v) in out.iter_mut().zip(&w[start..start + len]) {
                *o = f32::from_bits(u32::from(v.to_bits()) << 16);
            }
        }
        CpuStorage::F16(w) => {
            use half::slice::HalfFloatSliceExt;
            w[start..start + len].convert_to_f32_slice(out);
        }
        _ => unreachable!("checked by the caller"),
    }
}

/// `out[r] = x[r·k..(r+1)·k] · w` for every input row `r`: with AVX2 and FMA where the CPU
/// has them (checked at run time: the build targets baseline x86-64), else portably.
///
/// Why explicit vector code: a text query or a decode step multiplies a few rows by every
/// weight matrix, and a plain dot product runs at the latency of one chain of adds. The
/// real-size Q-Former's text pass (8 rows) took 67 ms per query that way, most of it here.
fn row_dots(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx2::row_dots(x, k, w, out) };
        }
    }
    for (o, row) in out.iter_mut().zip(x.chunks_exact(k)) {
        // The portable dot product the vector index scores with: one implementation to keep
        // vectorisable.
        *o = crate::ann::distance::dot_f32(row, w);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2 + FMA dot products of [`super::row_dots`]. Four input rows share each load of
    //! the weight row, and each row keeps two 8-lane sums: eight independent fused
    //! multiply-add chains, enough to hide their latency.
    use std::arch::x86_64::*;

    /// See [`super::row_dots`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_dots(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
        assert!(
            w.len() == k && x.len() == out.len() * k,
            "row_dots: shapes differ"
        );
        let mut rows = x.chunks_exact(k);
        let mut outs = out.chunks_exact_mut(4);
        for block in &mut outs {
            let mut next = || rows.next().expect("one input row per output");
            let xs = [next(), next(), next(), next()];
            block.copy_from_slice(&dots4(xs, w));
        }
        for (o, row) in outs.into_remainder().iter_mut().zip(rows) {
            *o = dot1(row, w);
        }
    }

    /// Horizontal sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
    }

    /// Four dot products with `w`; every slice is `w.len()` long (checked by the caller).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dots4(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
        let k = w.len();
        let whole = k - k % 16;
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut c = 0;
        while c < whole {
            // SAFETY: c + 16 <= whole <= k, the length of `w` and of every row.
            unsafe {
                let w0 = _mm256_loadu_ps(w.as_ptr().add(c));
                let w1 = _mm256_loadu_ps(w.as_ptr().add(c + 8));
                for (r, x) in xs.iter().enumerate() {
                    let p = x.as_ptr().add(c);
                    acc[2 * r] = _mm256_fmadd_ps(_mm256_loadu_ps(p), w0, acc[2 * r]);
                    acc[2 * r + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), w1, acc[2 * r + 1]);
                }
            }
            c += 16;
        }
        let mut out = [0f32; 4];
        for (r, x) in xs.iter().enumerate() {
            let tail: f32 = x[whole..].iter().zip(&w[whole..]).map(|(p, q)| p * q).sum();
            out[r] = sum(_mm256_add_ps(acc[2 * r], acc[2 * r + 1])) + tail;
        }
        out
    }

    /// One dot product, four 8-lane sums.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot1(x: &[f32], w: &[f32]) -> f32 {
        let k = w.len();
        let whole = k - k % 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c < whole {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: c + 8j + 8 <= whole <= k, the length of both slices.
                unsafe {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(c + 8 * j));
                    let wv = _mm256_loadu_ps(w.as_ptr().add(c + 8 * j));
                    *a = _mm256_fmadd_ps(xv, wv, *a);
                }
            }
            c += 32;
        }
        let tail: f32 = x[whole..].iter().zip(&w[whole..]).map(|(p, q)| p * q).sum();
        sum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        )) + tail
    }
}

struct SkinnyMatmul;

impl CustomOp2 for SkinnyMatmul {
    fn name(&self) -> &'static str {
        "quarry-skinny-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "skinny_matmul input")?;
        let (rows, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("skinny_matmul: input width {k} but weight width {k2}");
        }
        let (w_start, _) = l2.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("skinny_matmul: weight must be contiguous".into())
        })?;
        if !matches!(
            s2,
            CpuStorage::F32(_) | CpuStorage::BF16(_) | CpuStorage::F16(_)
        ) {
            candle_core::bail!("skinny_matmul: unsupported weight dtype");
        }
        // out is [n, rows] while computing (one weight row serves every input row), then
        // transposed to [rows, n].
        let mut by_column = vec![0f32; n * rows];
        by_column
            .par_chunks_mut(COLUMNS_PER_TASK * rows)
            .enumerate()
            .for_each(|(task, out)| {
                let mut widened = vec![0f32; k];
                for (j, col) in out.chunks_exact_mut(rows).enumerate() {
                    let start = w_start + (task * COLUMNS_PER_TASK + j) * k;
                    let w = match s2 {
                        CpuStorage::F32(w) => &w[start..start + k],
                        half => {
                            widen_row(half, start, k, &mut widened);
                            &widened
                        }
                    };
                    row_dots(x, k, w, col);
                }
            });
        let mut out = vec![0f32; rows * n];
        for c in 0..n {
            for r in 0..rows {
                out[r * n + c] = by_column[c * rows + r];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[rows, n])))
    }
}

/// `x [rows, k] · weightᵀ` for a `[n, k]` weight kept in its stored layout and precision
/// (f32, f16 or bf16), accumulated in f32, for few rows on the CPU.
///
/// Decoding a caption multiplies one row per beam by every weight matrix: a memory-bound
/// matrix–vector product. candle's GEMM widens a whole bf16 weight to f32 on every call (ten
/// times slower than reading it); this streams each weight row once, widening on the fly, so a
/// half-precision model decodes at the speed its halved memory traffic allows. Returns `None`
/// when the inputs do not qualify (device, row count, layout), for the caller to use `matmul`.
pub fn skinny_matmul(x: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (rows, _) = x.dims2()?;
    if !x.device().is_cpu()
        || needs_grad(&[x, weight])
        || rows > SKINNY_MAX_ROWS
        || !weight.is_contiguous()
        || weight.rank() != 2
    {
        return Ok(None);
    }
    let out_dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    Ok(Some(
        x.apply_op2_no_bwd(weight, &SkinnyMatmul)?
            .to_dtype(out_dtype)?,
    ))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn fused_kernels_equal_the_tensor_op_versions() {
        let d = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, (5, 37, 96), &d).unwrap() + 30.0).unwrap();
        let w = Tensor::randn(1f32, 0.1, 96, &d).unwrap();
        let b = Tensor::randn(0f32, 0.1, 96, &d).unwrap();
        let fused = layer_norm(&x, &w, &b, 1e-6).unwrap();
        // Reference: the textbook formula in f64 with tensor ops.
        let x64 = x.to_dtype(DType::F64).unwrap();
        let centred = x64
            .broadcast_sub(&x64.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let plain = centred
            .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w.to_dtype(DType::F64).unwrap())
            .unwrap()
            .broadcast_add(&b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        // The half-precision fallback path agrees too, within half precision.
        let half = layer_norm(&x.to_dtype(DType::F16).unwrap(), &w, &b, 1e-6).unwrap();
        assert_eq!(half.dtype(), DType::F16);
        let hd = (half.to_dtype(DType::F32).unwrap() - &plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(hd < 0.05, "f16 layer norm differs by {hd}");
        let diff = (fused - plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "layer norm differs by {diff}");

        // Row counts around the passes of four, widths with and without a tail past the
        // vector loops.
        for (dtype, rows, k) in [
            (DType::F32, 1, 96),
            (DType::F32, 3, 101),
            (DType::F32, 8, 96),
            (DType::F32, 7, 37),
            (DType::F32, SKINNY_MAX_ROWS, 131),
            (DType::BF16, 3, 96),
            (DType::BF16, 5, 101),
            (DType::F16, 3, 96),
            (DType::F16, 6, 77),
        ] {
            let w = Tensor::randn(0f32, 1.0, (70, k), &d)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = Tensor::randn(0f32, 1.0, (rows, k), &d)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let fast = skinny_matmul(&x, &w).unwrap().unwrap();
            let reference = x
                .to_dtype(DType::F64)
                .unwrap()
                .matmul(&w.to_dtype(DType::F64).unwrap().t().unwrap())
                .unwrap();
            assert_eq!(fast.dtype(), dtype);
            let scale = reference
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let diff = (fast.to_dtype(DType::F64).unwrap() - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            // f32 accumulates the same products in another order; a half-precision output is
            // rounded to 8 (bf16) or 11 (f16) mantissa bits: relative error ≤ 2⁻⁸.
            let tol = if dtype == DType::F32 {
                1e-5
            } else {
                2f64.powi(-8)
            } * scale;
            assert!(
                diff < tol,
                "{dtype:?} {rows}×{k} skinny matmul differs by {diff}"
            );
        }
        let big = Tensor::zeros((SKINNY_MAX_ROWS + 1, 96), DType::F32, &d).unwrap();
        assert!(
            skinny_matmul(&big, &Tensor::zeros((4, 96), DType::F32, &d).unwrap())
                .unwrap()
                .is_none()
        );

        let g = gelu_erf(&x.affine(0.2, -6.0).unwrap()).unwrap();
        let reference = x.affine(0.2, -6.0).unwrap().gelu_erf().unwrap();
        let diff = (g - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "gelu differs by {diff}");
    }
}
