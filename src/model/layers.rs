//! Building blocks shared by the vision encoder and the Q-Former: linear layers, LayerNorm,
//! activations and multi-head attention.
//!
//! They are written here rather than taken from `candle_nn` for two reasons found while checking
//! against transformers: candle's fused LayerNorm computes the variance as E[x²] − E[x]² in f32,
//! which loses digits on the ViT's residual stream (torch subtracts the mean first); and its
//! `Linear` multiplies batched inputs with a broadcast weight, one small GEMM per batch item,
//! where one flattened GEMM is faster.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use super::config::Activation;

/// `y = x Wᵀ + b` over the last dimension, any number of leading dimensions.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` [out, in] and `bias` [out] under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Ok(Self::from_parts(weight, Some(bias)))
    }

    /// A layer from tensors already loaded (e.g. a fused bias assembled from parts).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let y = match super::kernels::skinny_matmul(&x2, &self.weight)? {
            Some(y) => y,
            None => x2.matmul(&self.weight.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("non-empty dims") = self.out_dim();
        y.reshape(out_dims)
    }
}

/// LayerNorm over the last dimension, mean subtracted before the variance (as torch does), in
/// f32 whatever the input precision.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim` under `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        // The affine parameters are applied in f32: tiny tensors, and it keeps half-precision
        // runs from rounding the normalised values twice.
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        let bias = vb.get(dim, "bias")?.to_dtype(DType::F32)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        super::kernels::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Applies an activation function.
pub fn activate(act: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Activation::Gelu => super::kernels::gelu_erf(x),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
        Activation::QuickGelu => x.broadcast_mul(&candle_nn::ops::sigmoid(&(x * 1.702)?)?),
    }
}

/// Splits [B, T, heads·d] into [B, heads, T, d] (contiguous).
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    x.reshape((b, t, heads, hd / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Merges [B, heads, T, d] back into [B, T, heads·d].
pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}

/// Scaled dot-product attention on [B, heads, T, d] tensors.
///
/// `mask` is additive and broadcasts to [B, heads, Tq, Tk] (0 where attending, a large negative
/// number where not). The softmax runs in f32 whatever the input precision.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let dtype = q.dtype();
    // Scaling q (T×d) rather than the scores (T×T) is the cheaper pass; the rounding differs
    // from transformers' order only in the last bit.
    let q = (q * (1.0 / (d as f64).sqrt()))?;
    let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    // candle's fused softmax has no backward pass; training takes the composed one.
    let probs = if super::kernels::needs_grad(&[&scores]) {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    }
    .to_dtype(dtype)?;
    probs.matmul(v)
}

/// The additive mask value for positions that must not be attended (transformers uses the
/// dtype's minimum; any value whose exponential underflows to zero gives the same softmax).
pub const MASKED: f32 = -1.0e30;

/// Turns a [B, L] 0/1 padding mask into an additive [B, 1, 1, L] f32 mask.
pub fn additive_mask(mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((1.0 - m)? * (MASKED as f64))?.reshape((b, 1, 1, l))
}

/// Divides each vector of the last dimension by its L2 norm (torch's `F.normalize`, eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norm)
}
