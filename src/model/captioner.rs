//! `Blip2ForConditionalGeneration` with an OPT decoder: captions and prompted answers.
//!
//! The image goes through the ViT and the Q-Former in image mode; `language_projection` turns
//! the query outputs into as many rows of OPT input, placed before `</s>` and the prompt. Both
//! hub layouts give that same sequence: the current one marks the rows with `<image>` tokens
//! (`image_token_index`) and scatters them in, the legacy one concatenates them in front. The
//! `<image>` ids are kept in the sequence the logits processors see, as transformers does.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::generate::{beam_search, greedy, GenerationSettings};
use super::layers::Linear;
use super::opt::{DecoderState, OptConfig, OptDecoder};
use super::vision::VisionModel;
use super::{Blip2Config, QueryingTransformer};
use crate::error::{Error, Result};

/// Precisions of the captioning model's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptionPrecision {
    /// The ViT.
    pub vision: DType,
    /// The OPT decoder (its softmax and logits are always f32).
    pub language: DType,
}

impl Default for CaptionPrecision {
    fn default() -> Self {
        Self {
            vision: DType::F32,
            language: DType::F32,
        }
    }
}

/// One generated caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// New token ids, ending with the end-of-sequence token when one was produced.
    pub token_ids: Vec<u32>,
    /// For beam search, the winning hypothesis' length-normalised log-probability.
    pub score: Option<f32>,
}

/// The captioning model.
#[derive(Debug, Clone)]
pub struct Captioner {
    vision: VisionModel,
    queries: QueryingTransformer,
    language_projection: Linear,
    language_model: OptDecoder,
    image_token_index: Option<u32>,
    num_query_tokens: usize,
    device: Device,
}

impl Captioner {
    /// Builds the model from checkpoint tensors.
    pub fn new(
        config: &Blip2Config,
        opt: &OptConfig,
        vb: VarBuilder,
        precision: CaptionPrecision,
    ) -> Result<Self> {
        config.validate()?;
        opt.validate().map_err(Error::Config)?;
        let v = &config.vision_config;
        let q = &config.qformer_config;
        let vb32 = vb.set_dtype(DType::F32);
        let vision = VisionModel::new(v, vb32.pp("vision_model").to_dtype(precision.vision))?;
        let queries = QueryingTransformer::new(config, vb32.clone())?;
        let language_projection = Linear::new(
            q.hidden_size,
            opt.embed_dim(),
            vb32.pp("language_projection").to_dtype(precision.language),
        )?;
        let language_model =
            OptDecoder::new(opt, vb32.pp("language_model").to_dtype(precision.language))?;
        Ok(Self {
            vision,
            queries,
            language_projection,
            language_model,
            image_token_index: config.image_token_index,
            num_query_tokens: config.num_query_tokens,
            device: vb32.device().clone(),
        })
    }

    /// The image encoder (for sharing its trunk with a retrieval model).
    pub fn vision(&self) -> &VisionModel {
        &self.vision
    }

    /// The OPT decoder's configuration.
    pub fn opt_config(&self) -> &OptConfig {
        self.language_model.config()
    }

    /// Image tokens [B, T, vision hidden] → OPT input rows [B, Q, embed_dim].
    pub fn visual_rows(&self, image_tokens: &Tensor) -> Result<Tensor> {
        let query_output = self.queries.image_mode(image_tokens)?;
        let rows = self
            .language_projection
            .forward(&query_output.to_dtype(self.language_model.dtype())?)?;
        Ok(rows)
    }

    /// The token history the logits processors start from, as transformers 4.57 builds it:
    /// with `<image>` placeholders (current layout) the whole input sequence
    /// `[<image>×Q][pad…][</s>, prompt…]`; in the legacy layout, generated through
    /// `inputs_embeds` as LAVIS does, nothing (the processors see generated tokens only).
    fn processor_history(&self, pad_len: usize, prompt: &[u32]) -> Vec<u32> {
        let Some(image) = self.image_token_index else {
            return Vec::new();
        };
        let pad = self.language_model.config().pad_token_id;
        let mut ids = vec![image; self.num_query_tokens];
        ids.extend(std::iter::repeat_n(pad, pad_len));
        ids.extend_from_slice(prompt);
        ids
    }

    /// Runs the visual rows and prompts through OPT. Each row is `[visual×Q][pad…][prompt]`
    /// (prompts left-padded after the visual rows, as `Blip2Processor` and LAVIS place them).
    /// Returns the decoder state after the inputs, the logits of the next token [B, vocab] and
    /// each row's logits-processor history.
    pub fn prefill(
        &self,
        visual_rows: &Tensor,
        prompts: &[Vec<u32>],
    ) -> Result<(DecoderState<'_>, Tensor, Vec<Vec<u32>>)> {
        let b = visual_rows.dim(0)?;
        if prompts.len() != b {
            return Err(Error::Config(format!(
                "{b} images but {} prompts",
                prompts.len()
            )));
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::Config(
                "a prompt must hold at least the </s> token".into(),
            ));
        }
        let q = self.num_query_tokens;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let total = q + longest;
        let max_positions = self.language_model.config().max_position_embeddings;
        if total > max_positions {
            return Err(Error::Config(format!(
                "the prompt has {longest} tokens; with {q} image rows that exceeds the language \
                 model's {max_positions} positions"
            )));
        }
        let pad = self.language_model.config().pad_token_id;
        let mut rows = Vec::with_capacity(b);
        let mut mask = Vec::with_capacity(b * total);
        let mut histories = Vec::with_capacity(b);
        for (i, prompt) in prompts.iter().enumerate() {
            let pad_len = longest - prompt.len();
            let mut ids = vec![pad; pad_len];
            ids.extend(prompt);
            let text = self
                .language_model
                .embed(&Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?)?;
            let visual = visual_rows.narrow(0, i, 1)?.to_dtype(text.dtype())?;
            rows.push(Tensor::cat(&[&visual, &text], 1)?);
            mask.extend(
                std::iter::repeat_n(1u32, q)
                    .chain(std::iter::repeat_n(0u32, pad_len))
                    .chain(std::iter::repeat_n(1u32, prompt.len())),
            );
            histories.push(self.processor_history(pad_len, prompt));
        }
        let embeds = Tensor::cat(&rows, 0)?;
        let mask = Tensor::from_vec(mask, (b, total), &self.device)?;
        let (state, logits) = DecoderState::prefill(&self.language_model, &embeds, mask)?;
        Ok((state, logits, histories))
    }

    /// Captions images: pixels [B, 3, S, S] and one tokenized prompt per image (`</s>` first).
    pub fn generate(
        &self,
        pixels: &Tensor,
        prompts: &[Vec<u32>],
        settings: &GenerationSettings,
    ) -> Result<Vec<Generated>> {
        let tokens = self.vision.forward(pixels)?;
        self.generate_from_image_tokens(&tokens, prompts, settings)
    }

    /// As [`Captioner::generate`], from ViT outputs already computed (e.g. a shared trunk).
    pub fn generate_from_image_tokens(
        &self,
        image_tokens: &Tensor,
        prompts: &[Vec<u32>],
        settings: &GenerationSettings,
    ) -> Result<Vec<Generated>> {
        settings.validate().map_err(Error::Config)?;
        let visual = self.visual_rows(image_tokens)?;
        let (mut state, logits, histories) = self.prefill(&visual, prompts)?;
        if settings.num_beams == 1 {
            let out = greedy(&mut state, logits, &histories, settings)?;
            Ok(out
                .into_iter()
                .map(|token_ids| Generated {
                    token_ids,
                    score: None,
                })
                .collect())
        } else {
            let out = beam_search(&mut state, logits, &histories, settings)?;
            Ok(out
                .into_iter()
                .map(|(token_ids, score)| Generated {
                    token_ids,
                    score: Some(score),
                })
                .collect())
        }
    }
}
