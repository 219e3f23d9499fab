//! The Querying Transformer (`qformer.*`, `query_tokens`, `embeddings.*`), as transformers'
//! `Blip2QFormerModel` runs it.
//!
//! A post-LN BERT whose input is the learned query tokens, a text, or both. Three modes share
//! one network:
//! - image: the queries alone, cross-attending the image tokens (ITC image side, captions);
//! - text: the text alone, no cross-attention (ITC text side);
//! - joint: queries then text, one bidirectional self-attention, queries cross-attending the
//!   image (ITM).
//!
//! `query_length` decides which rows are queries: only they cross-attend, and they go through
//! their own feed-forward network (`intermediate_query`/`output_query`) while text rows use
//! `intermediate`/`output`. Cross-attention exists in layer `i` when
//! `i % cross_attention_frequency == 0`. There is one LayerNorm at the input and none at the
//! output.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::QFormerConfig;
use super::layers::{activate, attention, merge_heads, split_heads, LayerNorm, Linear};

/// Word and learned position embeddings of the text (top-level `embeddings.*`). The
/// LayerNorm is applied later, by the Q-Former, on queries and text together.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Tensor,
}

impl TextEmbeddings {
    /// Loads `word_embeddings` and `position_embeddings` (pass `vb.pp("embeddings")`).
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let word = vb.get((cfg.vocab_size, cfg.hidden_size), "word_embeddings.weight")?;
        let position_embeddings = vb.get(
            (cfg.max_position_embeddings, cfg.hidden_size),
            "position_embeddings.weight",
        )?;
        Ok(Self {
            word_embeddings: Embedding::new(word, cfg.hidden_size),
            position_embeddings,
        })
    }

    /// Token ids [B, L] → embeddings [B, L, hidden], positions 0..L.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, len) = input_ids.dims2()?;
        let max = self.position_embeddings.dim(0)?;
        if len > max {
            candle_core::bail!("text of {len} tokens exceeds the {max} learned positions");
        }
        let words = self.word_embeddings.forward(input_ids)?;
        words.broadcast_add(&self.position_embeddings.narrow(0, 0, len)?)
    }
}

/// Multi-head attention: self-attention, or cross-attention from queries to image tokens.
#[derive(Debug, Clone)]
struct MultiHeadAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: usize,
}

impl MultiHeadAttention {
    fn new(cfg: &QFormerConfig, kv_dim: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: Linear::new(h, h, vb.pp("query"))?,
            key: Linear::new(kv_dim, h, vb.pp("key"))?,
            value: Linear::new(kv_dim, h, vb.pp("value"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// Keys and values of `memory`, split into heads.
    fn keys_values(&self, memory: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = split_heads(&self.key.forward(memory)?, self.heads)?;
        let v = split_heads(&self.value.forward(memory)?, self.heads)?;
        Ok((k, v))
    }

    fn forward_kv(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(x)?, self.heads)?;
        merge_heads(&attention(&q, k, v, mask)?)
    }
}

/// `dense` + residual + `LayerNorm`, the BERT output sub-block.
#[derive(Debug, Clone)]
struct AddNorm {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl AddNorm {
    fn new(cfg: &QFormerConfig, in_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(in_dim, cfg.hidden_size, vb.pp("dense"))?,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.layer_norm
            .forward(&(self.dense.forward(x)? + residual)?)
    }
}

/// Attention followed by its output sub-block (`attention.*` or `crossattention.*`).
#[derive(Debug, Clone)]
struct AttentionBlock {
    attention: MultiHeadAttention,
    output: AddNorm,
}

impl AttentionBlock {
    fn new(cfg: &QFormerConfig, kv_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadAttention::new(cfg, kv_dim, vb.pp("attention"))?,
            output: AddNorm::new(cfg, cfg.hidden_size, vb.pp("output"))?,
        })
    }
}

/// A feed-forward network: `intermediate*` then `output*`.
#[derive(Debug, Clone)]
struct FeedForward {
    intermediate: Linear,
    output: AddNorm,
    cfg: QFormerConfig,
}

impl FeedForward {
    fn new(cfg: &QFormerConfig, vb: VarBuilder, intermediate: &str, output: &str) -> Result<Self> {
        Ok(Self {
            intermediate: Linear::new(
                cfg.hidden_size,
                cfg.intermediate_size,
                vb.pp(intermediate).pp("dense"),
            )?,
            output: AddNorm::new(cfg, cfg.intermediate_size, vb.pp(output))?,
            cfg: cfg.clone(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = activate(self.cfg.hidden_act, &self.intermediate.forward(x)?)?;
        self.output.forward(&h, x)
    }
}

/// One Q-Former layer.
#[derive(Debug, Clone)]
struct Layer {
    attention: AttentionBlock,
    crossattention: Option<AttentionBlock>,
    query_ffn: FeedForward,
    text_ffn: Option<FeedForward>,
}

impl Layer {
    fn new(cfg: &QFormerConfig, image_dim: usize, index: usize, vb: VarBuilder) -> Result<Self> {
        let crossattention = if cfg.has_cross_attention(index) {
            Some(AttentionBlock::new(
                cfg,
                image_dim,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        let text_ffn = if cfg.use_qformer_text_input {
            Some(FeedForward::new(cfg, vb.clone(), "intermediate", "output")?)
        } else {
            None
        };
        Ok(Self {
            attention: AttentionBlock::new(cfg, cfg.hidden_size, vb.pp("attention"))?,
            crossattention,
            query_ffn: FeedForward::new(cfg, vb, "intermediate_query", "output_query")?,
            text_ffn,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        query_length: usize,
        self_mask: Option<&Tensor>,
        image: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let att = &self.attention;
        let (k, v) = att.attention.keys_values(x)?;
        let a = att.attention.forward_kv(x, &k, &v, self_mask)?;
        let h = att.output.forward(&a, x)?;
        let seq = h.dim(1)?;
        let text_ffn = || {
            self.text_ffn.as_ref().ok_or_else(|| {
                candle_core::Error::Msg(
                    "this Q-Former has no text feed-forward network (use_qformer_text_input is \
                     false): it cannot encode text"
                        .into(),
                )
            })
        };
        if query_length == 0 {
            return text_ffn()?.forward(&h);
        }
        let mut queries = h.narrow(1, 0, query_length)?;
        if let Some(cross) = &self.crossattention {
            let (k, v) = image.ok_or_else(|| {
                candle_core::Error::Msg("query rows need the image memory to cross-attend".into())
            })?;
            let c = cross.attention.forward_kv(&queries, k, v, None)?;
            queries = cross.output.forward(&c, &queries)?;
        }
        let queries = self.query_ffn.forward(&queries)?;
        if seq == query_length {
            return Ok(queries);
        }
        let text = h.narrow(1, query_length, seq - query_length)?;
        let text = text_ffn()?.forward(&text)?;
        Tensor::cat(&[&queries, &text], 1)
    }
}

/// The image as the Q-Former's cross-attention layers see it: each such layer's keys and values
/// of the image tokens, computed once. Re-ranking one image against many texts reuses them
/// instead of projecting the same image tokens again for every pair.
#[derive(Debug, Clone)]
pub struct ImageMemory {
    /// One (keys, values) pair per layer, `None` for layers without cross-attention; each
    /// [B, heads, T, head_dim].
    per_layer: Vec<Option<(Tensor, Tensor)>>,
}

impl ImageMemory {
    /// Keeps the images `rows` (u32 indices into the batch), in that order: how training pairs
    /// an image with another image's text.
    pub fn select_rows(&self, rows: &Tensor) -> Result<Self> {
        let per_layer = self
            .per_layer
            .iter()
            .map(|kv| {
                kv.as_ref()
                    .map(|(k, v)| Ok((k.index_select(rows, 0)?, v.index_select(rows, 0)?)))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { per_layer })
    }

    /// Repeats every image `n` times along the batch (image i → rows i·n … i·n+n−1).
    pub fn repeat_each(&self, n: usize) -> Result<Self> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (b, h, s, d) = t.dims4()?;
            t.unsqueeze(1)?
                .expand((b, n, h, s, d))?
                .reshape((b * n, h, s, d))
        };
        let per_layer = self
            .per_layer
            .iter()
            .map(|kv| kv.as_ref().map(|(k, v)| Ok((rep(k)?, rep(v)?))).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { per_layer })
    }
}

/// The Q-Former: input LayerNorm and the layers.
#[derive(Debug, Clone)]
pub struct QFormer {
    layernorm: LayerNorm,
    layers: Vec<Layer>,
}

impl QFormer {
    /// Loads `qformer.*` (pass `vb.pp("qformer")`); `image_dim` is the vision hidden size, which
    /// transformers forces as the cross-attention input size.
    pub fn new(cfg: &QFormerConfig, image_dim: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, image_dim, i, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layernorm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            layers,
        })
    }

    /// Projects image tokens [B, T, image_dim] into every cross-attention layer's keys/values.
    pub fn image_memory(&self, image_tokens: &Tensor) -> Result<ImageMemory> {
        let per_layer = self
            .layers
            .iter()
            .map(|l| {
                l.crossattention
                    .as_ref()
                    .map(|c| c.attention.keys_values(image_tokens))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageMemory { per_layer })
    }

    /// Runs the layers on `embeddings` [B, S, hidden] (before the input LayerNorm), whose first
    /// `query_length` rows are query tokens. `self_mask` is additive, broadcastable to
    /// [B, heads, S, S]; `image` is required when `query_length > 0`.
    pub fn forward(
        &self,
        embeddings: &Tensor,
        query_length: usize,
        self_mask: Option<&Tensor>,
        image: Option<&ImageMemory>,
    ) -> Result<Tensor> {
        let mut x = self.layernorm.forward(embeddings)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = image
                .and_then(|m| m.per_layer.get(i))
                .and_then(Option::as_ref);
            x = layer.forward(&x, query_length, self_mask, kv)?;
        }
        Ok(x)
    }
}
