//! The model work of indexing: pixels in, everything the store keeps about an image out.
//!
//! One call per batch runs the ViT once (once for both models when their trunks are the same,
//! see [`crate::model::shared_vision`]), then the retrieval Q-Former (the image's ITC vectors),
//! optionally the captioner (a caption, and that caption's ITC text vector for image → text
//! search), and hands back the retrieval ViT output for the ITM feature cache.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::f16;

use super::ImportedCaptions;
use crate::checkpoint::{CaptionFolder, LoadOptions, RetrievalFolder};
use crate::error::{Error, Result};
use crate::indexer::{preprocess_file, DecodeLimits, PreprocessSpec};
use crate::model::captioner::{CaptionPrecision, Captioner};
use crate::model::generate::GenerationSettings;
use crate::model::shared_vision::ImageEncoders;
use crate::model::Retriever;
use crate::store::{ImageFeatures, ModelFingerprint, ModelIdentity};

/// How captions are generated while indexing.
#[derive(Debug, Clone)]
pub struct CaptionSettings {
    /// Beams (1 = greedy, the default: beam search costs ~1.5× on CPU for little gain in
    /// search quality, since captions feed BM25 and the text index, not a reader).
    pub num_beams: usize,
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Fewest new tokens (default 1, LAVIS's `generate` default: a short scene such as
    /// "three purple diamonds" must be able to end where it ends; LAVIS's COCO evaluation
    /// raises it to 8 for COCO's longer captions).
    pub min_new_tokens: usize,
    /// Text the caption continues ("" = none, as BLIP-2 captions).
    pub prompt: String,
    /// Precisions of the captioner.
    pub precision: CaptionPrecision,
}

impl Default for CaptionSettings {
    fn default() -> Self {
        Self {
            num_beams: 1,
            max_new_tokens: 30,
            min_new_tokens: 1,
            prompt: String::new(),
            precision: CaptionPrecision::default(),
        }
    }
}

/// A loaded captioner with its tokenizer and settings.
#[derive(Debug)]
pub struct CaptionModel {
    /// The folder (tokenizer, preprocessing).
    pub folder: CaptionFolder,
    /// The weights.
    pub model: Captioner,
    settings: GenerationSettings,
    prompt: Vec<u32>,
    /// The content fingerprint, for the store's model identity.
    pub fingerprint: String,
}

/// Each image's caption and its ITC text vector, when captions are made at all.
type PerImageCaptions = (Option<Vec<Option<String>>>, Option<Vec<Option<Vec<f32>>>>);

/// The models an indexing run uses, loaded once.
#[derive(Debug)]
pub struct IndexModels {
    /// The retrieval folder (tokenizer, preprocessing, config).
    pub retrieval: RetrievalFolder,
    /// The retrieval weights.
    pub retriever: Retriever,
    /// The retrieval fingerprint, for the store's model identity.
    pub retrieval_fingerprint: String,
    /// The captioner, when one is configured.
    pub caption: Option<CaptionModel>,
    /// Captions given by the user instead of a captioner (see [`ImportedCaptions`]).
    pub imported_captions: Option<ImportedCaptions>,
    shared_trunk: bool,
    device: Device,
}

/// Everything the model work produces for one image.
#[derive(Debug, Clone)]
pub struct ImageAnalysis {
    /// ITC unit vectors, row-major [queries, dim].
    pub vectors: Vec<f32>,
    /// The ViT output for the ITM feature cache, when asked for.
    pub features: Option<ImageFeatures>,
    /// The generated caption, when a captioner is configured.
    pub caption: Option<String>,
    /// The caption's ITC text vector [dim].
    pub caption_embedding: Option<Vec<f32>>,
}

impl IndexModels {
    /// Opens and loads the retrieval model and, when given, the captioner; fingerprints both
    /// and decides whether one ViT pass can serve them.
    pub fn load(
        retrieval_dir: &Path,
        caption_dir: Option<&Path>,
        options: &LoadOptions,
        caption_settings: &CaptionSettings,
    ) -> Result<Self> {
        let retrieval = RetrievalFolder::open(retrieval_dir)?;
        let retrieval_fingerprint = format!("{:032x}", retrieval.fingerprint()?);
        let retriever = retrieval.load(options)?;
        let mut shared_trunk = false;
        let caption = match caption_dir {
            None => None,
            Some(dir) => {
                let folder = CaptionFolder::open(dir)?;
                let fingerprint = format!("{:032x}", folder.fingerprint()?);
                shared_trunk = folder.preprocess == retrieval.preprocess
                    && caption_settings.precision.vision == options.vision_dtype
                    && folder.vision_trunk_fingerprint()?
                        == retrieval.vision_trunk_fingerprint()?;
                let settings = GenerationSettings {
                    num_beams: caption_settings.num_beams,
                    max_new_tokens: caption_settings.max_new_tokens,
                    min_new_tokens: caption_settings.min_new_tokens,
                    ..GenerationSettings::blip2_caption(
                        folder.opt.eos_token_id,
                        folder.opt.pad_token_id,
                    )
                };
                settings.validate().map_err(Error::Config)?;
                let prompt = folder.encode_prompt(&caption_settings.prompt)?;
                let model = folder.load(&options.device, caption_settings.precision)?;
                Some(CaptionModel {
                    folder,
                    model,
                    settings,
                    prompt,
                    fingerprint,
                })
            }
        };
        Ok(Self {
            retrieval,
            retriever,
            retrieval_fingerprint,
            caption,
            imported_captions: None,
            shared_trunk,
            device: options.device.clone(),
        })
    }

    /// Uses `captions` for the images they name instead of a captioner.
    pub fn with_imported_captions(mut self, captions: ImportedCaptions) -> Self {
        self.caption = None;
        self.imported_captions = Some(captions);
        self
    }

    /// The preprocessing the pipeline must produce (the retrieval model's).
    pub fn preprocess(&self) -> &PreprocessSpec {
        &self.retrieval.preprocess
    }

    /// Whether one ViT pass serves both models.
    pub fn shares_trunk(&self) -> bool {
        self.shared_trunk
    }

    /// Runs the models on a batch of preprocessed images (each `3×S×S`, the retrieval
    /// model's preprocessing). `paths` are only used when the captioner preprocesses
    /// differently and needs its own pixels.
    pub fn analyze(
        &self,
        pixels: &[&[f32]],
        paths: &[&Path],
        keep_features: bool,
    ) -> Result<Vec<ImageAnalysis>> {
        let b = pixels.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let s = self.preprocess().size as usize;
        let flat: Vec<f32> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
        let batch = Tensor::from_vec(flat, (b, 3, s, s), &self.device)?;
        let caption_model = self.caption.as_ref();
        let encoded = match caption_model {
            Some(c) if !self.shared_trunk => {
                // Different trunks: each model runs its own ViT, on its own preprocessing.
                let mut encoded =
                    ImageEncoders::new(&self.retriever, None, false).encode(&batch)?;
                let caption_pixels = self.caption_pixels(c, &batch, paths)?;
                encoded.captioning = Some(c.model.vision().forward(&caption_pixels)?);
                encoded
            }
            _ => ImageEncoders::new(
                &self.retriever,
                caption_model.map(|c| &c.model),
                self.shared_trunk,
            )
            .encode(&batch)?,
        };
        let vectors = self.retriever.image_embeddings(&encoded.retrieval)?;
        let (_, q, d) = vectors.dims3()?;
        let vectors = vectors.flatten_all()?.to_vec1::<f32>()?;
        let features = if keep_features {
            let (_, rows, width) = encoded.retrieval.dims3()?;
            let data = encoded
                .retrieval
                .to_dtype(DType::F16)?
                .flatten_all()?
                .to_vec1::<f16>()?;
            Some((data, rows, width))
        } else {
            None
        };
        // Per image: a captioner captions every image; imported captions cover the images
        // they name.
        let (captions, caption_embeddings): PerImageCaptions =
            match (caption_model, &encoded.captioning) {
                (Some(c), Some(tokens)) => {
                    let prompts = vec![c.prompt.clone(); b];
                    let generated =
                        c.model
                            .generate_from_image_tokens(tokens, &prompts, &c.settings)?;
                    let texts = generated
                        .iter()
                        .map(|g| c.folder.decode(&g.token_ids))
                        .collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let text_batch = self.retrieval.tokenizer.batch(&refs, None, &self.device)?;
                    let embeds = self.retriever.embed_texts(&text_batch)?.to_vec2::<f32>()?;
                    (
                        Some(texts.into_iter().map(Some).collect()),
                        Some(embeds.into_iter().map(Some).collect()),
                    )
                }
                _ => match &self.imported_captions {
                    Some(imported) => {
                        let texts: Vec<Option<String>> =
                            paths.iter().map(|p| imported.get(p).cloned()).collect();
                        let given: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
                        let mut embeds = if given.is_empty() {
                            Vec::new()
                        } else {
                            let text_batch =
                                self.retrieval.tokenizer.batch(&given, None, &self.device)?;
                            self.retriever.embed_texts(&text_batch)?.to_vec2::<f32>()?
                        }
                        .into_iter();
                        let embeds: Vec<Option<Vec<f32>>> = texts
                            .iter()
                            .map(|t| t.as_ref().and_then(|_| embeds.next()))
                            .collect();
                        (Some(texts), Some(embeds))
                    }
                    None => (None, None),
                },
            };
        Ok((0..b)
            .map(|i| ImageAnalysis {
                vectors: vectors[i * q * d..(i + 1) * q * d].to_vec(),
                features: features.as_ref().map(|(data, rows, width)| ImageFeatures {
                    data: data[i * rows * width..(i + 1) * rows * width].to_vec(),
                    tokens: *rows,
                    width: *width,
                }),
                caption: captions.as_ref().and_then(|c| c[i].clone()),
                caption_embedding: caption_embeddings.as_ref().and_then(|e| e[i].clone()),
            })
            .collect())
    }

    fn caption_pixels(&self, c: &CaptionModel, batch: &Tensor, paths: &[&Path]) -> Result<Tensor> {
        if c.folder.preprocess == *self.preprocess() {
            return Ok(batch.clone());
        }
        let spec = &c.folder.preprocess;
        let s = spec.size as usize;
        let mut data = Vec::with_capacity(paths.len() * spec.pixel_count());
        for path in paths {
            data.extend(preprocess_file(path, spec, DecodeLimits::default())?);
        }
        Ok(Tensor::from_vec(
            data,
            (paths.len(), 3, s, s),
            &self.device,
        )?)
    }
}

/// The identity a store records for these models (see [`crate::store::ModelIdentity`]).
pub fn model_identity(models: &IndexModels) -> ModelIdentity {
    let config = &models.retrieval.config;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    ModelIdentity {
        retrieval: ModelFingerprint {
            name: name(models.retrieval.path()),
            fingerprint: models.retrieval_fingerprint.clone(),
            embed_dim: config.image_text_hidden_size,
            queries: config.num_query_tokens,
            image_size: config.vision_config.image_size,
        },
        captioner: match (&models.caption, &models.imported_captions) {
            (Some(c), _) => Some(ModelFingerprint {
                name: name(c.folder.path()),
                fingerprint: c.fingerprint.clone(),
                embed_dim: c.folder.config.image_text_hidden_size,
                queries: c.folder.config.num_query_tokens,
                image_size: c.folder.config.vision_config.image_size,
            }),
            (None, Some(_)) => Some(ImportedCaptions::identity()),
            (None, None) => None,
        },
    }
}
