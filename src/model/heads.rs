//! The retrieval heads of `Blip2ForImageTextRetrieval`: the two ITC projections into the shared
//! embedding space and the ITM classifier.
//!
//! ITC has no temperature in the Hugging Face checkpoint (LAVIS's `temp` was dropped by the
//! conversion): the score is a plain cosine, and an image's score for a text is the maximum
//! over its query vectors. ITM averages the classifier's logits over the query rows.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::layers::{l2_normalize, Linear};

/// `vision_projection`, `text_projection` and `itm_head`.
#[derive(Debug, Clone)]
pub struct RetrievalHeads {
    vision_projection: Linear,
    text_projection: Linear,
    itm_head: Linear,
}

impl RetrievalHeads {
    /// Loads the three heads from the checkpoint's top level.
    pub fn new(hidden: usize, embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            vision_projection: Linear::new(hidden, embed_dim, vb.pp("vision_projection"))?,
            text_projection: Linear::new(hidden, embed_dim, vb.pp("text_projection"))?,
            itm_head: Linear::new(hidden, 2, vb.pp("itm_head"))?,
        })
    }

    /// Query outputs [B, Q, hidden] → unit vectors [B, Q, D].
    pub fn image_embeddings(&self, query_output: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.vision_projection.forward(query_output)?)
    }

    /// The text's [CLS] output [B, hidden] → unit vector [B, D].
    pub fn text_embedding(&self, cls: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.text_projection.forward(cls)?)
    }

    /// Joint-mode query outputs [B, Q, hidden] → ITM logits averaged over queries [B, 2]
    /// (class 1 = "matches").
    pub fn itm_logits(&self, query_output: &Tensor) -> Result<Tensor> {
        self.itm_head.forward(query_output)?.mean(1)
    }
}

/// ITC similarity: for image vectors [B, Q, D] and text vectors [N, D], the maximum over the Q
/// query vectors of the cosine, [B, N].
pub fn itc_scores(image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
    let (b, q, d) = image_embeds.dims3()?;
    let sims = image_embeds
        .reshape((b * q, d))?
        .matmul(&text_embeds.t()?)?
        .reshape((b, q, ()))?;
    sims.max(D::Minus2)
}
