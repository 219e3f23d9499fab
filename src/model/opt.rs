//! The OPT decoder (`language_model.*`) of BLIP-2's captioning checkpoints, as transformers'
//! `OPTForCausalLM` runs it.
//!
//! Pre-LN blocks with ReLU, learned positions looked up at `position + 2` where the position
//! counts the non-padding tokens before it (so left padding works), an optional
//! `project_in`/`project_out` when `word_embed_proj_dim` differs from the hidden size, and a
//! head tied to `embed_tokens` unless the checkpoint stores `lm_head.weight` (the legacy hub
//! layout). The key/value cache lives outside the layers ([`KvCache`]) so that beam search can
//! reorder it. Paper: Zhang et al. 2022, <https://arxiv.org/abs/2205.01068>.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::generate::StepModel;
use super::layers::{attention, merge_heads, split_heads, LayerNorm, Linear};

/// `text_config` of a BLIP-2 captioning checkpoint (defaults of transformers' `OPTConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct OptConfig {
    /// Rows of `embed_tokens` (50272; 50304 in the hub files updated for `<image>` tokens).
    #[serde(default = "OptConfig::default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "OptConfig::default_hidden_size")]
    pub hidden_size: usize,
    /// Number of decoder blocks.
    #[serde(default = "OptConfig::default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Width of the feed-forward network.
    #[serde(default = "OptConfig::default_ffn_dim")]
    pub ffn_dim: usize,
    /// Attention heads per block.
    #[serde(default = "OptConfig::default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Longest sequence (the position table has two more rows).
    #[serde(default = "OptConfig::default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Width of the token embeddings; `project_in`/`project_out` map to and from the hidden size
    /// when they differ.
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    /// Pre-LN (true for every OPT but the 350M).
    #[serde(default = "default_true")]
    pub do_layer_norm_before: bool,
    /// Kept for old configs: drops the final LayerNorm.
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Only `"relu"` is used by OPT.
    #[serde(default = "OptConfig::default_activation")]
    pub activation_function: String,
    /// Beginning-of-sequence id (`</s>`, 2).
    #[serde(default = "OptConfig::default_bos")]
    pub bos_token_id: u32,
    /// End-of-sequence id: 2 in OPT's default, 50118 (`"\n"`) in the BLIP-2 hub configs.
    #[serde(default = "OptConfig::default_bos")]
    pub eos_token_id: u32,
    /// Padding id.
    #[serde(default = "OptConfig::default_pad")]
    pub pad_token_id: u32,
}

fn default_true() -> bool {
    true
}

impl OptConfig {
    fn default_vocab_size() -> usize {
        50272
    }
    fn default_hidden_size() -> usize {
        768
    }
    fn default_num_hidden_layers() -> usize {
        12
    }
    fn default_ffn_dim() -> usize {
        3072
    }
    fn default_num_attention_heads() -> usize {
        12
    }
    fn default_max_position_embeddings() -> usize {
        2048
    }
    fn default_activation() -> String {
        "relu".into()
    }
    fn default_bos() -> u32 {
        2
    }
    fn default_pad() -> u32 {
        1
    }

    /// Width of token embeddings and of the head's input.
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// The configuration of OPT-2.7B as in `Salesforce/blip2-opt-2.7b`.
    pub fn opt_2_7b() -> Self {
        let mut c: Self = serde_json::from_str("{}").expect("defaults deserialize");
        c.vocab_size = 50304;
        c.hidden_size = 2560;
        c.num_hidden_layers = 32;
        c.ffn_dim = 10240;
        c.num_attention_heads = 32;
        c.eos_token_id = 50118;
        c
    }

    /// Rejects what the decoder does not implement, naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.activation_function != "relu" {
            return Err(format!(
                "text_config.activation_function {:?} is not supported (only \"relu\")",
                self.activation_function
            ));
        }
        if !self.do_layer_norm_before {
            return Err(
                "text_config.do_layer_norm_before false (post-LN OPT-350M) is not supported".into(),
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// Keys and values of every layer for the tokens seen so far, [B, heads, S, head_dim] each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the rows `indices` of the batch, in that order (beam search's reordering).
    pub fn select_rows(&mut self, indices: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(indices, 0)?;
            *v = v.index_select(indices, 0)?;
        }
        Ok(())
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let kv = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::new(h, h, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, h, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, h, vb.pp("v_proj"))?,
            out_proj: Linear::new(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let q = split_heads(&self.q_proj.forward(x)?, self.heads)?;
        let k = split_heads(&self.k_proj.forward(x)?, self.heads)?;
        let v = split_heads(&self.v_proj.forward(x)?, self.heads)?;
        let (k, v) = cache.append(layer, k, v)?;
        self.out_proj
            .forward(&merge_heads(&attention(&q, &k, &v, mask)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: SelfAttention,
    final_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl DecoderLayer {
    fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            self_attn_layer_norm: LayerNorm::new(h, 1e-5, vb.pp("self_attn_layer_norm"))?,
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
            final_layer_norm: LayerNorm::new(h, 1e-5, vb.pp("final_layer_norm"))?,
            fc1: Linear::new(h, cfg.ffn_dim, vb.pp("fc1"))?,
            fc2: Linear::new(cfg.ffn_dim, h, vb.pp("fc2"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let a =
            self.self_attn
                .forward(&self.self_attn_layer_norm.forward(x)?, mask, cache, layer)?;
        let x = (x + a)?;
        let h = self
            .fc1
            .forward(&self.final_layer_norm.forward(&x)?)?
            .relu()?;
        x + self.fc2.forward(&h)?
    }
}

/// `OPTForCausalLM`: token embeddings in, next-token logits out.
#[derive(Debug, Clone)]
pub struct OptDecoder {
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    layers: Vec<DecoderLayer>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Linear,
    dtype: DType,
    config: OptConfig,
}

impl OptDecoder {
    /// Loads `language_model.*` (pass `vb.pp("language_model")`); the weights run in `vb`'s
    /// dtype. The head is `lm_head.weight` when stored, else `embed_tokens` (tied).
    pub fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let d = vb.pp("model.decoder");
        let e = cfg.embed_dim();
        let embed_tokens = d.get((cfg.vocab_size, e), "embed_tokens.weight")?;
        let embed_positions = d.get(
            (cfg.max_position_embeddings + 2, cfg.hidden_size),
            "embed_positions.weight",
        )?;
        let (project_in, project_out) = if e != cfg.hidden_size {
            let pin = d.pp("project_in").get((cfg.hidden_size, e), "weight")?;
            let pout = d.pp("project_out").get((e, cfg.hidden_size), "weight")?;
            (
                Some(Linear::from_parts(pin, None)),
                Some(Linear::from_parts(pout, None)),
            )
        } else {
            (None, None)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, d.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = if cfg.remove_final_layer_norm {
            None
        } else {
            Some(LayerNorm::new(
                cfg.hidden_size,
                1e-5,
                d.pp("final_layer_norm"),
            )?)
        };
        let lm_head = Linear::from_parts(
            if vb.contains_tensor("lm_head.weight") {
                vb.get((cfg.vocab_size, e), "lm_head.weight")?
            } else {
                embed_tokens.clone()
            },
            None,
        );
        Ok(Self {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            dtype: vb.dtype(),
            config: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OptConfig {
        &self.config
    }

    /// Precision the weights run in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Token ids [B, T] → token embeddings [B, T, embed_dim].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.embed_dim()))
    }

    /// Runs new inputs through the decoder, appending to `cache`, and returns the logits of the
    /// last new position [B, vocab] in f32.
    ///
    /// `embeds` [B, T, embed_dim] are the new inputs; `mask` [B, S] is the 0/1 padding mask of
    /// the whole sequence so far including them (S = cache length + T).
    pub fn forward(&self, embeds: &Tensor, mask: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let x = self.layers_forward(embeds, mask, cache)?;
        let t = x.dim(1)?;
        let last = self.head_input(&x.narrow(1, t - 1, 1)?)?;
        // The head is the largest matrix (vocab × embed_dim) and is multiplied by one row per
        // sequence: the same memory-bound product as the layers' at decode time.
        self.lm_head
            .forward(&last.squeeze(1)?)?
            .to_dtype(DType::F32)
    }

    /// The logits [B, T − from, vocab] in f32 of the positions `from..T` of a whole sequence run
    /// at once (what the language-modelling loss needs; no cache is kept). Positions before
    /// `from` (e.g. BLIP-2's image rows, which predict nothing) skip the head, the largest
    /// product of a small model.
    pub fn logits_from(&self, embeds: &Tensor, mask: &Tensor, from: usize) -> Result<Tensor> {
        let x = self.layers_forward(embeds, mask, &mut KvCache::new())?;
        let t = x.dim(1)?;
        let x = x.narrow(1, from, t - from)?;
        self.lm_head
            .forward(&self.head_input(&x)?)?
            .to_dtype(DType::F32)
    }

    /// The final LayerNorm and `project_out`: decoder states → the head's input.
    fn head_input(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.final_layer_norm {
            Some(ln) => ln.forward(x)?,
            None => x.clone(),
        };
        match &self.project_out {
            Some(p) => p.forward(&x),
            None => Ok(x),
        }
    }

    /// Positions, `project_in` and the decoder blocks: new inputs → states [B, T, hidden].
    fn layers_forward(
        &self,
        embeds: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.len();
        let total = past + t;
        if mask.dims() != [b, total] {
            candle_core::bail!(
                "attention mask {:?} does not cover the {total} tokens so far",
                mask.dims()
            );
        }
        if total > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {total} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        // Position = non-padding tokens up to and including this one, minus one; pads get −1.
        // The table is offset by 2, so pads read row 1 and are masked out anyway.
        let mask_f = mask.to_dtype(DType::F32)?;
        let positions = ((mask_f.cumsum(1)? * &mask_f)? + 1.0)?
            .narrow(1, past, t)?
            .to_dtype(DType::U32)?;
        let pos = self
            .embed_positions
            .index_select(&positions.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))?;
        let x = embeds.to_dtype(self.dtype)?;
        let x = match &self.project_in {
            Some(p) => p.forward(&x)?,
            None => x,
        };
        let mut x = (x + pos)?;
        let additive = decoder_mask(mask, past, t)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, Some(&additive), cache, i)?;
        }
        Ok(x)
    }
}

/// The decoder with its cache and padding mask: what greedy and beam search step.
#[derive(Debug)]
pub struct DecoderState<'a> {
    model: &'a OptDecoder,
    cache: KvCache,
    mask: Tensor,
}

impl<'a> DecoderState<'a> {
    /// Runs the input embeddings [B, T, embed_dim] with their 0/1 padding mask [B, T]; returns
    /// the state and the next-token logits [B, vocab].
    pub fn prefill(model: &'a OptDecoder, embeds: &Tensor, mask: Tensor) -> Result<(Self, Tensor)> {
        let mut cache = KvCache::new();
        let logits = model.forward(embeds, &mask, &mut cache)?;
        Ok((Self { model, cache, mask }, logits))
    }

    /// As [`DecoderState::prefill`], from token ids [B, T].
    pub fn prefill_ids(
        model: &'a OptDecoder,
        ids: &Tensor,
        mask: Tensor,
    ) -> Result<(Self, Tensor)> {
        Self::prefill(model, &model.embed(ids)?, mask)
    }
}

impl StepModel for DecoderState<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let device = self.mask.device().clone();
        let ids = Tensor::new(tokens, &device)?.unsqueeze(1)?;
        let embeds = self.model.embed(&ids)?;
        let ones = Tensor::ones((tokens.len(), 1), self.mask.dtype(), &device)?;
        self.mask = Tensor::cat(&[&self.mask, &ones], 1)?;
        self.model.forward(&embeds, &self.mask, &mut self.cache)
    }

    fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::new(rows.as_slice(), self.mask.device())?;
        self.cache.select_rows(&idx)?;
        self.mask = self.mask.index_select(&idx, 0)?;
        Ok(())
    }
}

/// Additive mask [B, 1, T, S] for T new queries after `past` cached tokens: causal, and no
/// attention to padding.
fn decoder_mask(mask: &Tensor, past: usize, t: usize) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let device = mask.device();
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    super::layers::MASKED
                }
            })
        })
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, t, s), device)?;
    let padding = ((1.0 - mask.to_dtype(DType::F32)?)? * f64::from(super::layers::MASKED))?
        .reshape((b, 1, 1, s))?;
    // Each term is 0 or MASKED; a sum of two is still finite in f32.
    causal.broadcast_add(&padding)
}
