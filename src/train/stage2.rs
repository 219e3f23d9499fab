//! Stage 2: the Q-Former's query outputs, through a linear projection, become soft visual
//! prompts of a frozen OPT, and the Q-Former learns (from its stage-1 weights) to give the
//! language model what it needs to write the caption. The loss is OPT's language-modelling loss
//! on the caption tokens; image rows and the leading `</s>` are not predicted (LAVIS's
//! `Blip2OPT` with an empty prompt).
//!
//! The same decoder, trained alone on captions, is how quarry pre-trains the small OPT of its
//! demo model ([`OptLanguageModel`]).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::losses::next_token_loss;
use crate::model::layers::Linear;
use crate::model::opt::{OptConfig, OptDecoder};
use crate::model::vision::VisionModel;
use crate::model::{Blip2Config, QueryingTransformer};
use crate::tokenize::batch_from_ids;

/// Prefixes of the tensors stage 2 trains.
pub const STAGE2_PREFIXES: [&str; 3] = ["query_tokens", "qformer.", "language_projection."];

/// Labels for captions that start with `</s>`: every real token but the first.
fn caption_labels(texts: &[Vec<u32>], longest: usize, prefix: usize) -> Vec<Vec<Option<u32>>> {
    texts
        .iter()
        .map(|t| {
            let mut labels = vec![None; prefix];
            labels.extend((0..longest).map(|i| if i == 0 { None } else { t.get(i).copied() }));
            labels
        })
        .collect()
}

/// The stage-2 network.
#[derive(Debug, Clone)]
pub struct Stage2Model {
    vision: VisionModel,
    queries: QueryingTransformer,
    language_projection: Linear,
    language_model: OptDecoder,
}

impl Stage2Model {
    /// Builds the network from a training `VarBuilder` holding the captioning checkpoint's
    /// names (`vision_model.*`, `query_tokens`, `qformer.*`, `language_projection.*`,
    /// `language_model.*`).
    pub fn new(config: &Blip2Config, opt: &OptConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        opt.validate().map_err(crate::Error::Config)?;
        Ok(Self {
            vision: VisionModel::new(&config.vision_config, vb.pp("vision_model"))?,
            queries: QueryingTransformer::new(config, vb.clone())?,
            language_projection: Linear::new(
                config.qformer_config.hidden_size,
                opt.embed_dim(),
                vb.pp("language_projection"),
            )?,
            language_model: OptDecoder::new(opt, vb.pp("language_model"))?,
        })
    }

    /// The image encoder's output for pixels [B, 3, S, S].
    pub fn image_tokens(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// The language-modelling loss of captions (OPT ids, `</s>` first, ending with the
    /// end-of-caption token) given image tokens [B, T, D].
    pub fn loss(&self, image_tokens: &Tensor, captions: &[Vec<u32>]) -> crate::Result<Tensor> {
        let device = image_tokens.device();
        let visual = self
            .language_projection
            .forward(&self.queries.image_mode(image_tokens)?)?;
        let (b, q, _) = visual.dims3()?;
        let cfg = self.language_model.config();
        let text = batch_from_ids(captions, None, cfg.pad_token_id, device)?;
        let longest = text.input_ids.dim(1)?;
        let (ids, mask) = (text.input_ids, text.attention_mask);
        let embeds = Tensor::cat(&[&visual, &self.language_model.embed(&ids)?], 1)?;
        let mask = Tensor::cat(&[&Tensor::ones((b, q), mask.dtype(), device)?, &mask], 1)?;
        // Image rows predict nothing: the head runs from the `</s>` row on.
        let logits = self.language_model.logits_from(&embeds, &mask, q)?;
        let labels = caption_labels(captions, longest, 0);
        Ok(next_token_loss(&logits, &labels, 0.0)?)
    }
}

/// An OPT decoder alone (`OPTForCausalLM`), trained on captions: how the demo model's small
/// frozen language model is pre-trained.
#[derive(Debug, Clone)]
pub struct OptLanguageModel {
    decoder: OptDecoder,
}

impl OptLanguageModel {
    /// Builds it from a training `VarBuilder` with `OPTForCausalLM` names (`model.decoder.*`).
    pub fn new(opt: &OptConfig, vb: VarBuilder) -> crate::Result<Self> {
        opt.validate().map_err(crate::Error::Config)?;
        Ok(Self {
            decoder: OptDecoder::new(opt, vb)?,
        })
    }

    /// The language-modelling loss of captions (`</s>` first).
    pub fn loss(
        &self,
        captions: &[Vec<u32>],
        device: &candle_core::Device,
    ) -> crate::Result<Tensor> {
        let cfg = self.decoder.config();
        let text = batch_from_ids(captions, None, cfg.pad_token_id, device)?;
        let longest = text.input_ids.dim(1)?;
        let (ids, mask) = (text.input_ids, text.attention_mask);
        let logits = self
            .decoder
            .logits_from(&self.decoder.embed(&ids)?, &mask, 0)?;
        let labels = caption_labels(captions, longest, 0);
        Ok(next_token_loss(&logits, &labels, 0.0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_skip_image_rows_the_first_token_and_padding() {
        let labels = caption_labels(&[vec![2, 10, 11], vec![2, 12]], 3, 2);
        assert_eq!(
            labels,
            vec![
                vec![None, None, None, Some(10), Some(11)],
                vec![None, None, None, Some(12), None],
            ]
        );
    }
}
