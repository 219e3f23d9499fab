//! The EVA ViT-g image encoder of BLIP-2 (`vision_model.*`), as transformers'
//! `Blip2VisionModel` runs it.
//!
//! Pre-LN transformer blocks with a fused `qkv` projection whose bias is `[q, 0, v]` (EVA has
//! no key bias), exact GELU, no layer scale, no relative positions; the output is every token
//! (class token first) through `post_layernorm`, which is the memory the Q-Former cross-attends.
//! Paper: Li et al. 2023, <https://arxiv.org/abs/2301.12597>; checkpoint
//! `Salesforce/blip2-itm-vit-g`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::VisionConfig;
use super::layers::{activate, attention, merge_heads, split_heads, LayerNorm, Linear};

/// Class token, patch projection and learned positions.
#[derive(Debug, Clone)]
struct Embeddings {
    class_embedding: Tensor,
    /// The `[hidden, 3, p, p]` convolution kernel flattened to `[hidden, 3·p·p]`: a stride-p
    /// convolution over non-overlapping patches is one matrix product over patch vectors.
    patch_embedding: Linear,
    position_embedding: Tensor,
    patch_size: usize,
}

impl Embeddings {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let class_embedding = vb.get((1, 1, h), "class_embedding")?;
        let weight = vb
            .get((h, 3, p, p), "patch_embedding.weight")?
            .reshape((h, 3 * p * p))?;
        let bias = vb.get(h, "patch_embedding.bias")?;
        let position_embedding = vb.get((1, cfg.num_tokens(), h), "position_embedding")?;
        Ok(Self {
            class_embedding,
            patch_embedding: Linear::from_parts(weight, Some(bias)),
            position_embedding,
            patch_size: p,
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, height, width) = pixels.dims4()?;
        let p = self.patch_size;
        let (nh, nw) = (height / p, width / p);
        // [B, C, nh, p, nw, p] -> [B, nh, nw, C, p, p]: row-major patches, each flattened in
        // the kernel's (channel, row, column) order.
        let patches = pixels
            .reshape((b, c, nh, p, nw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, nh * nw, c * p * p))?;
        let x = self.patch_embedding.forward(&patches)?;
        let hidden = x.dim(2)?;
        let cls = self.class_embedding.expand((b, 1, hidden))?;
        Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding)
    }
}

/// EVA's `[q_bias; 0; v_bias]`: the fused qkv bias with the key part zero (also what training
/// writes in place of the separate biases).
pub(crate) fn fused_bias(q: &Tensor, v: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[q, &q.zeros_like()?, v], 0)
}

/// Multi-head self-attention with the fused `qkv` projection.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    /// EVA's separate q and v biases when they are trained variables: assembled into the fused
    /// bias at every forward pass, because a bias concatenated once at construction would be a
    /// copy the optimiser never updates (training would run with the initial biases while the
    /// checkpoint recorded the updated ones).
    trained_bias: Option<(Tensor, Tensor)>,
    projection: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let weight = vb.get((3 * h, h), "qkv.weight")?;
        let mut trained_bias = None;
        let bias = if !cfg.qkv_bias {
            None
        } else if vb.contains_tensor("qkv.bias") {
            Some(vb.get(3 * h, "qkv.bias")?)
        } else {
            // LAVIS/EVA and the first transformers port store the q and v biases apart; the
            // key bias is zero by design.
            let q = vb.get(h, "q_bias")?;
            let v = vb.get(h, "v_bias")?;
            if q.is_variable() || v.is_variable() {
                trained_bias = Some((q, v));
                None
            } else {
                Some(fused_bias(&q, &v)?)
            }
        };
        Ok(Self {
            qkv: Linear::from_parts(weight, bias),
            trained_bias,
            projection: Linear::new(h, h, vb.pp("projection"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = match &self.trained_bias {
            Some((q, v)) => self.qkv.forward(x)?.broadcast_add(&fused_bias(q, v)?)?,
            None => self.qkv.forward(x)?,
        };
        let h = qkv.dim(2)? / 3;
        let q = split_heads(&qkv.narrow(2, 0, h)?, self.heads)?;
        let k = split_heads(&qkv.narrow(2, h, h)?, self.heads)?;
        let v = split_heads(&qkv.narrow(2, 2 * h, h)?, self.heads)?;
        let out = attention(&q, &k, &v, None)?;
        self.projection.forward(&merge_heads(&out)?)
    }
}

/// One pre-LN transformer block.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    cfg: VisionConfig,
}

impl EncoderLayer {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            layer_norm1: LayerNorm::new(h, eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(h, eps, vb.pp("layer_norm2"))?,
            fc1: Linear::new(h, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: Linear::new(cfg.intermediate_size, h, vb.pp("mlp.fc2"))?,
            cfg: cfg.clone(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = self.fc2.forward(&activate(self.cfg.hidden_act, &h)?)?;
        x + h
    }
}

/// The whole image encoder: pixels [B, 3, S, S] → tokens [B, T, hidden].
#[derive(Debug, Clone)]
pub struct VisionModel {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    dtype: DType,
    image_size: usize,
}

impl VisionModel {
    /// Loads `vision_model.*` from `vb` (pass `vb.pp("vision_model")`). The weights are read in
    /// `vb`'s dtype, which is the precision the encoder runs in.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
            post_layernorm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
            dtype: vb.dtype(),
            image_size: cfg.image_size,
        })
    }

    /// The encoder output before `post_layernorm`: the frozen trunk, identical in every
    /// checkpoint that shares this ViT.
    pub fn trunk(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4()?;
        if c != 3 || h != self.image_size || w != self.image_size {
            candle_core::bail!(
                "pixels must be [B, 3, {s}, {s}], got {:?}",
                pixels.dims(),
                s = self.image_size
            );
        }
        let mut x = self.embeddings.forward(&pixels.to_dtype(self.dtype)?)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// `post_layernorm` of the trunk output, in f32: what the Q-Former reads.
    pub fn post_layernorm(&self, trunk: &Tensor) -> Result<Tensor> {
        self.post_layernorm.forward(trunk)?.to_dtype(DType::F32)
    }

    /// Pixels → image tokens `[B, T, hidden]` in f32 (transformers' `last_hidden_state`).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.post_layernorm(&self.trunk(pixels)?)
    }
}
