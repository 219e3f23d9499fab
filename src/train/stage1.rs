//! Stage 1: the Q-Former learns to extract from a frozen image encoder the visual
//! representation most relevant to the text, through three objectives that share one network
//! and differ only in their self-attention mask ([`super::masks`]).
//!
//! Each step runs the Q-Former three times over `[queries; text]`: with the unimodal mask
//! (ITC: image vectors from the query rows, the text vector from `[CLS]`), with the
//! bidirectional mask over one positive and two hard-negative pairs per example (ITM; more hard
//! negatives and false captions when asked, [`ItmNegatives`]), and with
//! the multimodal causal mask on the text whose first token is replaced by `[DEC]` (ITG). Only
//! the Q-Former, the query tokens, the text embeddings, the heads and the temperature are
//! updated; the image encoder is frozen unless the run pre-trains it (`train_vision`).

use std::num::NonZeroUsize;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::losses::{
    cross_entropy, itc_loss, next_token_loss, sample_hard_negatives, sum_losses, Positives,
};
use super::masks::{attention_mask, MaskKind};
use crate::model::heads::RetrievalHeads;
use crate::model::layers::{activate, LayerNorm, Linear};
use crate::model::qformer::TextEmbeddings;
use crate::model::vision::VisionModel;
use crate::model::{Blip2Config, QueryingTransformer};
use crate::synth::rng::SplitMix64;

/// The name of the learned ITC temperature in the training state (LAVIS's `temp`; the Hugging
/// Face retrieval checkpoint has no such tensor, so it is kept with the optimiser state).
pub const TEMP: &str = "temp";

/// Prefixes of the tensors stage 1 trains (everything but the image encoder).
pub const QFORMER_PREFIXES: [&str; 8] = [
    "query_tokens",
    "qformer.",
    "embeddings.",
    "vision_projection.",
    "text_projection.",
    "itm_head.",
    "cls.",
    TEMP,
];

/// Tensors only training uses: written to the training state, not to the model folder.
pub fn is_training_only(name: &str) -> bool {
    name == TEMP || name.starts_with("cls.")
}

/// BERT's language-modelling head (`cls.predictions`) for ITG: a transform, then the decoder
/// tied to the word embeddings.
#[derive(Debug, Clone)]
struct LmPredictionHead {
    dense: Linear,
    layer_norm: LayerNorm,
    decoder_weight: Tensor,
    decoder_bias: Tensor,
    act: crate::model::config::Activation,
}

impl LmPredictionHead {
    fn new(
        config: &Blip2Config,
        word_embeddings: Tensor,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let q = &config.qformer_config;
        let h = q.hidden_size;
        Ok(Self {
            dense: Linear::new(h, h, vb.pp("transform.dense"))?,
            layer_norm: LayerNorm::new(h, q.layer_norm_eps, vb.pp("transform.LayerNorm"))?,
            decoder_bias: vb.get(q.vocab_size, "bias")?,
            decoder_weight: word_embeddings,
            act: q.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self
            .layer_norm
            .forward(&activate(self.act, &self.dense.forward(x)?)?)?;
        let (b, l, hd) = h.dims3()?;
        h.reshape((b * l, hd))?
            .matmul(&self.decoder_weight.t()?)?
            .broadcast_add(&self.decoder_bias)?
            .reshape((b, l, ()))
    }
}

/// The stage-1 network: image encoder, Q-Former, heads and the ITG head.
#[derive(Debug, Clone)]
pub struct Stage1Model {
    vision: VisionModel,
    queries: QueryingTransformer,
    text_embeddings: TextEmbeddings,
    heads: RetrievalHeads,
    itg_head: LmPredictionHead,
    temp: Tensor,
    num_query_tokens: usize,
    dec_token: u32,
    pad_token: u32,
}

/// Which objectives a step minimises. ITC is always computed (ITM's hard negatives are drawn
/// from its similarities) but is minimised only when `itc` is set.
///
/// BLIP-2 trains all three; a Q-Former that starts from nothing (no BERT weights) aligns the two
/// modalities far sooner with ITC alone first, because ITG's large language-modelling gradient
/// otherwise dominates the shared layers for the first thousands of steps. ITM trained with
/// ITC stays at the class prior, both after such an ITC phase and from the first step: it sits
/// on a saddle where every pair gets the same score and its own gradient is near zero, so
/// neither weighting it 10× nor drawing its negatives at random moves it while Adam's step
/// sizes are set by ITC's far larger gradient. A few dozen steps of ITM alone move it off
/// (Adam rescales its small gradient; ITC pays for it); trained together again, ITC recovers
/// and ITM stays below the prior but gives back much of what it learned alone, because the
/// negatives ITC draws become hard again. From there, long joint training in large batches
/// improves both, ITM more slowly: it still ranks ITC's candidates worse than ITC after ~2 200
/// steps of 192 (measured in issue #7's notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Objectives {
    /// Image–text contrastive.
    pub itc: bool,
    /// Image–text matching.
    pub itm: bool,
    /// Image-grounded text generation.
    pub itg: bool,
}

impl Objectives {
    /// Whether at least one objective is minimised.
    pub fn any(&self) -> bool {
        self.itc || self.itm || self.itg
    }
}

impl Default for Objectives {
    fn default() -> Self {
        Self {
            itc: true,
            itm: true,
            itg: true,
        }
    }
}

/// What ITM is trained to reject, per example.
#[derive(Debug, Clone, Copy)]
pub struct ItmNegatives<'a> {
    /// Hard negatives drawn from ITC's similarities per example and side: images for each
    /// text, texts for each image (BLIP-2: one of each).
    pub hard_per_side: NonZeroUsize,
    /// Empty, or per image a tokenized text known to be false of it (see
    /// [`super::swapped_captions`]): each one is a further negative.
    pub false_texts: &'a [Option<Vec<u32>>],
}

impl Default for ItmNegatives<'_> {
    /// BLIP-2's: one hard negative per side, no false texts.
    fn default() -> Self {
        Self {
            hard_per_side: NonZeroUsize::MIN,
            false_texts: &[],
        }
    }
}

/// One step's losses (scalars, still attached to the graph).
#[derive(Debug, Clone)]
pub struct Stage1Losses {
    /// Image–text contrastive.
    pub itc: Tensor,
    /// Image–text matching, when computed.
    pub itm: Option<Tensor>,
    /// Image-grounded text generation, when computed.
    pub itg: Option<Tensor>,
    /// Whether ITC is minimised or only computed for ITM's hard negatives.
    pub itc_minimised: bool,
}

impl Stage1Losses {
    /// The sum that is minimised, every objective counted once (as BLIP-2).
    pub fn total(&self) -> candle_core::Result<Tensor> {
        self.weighted_total(1.0)
    }

    /// The sum with ITM counted `itm_weight` times. ITC and ITM pull the one shared Q-Former
    /// in different directions; a small Q-Former trained on the plain sum keeps ITC's ranking
    /// ahead of ITM's, and a weight above 1 moves the balance toward ITM (at ITC's cost).
    pub fn weighted_total(&self, itm_weight: f64) -> candle_core::Result<Tensor> {
        let itc = self.itc_minimised.then(|| self.itc.clone());
        let itm = self.itm.as_ref().map(|t| t * itm_weight).transpose()?;
        sum_losses([itc, itm, self.itg.clone()].iter().flatten())
    }
}

impl Stage1Model {
    /// Builds the network from a training `VarBuilder` (see [`super::params::ParamStore`]).
    /// `dec_token` is the tokenizer's `[DEC]` id, `temp` the ITC temperature tensor.
    pub fn new(
        config: &Blip2Config,
        vb: VarBuilder,
        temp: Tensor,
        dec_token: u32,
    ) -> crate::Result<Self> {
        config.validate()?;
        let q = &config.qformer_config;
        let text_embeddings = TextEmbeddings::new(q, vb.pp("embeddings"))?;
        let word = vb.get(
            (q.vocab_size, q.hidden_size),
            "embeddings.word_embeddings.weight",
        )?;
        Ok(Self {
            vision: VisionModel::new(&config.vision_config, vb.pp("vision_model"))?,
            queries: QueryingTransformer::new(config, vb.clone())?,
            text_embeddings,
            heads: RetrievalHeads::new(q.hidden_size, config.image_text_hidden_size, vb.clone())?,
            itg_head: LmPredictionHead::new(config, word, vb.pp("cls.predictions"))?,
            temp,
            num_query_tokens: config.num_query_tokens,
            dec_token,
            pad_token: q.pad_token_id as u32,
        })
    }

    /// The image encoder's output for pixels [B, 3, S, S].
    pub fn image_tokens(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.vision.forward(pixels)
    }

    /// The current temperature value.
    pub fn temperature(&self) -> candle_core::Result<f32> {
        self.temp.clamp(0.001f32, 0.5f32)?.to_scalar::<f32>()
    }

    /// `[queries; text]` embeddings for token ids [B, L].
    fn joint_embeddings(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let b = ids.dim(0)?;
        Tensor::cat(
            &[
                &self.queries.queries(b)?,
                &self.text_embeddings.forward(ids)?,
            ],
            1,
        )
    }

    /// The three losses for image tokens [B, T, D] and one tokenized text per image (unpadded,
    /// `[CLS] … [SEP]`). `positives` says which texts describe which images; `negatives` what
    /// ITM learns to reject; `rng` draws the hard negatives.
    pub fn losses(
        &self,
        image_tokens: &Tensor,
        texts: &[Vec<u32>],
        negatives: ItmNegatives,
        positives: &Positives,
        rng: &mut SplitMix64,
        objectives: Objectives,
    ) -> crate::Result<Stage1Losses> {
        let b = texts.len();
        if b < 2 || image_tokens.dim(0)? != b || positives.len() != b {
            return Err(crate::Error::Config(format!(
                "a stage-1 batch needs at least two image-text pairs with one text per image \
                 (got {} images, {b} texts)",
                image_tokens.dim(0)?
            )));
        }
        let false_texts = negatives.false_texts;
        if !false_texts.is_empty() && false_texts.len() != b {
            return Err(crate::Error::Config(format!(
                "{} false texts for a batch of {b}: give one (or none) per image",
                false_texts.len()
            )));
        }
        let device = image_tokens.device();
        let nq = self.num_query_tokens;
        // Every row of every pass has one length (padding is masked, so it changes nothing).
        let longest = texts
            .iter()
            .chain(false_texts.iter().flatten())
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let pad = |t: &Vec<u32>| -> Vec<u32> {
            t.iter()
                .copied()
                .chain(std::iter::repeat(self.pad_token))
                .take(longest)
                .collect()
        };
        let mask_of =
            |t: &Vec<u32>| -> Vec<u32> { (0..longest).map(|i| u32::from(i < t.len())).collect() };
        let ids: Vec<Vec<u32>> = texts.iter().map(pad).collect();
        let masks: Vec<Vec<u32>> = texts.iter().map(mask_of).collect();
        // (image, padded ids, mask) of each false text.
        let false_rows: Vec<(usize, Vec<u32>, Vec<u32>)> = false_texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, pad(t), mask_of(t))))
            .collect();
        let ids_tensor = |rows: &[Vec<u32>]| ids_tensor(rows, device);
        let memory = self.queries.qformer.image_memory(image_tokens)?;

        // ITC: unimodal mask, one pass gives both sides.
        let embeds = self.joint_embeddings(&ids_tensor(&ids)?)?;
        let mask = attention_mask(MaskKind::Unimodal, nq, &masks, device)?;
        let hidden = self
            .queries
            .qformer
            .forward(&embeds, nq, Some(&mask), Some(&memory))?;
        let image_feats = self.heads.image_embeddings(&hidden.narrow(1, 0, nq)?)?;
        let text_feats = self
            .heads
            .text_embedding(&hidden.narrow(1, nq, 1)?.squeeze(1)?)?;
        let (itc, sim) = itc_loss(&image_feats, &text_feats, &self.temp, positives)?;
        let itm = if objectives.itm {
            // (image, padded ids, mask): the matches first, then every negative.
            let mut rows: Vec<(usize, &[u32], &[u32])> =
                (0..b).map(|i| (i, &ids[i][..], &masks[i][..])).collect();
            let hard = self.hard_negative_pairs(&sim, negatives.hard_per_side, positives, rng)?;
            rows.extend(
                hard.into_iter()
                    .map(|(i, t)| (i, &ids[t][..], &masks[t][..])),
            );
            rows.extend(false_rows.iter().map(|(i, t, m)| (*i, &t[..], &m[..])));
            Some(self.itm_loss(&rows, b, &memory, device)?)
        } else {
            None
        };
        let itg = if objectives.itg {
            Some(self.itg_loss(&ids, &masks, &memory, device)?)
        } else {
            None
        };
        Ok(Stage1Losses {
            itc,
            itm,
            itg,
            itc_minimised: objectives.itc,
        })
    }

    /// (image, text) pairs of hard negatives drawn from the (detached) similarities: `hard`
    /// images for each text, then `hard` texts for each image, rank r of every example before
    /// rank r + 1 (so one per side gives BLIP-2's rows in BLIP-2's order).
    fn hard_negative_pairs(
        &self,
        sim: &Tensor,
        hard: NonZeroUsize,
        positives: &Positives,
        rng: &mut SplitMix64,
    ) -> crate::Result<Vec<(usize, usize)>> {
        let temp = self.temperature()?;
        let mut pairs = Vec::new();
        for anchor_is_text in [true, false] {
            let sim = if anchor_is_text {
                sim.detach().t()?
            } else {
                sim.detach()
            };
            // As (image, text): a negative must not be described by the text it is paired with.
            let as_pair = |anchor: usize, j: usize| {
                if anchor_is_text {
                    (j, anchor)
                } else {
                    (anchor, j)
                }
            };
            let drawn = sample_hard_negatives(
                &sim.to_vec2()?,
                temp,
                hard.get(),
                |anchor, j| {
                    let (image, text) = as_pair(anchor, j);
                    positives.text_of_image(text, image)
                },
                rng,
            );
            for rank in 0..hard.get() {
                pairs.extend(
                    drawn
                        .iter()
                        .enumerate()
                        .filter_map(|(anchor, js)| js.get(rank).map(|&j| as_pair(anchor, j))),
                );
            }
        }
        Ok(pairs)
    }

    /// ITM's cross-entropy over `rows` (image, padded ids, mask): the first `matches` are
    /// matches, the rest not.
    fn itm_loss(
        &self,
        rows: &[(usize, &[u32], &[u32])],
        matches: usize,
        memory: &crate::model::ImageMemory,
        device: &candle_core::Device,
    ) -> crate::Result<Tensor> {
        let nq = self.num_query_tokens;
        let itm_ids: Vec<Vec<u32>> = rows.iter().map(|(_, t, _)| t.to_vec()).collect();
        let itm_masks: Vec<Vec<u32>> = rows.iter().map(|(_, _, m)| m.to_vec()).collect();
        let image_rows: Vec<u32> = rows.iter().map(|(i, _, _)| *i as u32).collect();
        let itm_memory = memory.select_rows(&Tensor::new(image_rows.as_slice(), device)?)?;
        let embeds = self.joint_embeddings(&ids_tensor(&itm_ids, device)?)?;
        let mask = attention_mask(MaskKind::Bidirectional, nq, &itm_masks, device)?;
        let hidden = self
            .queries
            .qformer
            .forward(&embeds, nq, Some(&mask), Some(&itm_memory))?;
        let logits = self.heads.itm_logits(&hidden.narrow(1, 0, nq)?)?;
        let labels: Vec<Option<u32>> = (0..rows.len())
            .map(|i| Some(u32::from(i < matches)))
            .collect();
        Ok(cross_entropy(&logits, &labels, 0.0)?)
    }

    /// ITG: `[DEC]` first, causal text that sees the queries.
    fn itg_loss(
        &self,
        ids: &[Vec<u32>],
        masks: &[Vec<u32>],
        memory: &crate::model::ImageMemory,
        device: &candle_core::Device,
    ) -> crate::Result<Tensor> {
        let nq = self.num_query_tokens;
        let longest = ids[0].len();
        let ids_tensor = |rows: &[Vec<u32>]| ids_tensor(rows, device);
        let dec_ids: Vec<Vec<u32>> = ids
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t[0] = self.dec_token;
                t
            })
            .collect();
        let embeds = self.joint_embeddings(&ids_tensor(&dec_ids)?)?;
        let mask = attention_mask(MaskKind::MultimodalCausal, nq, masks, device)?;
        let hidden = self
            .queries
            .qformer
            .forward(&embeds, nq, Some(&mask), Some(memory))?;
        let text_hidden = hidden.narrow(1, nq, longest)?;
        let logits = self.itg_head.forward(&text_hidden)?;
        let labels: Vec<Vec<Option<u32>>> = ids
            .iter()
            .zip(masks)
            .map(|(t, m)| {
                t.iter()
                    .zip(m)
                    .map(|(&id, &k)| (k == 1).then_some(id))
                    .collect()
            })
            .collect();
        Ok(next_token_loss(&logits, &labels, 0.1)?)
    }

    /// ITC unit vectors of image tokens [B, Q, D] and texts [B, D] (for checks and evaluation
    /// during training), computed as inference does.
    pub fn itc_vectors(
        &self,
        image_tokens: &Tensor,
        texts: &crate::TextBatch,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let image = self
            .heads
            .image_embeddings(&self.queries.image_mode(image_tokens).map_err(to_candle)?)?;
        let embeds = self.text_embeddings.forward(&texts.input_ids)?;
        let mask = crate::model::layers::additive_mask(&texts.attention_mask)?;
        let hidden = self
            .queries
            .qformer
            .forward(&embeds, 0, Some(&mask), None)?;
        let text = self
            .heads
            .text_embedding(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok((image, text))
    }
}

/// Equal-length token rows as a [B, L] tensor.
fn ids_tensor(rows: &[Vec<u32>], device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let len = rows.first().map_or(0, Vec::len);
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), len), device)
}

fn to_candle(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(v: f32) -> Tensor {
        Tensor::new(v, &candle_core::Device::Cpu).unwrap()
    }

    fn value(t: candle_core::Result<Tensor>) -> f32 {
        t.unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn the_itm_weight_scales_itm_alone_and_itc_counts_only_when_minimised() {
        let losses = Stage1Losses {
            itc: scalar(1.5),
            itm: Some(scalar(0.25)),
            itg: Some(scalar(4.0)),
            itc_minimised: true,
        };
        assert_eq!(value(losses.total()), 5.75);
        assert_eq!(value(losses.weighted_total(3.0)), 1.5 + 0.75 + 4.0);
        let itm_alone = Stage1Losses {
            itc_minimised: false,
            itg: None,
            ..losses
        };
        assert_eq!(value(itm_alone.weighted_total(3.0)), 0.75);
        assert_eq!(value(itm_alone.total()), 0.25);
    }
}
