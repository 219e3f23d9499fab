//! One ViT pass for both models.
//!
//! BLIP-2 trains the Q-Former against a frozen image encoder, so the retrieval checkpoint
//! (`blip2-itm-vit-g`) and the captioning one (`blip2-opt-2.7b`) carry the same EVA ViT-g trunk;
//! only the final `post_layernorm` (LAVIS's `ln_vision`) was trained with each Q-Former. When
//! the trunk tensors hash equal, the trunk runs once per image and each model applies its own
//! final LayerNorm; otherwise each model runs its own ViT. The saving is a whole ViT-g pass per
//! image, the most expensive step of indexing.

use candle_core::Tensor;

use super::captioner::Captioner;
use super::Retriever;
use crate::error::Result;

/// The image encoders of a retrieval model and, optionally, a captioning model.
#[derive(Debug, Clone, Copy)]
pub struct ImageEncoders<'a> {
    retriever: &'a Retriever,
    captioner: Option<&'a Captioner>,
    shared_trunk: bool,
}

/// What the encoders produce for a batch of pixels.
#[derive(Debug, Clone)]
pub struct EncodedImages {
    /// Image tokens for the retrieval Q-Former [B, T, hidden].
    pub retrieval: Tensor,
    /// Image tokens for the captioning Q-Former, when a captioner is configured.
    pub captioning: Option<Tensor>,
}

impl<'a> ImageEncoders<'a> {
    /// `same_trunk` must come from comparing the checkpoints' trunk fingerprints (and their
    /// preprocessing): it decides whether one pass may serve both models.
    pub fn new(
        retriever: &'a Retriever,
        captioner: Option<&'a Captioner>,
        same_trunk: bool,
    ) -> Self {
        Self {
            retriever,
            captioner,
            shared_trunk: same_trunk && captioner.is_some(),
        }
    }

    /// Whether one trunk pass serves both models.
    pub fn shares_trunk(&self) -> bool {
        self.shared_trunk
    }

    /// Runs the ViT(s) on pixels [B, 3, S, S].
    pub fn encode(&self, pixels: &Tensor) -> Result<EncodedImages> {
        let Some(captioner) = self.captioner else {
            return Ok(EncodedImages {
                retrieval: self.retriever.image_tokens(pixels)?,
                captioning: None,
            });
        };
        if self.shared_trunk {
            let trunk = self.retriever.vision().trunk(pixels)?;
            Ok(EncodedImages {
                retrieval: self.retriever.vision().post_layernorm(&trunk)?,
                captioning: Some(captioner.vision().post_layernorm(&trunk)?),
            })
        } else {
            Ok(EncodedImages {
                retrieval: self.retriever.image_tokens(pixels)?,
                captioning: Some(captioner.vision().forward(pixels)?),
            })
        }
    }
}
