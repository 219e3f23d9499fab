//! BLIP-2 in candle. The modules here see a `VarBuilder`, never a path, and never print: model
//! folders are read by [`crate::checkpoint`].
//!
//! [`Retriever`] is the facade for `Blip2ForImageTextRetrieval`: image and text embeddings for
//! ITC, and ITM scores for re-ranking.

pub mod captioner;
pub mod config;
pub mod generate;
pub(crate) mod heads;
mod kernels;
pub mod layers;
pub mod opt;
pub mod qformer;
mod random_weights;
pub mod shared_vision;
pub mod vision;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

pub use self::config::{Blip2Config, QFormerConfig, VisionConfig};
pub use self::heads::itc_scores;
use self::heads::RetrievalHeads;
pub use self::qformer::ImageMemory;
use self::qformer::{QFormer, TextEmbeddings};
pub use self::random_weights::RandomWeights;
use self::vision::VisionModel;
use crate::error::Result;

/// Token ids and padding mask of a batch of texts, both [B, L] u32 (mask: 1 = token, 0 = pad).
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// Token ids.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

/// ITM result for image–text pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct ItmScores {
    /// softmax of the query-averaged logits, class 1 (transformers' match probability).
    pub probability: Vec<f32>,
    /// The query-averaged class-1 logit (what LAVIS adds to ITC when ranking).
    pub logit: Vec<f32>,
    /// Class-1 minus class-0 logit: the log-odds of a match, whose sigmoid is `probability`
    /// (kept apart because `probability` saturates at 1 in f32 where the log-odds still order).
    pub log_odds: Vec<f32>,
}

/// The learned query tokens and the Q-Former: what both BLIP-2 facades share.
#[derive(Debug, Clone)]
pub(crate) struct QueryingTransformer {
    query_tokens: Tensor,
    pub(crate) qformer: QFormer,
    num_query_tokens: usize,
}

impl QueryingTransformer {
    /// Loads `query_tokens` and `qformer.*` from the checkpoint's top level (f32).
    pub(crate) fn new(config: &Blip2Config, vb: VarBuilder) -> Result<Self> {
        let q = &config.qformer_config;
        let query_tokens = vb.get((1, config.num_query_tokens, q.hidden_size), "query_tokens")?;
        let qformer = QFormer::new(q, config.vision_config.hidden_size, vb.pp("qformer"))?;
        Ok(Self {
            query_tokens,
            qformer,
            num_query_tokens: config.num_query_tokens,
        })
    }

    /// The query tokens repeated for a batch.
    pub(crate) fn queries(&self, batch: usize) -> candle_core::Result<Tensor> {
        let (_, q, h) = self.query_tokens.dims3()?;
        self.query_tokens.expand((batch, q, h))
    }

    /// Image mode: image tokens [B, T, vision hidden] → query outputs [B, Q, hidden].
    pub(crate) fn image_mode(&self, image_tokens: &Tensor) -> Result<Tensor> {
        let memory = self.qformer.image_memory(image_tokens)?;
        let b = image_tokens.dim(0)?;
        Ok(self.qformer.forward(
            &self.queries(b)?,
            self.num_query_tokens,
            None,
            Some(&memory),
        )?)
    }
}

/// `Blip2ForImageTextRetrieval`: ViT → Q-Former → ITC projections and the ITM head.
#[derive(Debug, Clone)]
pub struct Retriever {
    config: Blip2Config,
    vision: VisionModel,
    queries: QueryingTransformer,
    text_embeddings: TextEmbeddings,
    heads: RetrievalHeads,
    device: Device,
}

impl Retriever {
    /// Builds the model from checkpoint tensors. `vision_dtype` is the precision of the ViT
    /// (f32, or f16/bf16 as the original ran it); the Q-Former and heads always run in f32.
    pub fn new(config: &Blip2Config, vb: VarBuilder, vision_dtype: DType) -> Result<Self> {
        config.validate()?;
        let q = &config.qformer_config;
        let v = &config.vision_config;
        let vb32 = vb.set_dtype(DType::F32);
        let vision = VisionModel::new(v, vb32.pp("vision_model").to_dtype(vision_dtype))?;
        Ok(Self {
            vision,
            queries: QueryingTransformer::new(config, vb32.clone())?,
            text_embeddings: TextEmbeddings::new(q, vb32.pp("embeddings"))?,
            heads: RetrievalHeads::new(q.hidden_size, config.image_text_hidden_size, vb32.clone())?,
            device: vb32.device().clone(),
            config: config.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Blip2Config {
        &self.config
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pixels [B, 3, S, S] → image tokens [B, T, vision hidden] (f32): the ViT output the
    /// Q-Former cross-attends, and what the ITM feature cache keeps.
    pub fn image_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(pixels)?)
    }

    /// The vision encoder, for callers that share its frozen trunk between checkpoints.
    pub fn vision(&self) -> &VisionModel {
        &self.vision
    }

    /// Image tokens → the Q-Former's cross-attention memory.
    pub fn image_memory(&self, image_tokens: &Tensor) -> Result<ImageMemory> {
        Ok(self.queries.qformer.image_memory(image_tokens)?)
    }

    /// Image mode: the query outputs [B, Q, hidden] for image tokens [B, T, vision hidden].
    pub fn image_query_output(&self, image_tokens: &Tensor) -> Result<Tensor> {
        self.queries.image_mode(image_tokens)
    }

    /// Image tokens → ITC unit vectors [B, Q, D].
    pub fn image_embeddings(&self, image_tokens: &Tensor) -> Result<Tensor> {
        Ok(self
            .heads
            .image_embeddings(&self.image_query_output(image_tokens)?)?)
    }

    /// Pixels → ITC unit vectors [B, Q, D] (the whole image side).
    pub fn embed_images(&self, pixels: &Tensor) -> Result<Tensor> {
        self.image_embeddings(&self.image_tokens(pixels)?)
    }

    /// Text mode: the Q-Former output [B, L, hidden] of a text batch.
    pub fn text_hidden(&self, text: &TextBatch) -> Result<Tensor> {
        let embeds = self.text_embeddings.forward(&text.input_ids)?;
        let mask = layers::additive_mask(&text.attention_mask)?;
        Ok(self
            .queries
            .qformer
            .forward(&embeds, 0, Some(&mask), None)?)
    }

    /// Texts → ITC unit vectors [B, D] (the [CLS] output, projected).
    pub fn embed_texts(&self, text: &TextBatch) -> Result<Tensor> {
        let hidden = self.text_hidden(text)?;
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.heads.text_embedding(&cls)?)
    }

    /// Joint mode: the Q-Former output [B, Q + L, hidden] of paired images (as memory) and
    /// texts; row `i` of the memory goes with text `i`.
    pub fn joint_hidden(&self, memory: &ImageMemory, text: &TextBatch) -> Result<Tensor> {
        let (b, _) = text.input_ids.dims2()?;
        let nq = self.config.num_query_tokens;
        let embeds = Tensor::cat(
            &[
                &self.queries.queries(b)?,
                &self.text_embeddings.forward(&text.input_ids)?,
            ],
            1,
        )?;
        let query_mask = Tensor::ones((b, nq), text.attention_mask.dtype(), &self.device)?;
        let mask = Tensor::cat(&[&query_mask, &text.attention_mask], 1)?;
        let mask = layers::additive_mask(&mask)?;
        Ok(self
            .queries
            .qformer
            .forward(&embeds, nq, Some(&mask), Some(memory))?)
    }

    /// ITM logits [B, 2] averaged over the query rows, for paired memory and texts.
    pub fn itm_logits(&self, memory: &ImageMemory, text: &TextBatch) -> Result<Tensor> {
        let hidden = self.joint_hidden(memory, text)?;
        let queries = hidden.narrow(1, 0, self.config.num_query_tokens)?;
        Ok(self.heads.itm_logits(&queries)?)
    }

    /// ITM scores of paired images (as memory) and texts.
    pub fn itm(&self, memory: &ImageMemory, text: &TextBatch) -> Result<ItmScores> {
        let logits = self.itm_logits(memory, text)?;
        let probability = candle_nn::ops::softmax_last_dim(&logits)?
            .narrow(D::Minus1, 1, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let logit = logits
            .narrow(D::Minus1, 1, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let log_odds = (logits.narrow(D::Minus1, 1, 1)? - logits.narrow(D::Minus1, 0, 1)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(ItmScores {
            probability,
            logit,
            log_odds,
        })
    }

    /// ITM of one image (memory of batch 1) against every text of a batch, reusing the image's
    /// projected keys/values for all texts.
    pub fn itm_one_image(&self, memory: &ImageMemory, texts: &TextBatch) -> Result<ItmScores> {
        let n = texts.input_ids.dim(0)?;
        self.itm(&memory.repeat_each(n)?, texts)
    }

    /// ITM logits for image tokens and texts paired row by row.
    pub fn itm_pairs(&self, image_tokens: &Tensor, texts: &TextBatch) -> Result<ItmScores> {
        self.itm(&self.image_memory(image_tokens)?, texts)
    }

    /// The ITC projection of query outputs, exposed for callers that already ran image mode.
    pub fn project_queries(&self, query_output: &Tensor) -> Result<Tensor> {
        Ok(self.heads.image_embeddings(query_output)?)
    }
}
