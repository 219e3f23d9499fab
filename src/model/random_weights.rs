//! Random, well-conditioned weights in the checkpoint's layout, for benchmarks and full-size
//! dry runs where no real checkpoint can be downloaded.
//!
//! Matrices are drawn with standard deviation 1/√fan-in so activations keep their scale through
//! 39 ViT blocks; LayerNorm scales are one; biases and embeddings are small. Speed does not
//! depend on the values, but degenerate weights (all zeros) could hide NaN or overflow
//! problems a real checkpoint would show.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// A `VarBuilder` backend that invents every tensor it is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomWeights;

impl RandomWeights {
    /// A `VarBuilder` over random weights (created in f32, converted to `dtype`).
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims();
        let is_norm = name.contains("norm") || name.contains("LayerNorm");
        let t = if is_norm && name.ends_with("weight") {
            Tensor::ones(dims, DType::F32, dev)?
        } else if dims.len() == 1 {
            (Tensor::randn(0f32, 1.0, dims, dev)? * 0.02)?
        } else if name.contains("embed") || name.contains("query_tokens") {
            (Tensor::randn(0f32, 1.0, dims, dev)? * 0.5)?
        } else {
            let fan_in: usize = dims[1..].iter().product();
            (Tensor::randn(0f32, 1.0, dims, dev)? / (fan_in as f64).sqrt())?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // Fused checkpoint layout (`qkv.bias`) rather than LAVIS's separate q/v biases.
        !name.ends_with("q_bias") && !name.ends_with("v_bias")
    }
}
