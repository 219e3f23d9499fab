//! The training loop shared by every stage: schedule, AdamW update, progress, checkpoints and
//! resumption.
//!
//! A checkpoint is two things in the output folder: the model folder itself (Hugging Face
//! layout, loadable by `quarry` and transformers at any point of the run) and
//! `training/state.safetensors`, which holds what only a resumed run needs: the f32 values of
//! every trained tensor (the model file may be saved in f16), the tensors only training uses
//! (ITC temperature, ITG head), AdamW's moments, and the step in its metadata. The state is
//! written after the model folder, so an existing state always describes a complete folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::data::{step_rng, Pixels, TrainSet};
use super::folders::{read_config, read_tensors, write_model_folder, write_safetensors};
use super::losses::{sum_losses, Positives};
use super::optim::{AdamW, AdamWSettings, Schedule};
use super::params::{ParamStore, Trainable};
use super::stage1::{
    is_training_only, ItmNegatives, Objectives, Stage1Model, QFORMER_PREFIXES, TEMP,
};
use super::stage2::{OptLanguageModel, Stage2Model, STAGE2_PREFIXES};
use super::swapped_captions::SwapKinds;
use super::vision::{
    read_patch_labels, PatchLabels, VisionObjectives, VisionPretrainModel, PATCH_HEADS,
};
use super::TrainError;
use crate::indexer::PreprocessSpec;
use crate::model::opt::OptConfig;
use crate::model::Blip2Config;
use crate::tokenize::TextTokenizer;

/// How long and how fast to train.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Passes over the images.
    pub epochs: usize,
    /// Image–text pairs per step.
    pub batch: usize,
    /// Learning rate after warm-up.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Learning rate at step 0.
    pub warmup_lr: f64,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// Stop after this many steps (for short runs and tests), whatever `epochs` says; the
    /// schedule still spans all epochs.
    pub max_steps: Option<usize>,
    /// Optimiser settings.
    pub adamw: AdamWSettings,
    /// Seed of initialisation, data order, captions and negatives.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub save_every: usize,
    /// Report progress every this many steps.
    pub log_every: usize,
    /// Continue from the output folder's checkpoint, if it has one.
    pub resume: bool,
    /// Precision of the written model weights (the training state is always f32).
    pub save_dtype: DType,
    /// Where the run computes.
    pub device: Device,
}

/// What the loop reports.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Inputs are loaded; training starts at `start_step` of `total_steps`.
    Started {
        /// Trained tensors.
        trained_tensors: usize,
        /// Trained scalars.
        trained_parameters: usize,
        /// First step of this process (0 unless resumed).
        start_step: usize,
        /// Steps of the whole run.
        total_steps: usize,
        /// Seconds spent loading data and precomputing frozen features.
        prepare_s: f64,
    },
    /// A step finished.
    Step(StepReport),
    /// A checkpoint was written.
    Checkpoint {
        /// Steps done.
        step: usize,
        /// The model folder.
        dir: PathBuf,
    },
}

/// One step's numbers.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Epoch of this step (0-based).
    pub epoch: usize,
    /// Each loss by name, and `total`.
    pub losses: Vec<(&'static str, f32)>,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Image–text pairs per second over the steps of this process.
    pub pairs_per_s: f64,
    /// Seconds since training started in this process.
    pub elapsed_s: f64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps done in all (including those before a resume).
    pub steps: usize,
    /// Mean losses of the first and the last `log_every` steps of this process.
    pub first_losses: Vec<(&'static str, f32)>,
    /// See `first_losses`.
    pub last_losses: Vec<(&'static str, f32)>,
    /// Pairs per second over this process' steps.
    pub pairs_per_s: f64,
    /// Seconds of training in this process.
    pub train_s: f64,
}

/// One stage's model and data, as the loop sees it.
trait Job {
    fn set(&self) -> &TrainSet;
    fn settings(&self) -> &TrainSettings;
    fn pairs_per_step(&self) -> usize {
        self.settings().batch
    }
    fn steps_per_epoch(&self) -> usize {
        self.set().steps_per_epoch(self.settings().batch)
    }
    fn losses(&self, step: usize) -> Result<StepLosses, TrainError>;
    fn write_model(&self, store: &ParamStore, dtype: DType) -> Result<(), TrainError>;
}

/// One step's losses: each by name, as reported, and the sum that is minimised (not always
/// all of them: stage 1 can report ITC without minimising it).
struct StepLosses {
    named: Vec<(&'static str, Tensor)>,
    minimised: Tensor,
}

impl StepLosses {
    /// Every loss minimised.
    fn all(named: Vec<(&'static str, Tensor)>) -> candle_core::Result<Self> {
        let minimised = sum_losses(named.iter().map(|(_, l)| l))?;
        Ok(Self { named, minimised })
    }
}

/// Where a run starts and where it writes.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// Annotation file (LAVIS layout).
    pub annotations: PathBuf,
    /// Folder the annotation's image paths are relative to.
    pub images: PathBuf,
    /// The starting model folder: configuration, preprocessing, tokenizer, optional weights.
    pub init: PathBuf,
    /// The output model folder.
    pub out: PathBuf,
}

fn state_path(out: &Path) -> PathBuf {
    out.join("training").join("state.safetensors")
}

/// A configuration (BLIP-2, or OPT's `text_config`) from JSON read out of `folder`.
fn parse_config<T: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
    folder: &Path,
) -> Result<T, TrainError> {
    serde_json::from_value(config.clone())
        .map_err(|e| TrainError::Input(format!("{}/config.json: {e}", folder.display())))
}

fn read_preprocess(folder: &Path, image_size: usize) -> Result<PreprocessSpec, TrainError> {
    crate::checkpoint::read_preprocessor_spec(folder, image_size).map_err(TrainError::from)
}

/// Image tokens of every image through a frozen encoder, computed once before training: the
/// encoder does not change, so running it every epoch would only repeat work.
struct FrozenFeatures {
    tokens: Tensor,
}

impl FrozenFeatures {
    fn compute(
        pixels: &Pixels,
        n: usize,
        encode: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let mut parts = Vec::new();
        let chunk = 64;
        for start in (0..n).step_by(chunk) {
            let ids: Vec<usize> = (start..(start + chunk).min(n)).collect();
            parts.push(encode(&pixels.batch(&ids, device)?)?.detach());
        }
        Ok(Self {
            tokens: Tensor::cat(&parts, 0)?,
        })
    }

    fn batch(&self, images: &[usize]) -> candle_core::Result<Tensor> {
        let idx: Vec<u32> = images.iter().map(|&i| i as u32).collect();
        self.tokens
            .index_select(&Tensor::new(idx.as_slice(), self.tokens.device())?, 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1

/// Options of stage 1 beyond the paths.
#[derive(Debug, Clone, Default)]
pub struct Stage1Options {
    /// Take the (frozen) image encoder from this model folder's `vision_model.*`.
    pub vision_from: Option<PathBuf>,
    /// Train the image encoder too (how the demo model's encoder is pre-trained).
    pub train_vision: bool,
    /// Initialise the Q-Former from BERT weights in this folder (cross-attention fresh).
    pub bert_init: Option<PathBuf>,
    /// The objectives minimised (default: all three, as BLIP-2).
    pub objectives: Objectives,
    /// How many times ITM counts in the minimised sum; `None` = once, as BLIP-2 (see
    /// [`super::stage1::Stage1Losses::weighted_total`]).
    pub itm_weight: Option<f64>,
    /// Give ITM, per example, one more negative: the example's caption with one fact changed
    /// ([`super::swapped_captions`]).
    pub swapped_negatives: bool,
    /// With `swapped_negatives`, the change may also make one object many
    /// ([`super::swapped_captions::SwapKinds::multiply_objects`]).
    pub multiplied_objects: bool,
    /// Hard negatives ITM draws per example and side; `None` = one, as BLIP-2.
    pub hard_negatives: Option<usize>,
}

struct Stage1Job {
    model: Stage1Model,
    objectives: Objectives,
    itm_weight: f64,
    /// The kinds of change drawn for swapped-caption negatives; `None`: none are given.
    swapped_negatives: Option<SwapKinds>,
    hard_negatives: std::num::NonZeroUsize,
    set: TrainSet,
    pixels: Pixels,
    features: Option<FrozenFeatures>,
    tokenizer: TextTokenizer,
    settings: TrainSettings,
    config_json: serde_json::Value,
    paths: RunPaths,
}

impl Stage1Job {
    /// Per example, its caption with one fact changed (tokenized), unless the change happens to
    /// give another of the image's own captions or the caption names nothing to change.
    fn false_captions(
        &self,
        kinds: SwapKinds,
        batch: &super::data::Batch,
        seed: u64,
        step: usize,
    ) -> Result<Vec<Option<Vec<u32>>>, TrainError> {
        let mut rng = step_rng(seed ^ 0x5a9b, step);
        batch
            .images
            .iter()
            .zip(&batch.captions)
            .map(|(&i, caption)| {
                match super::swapped_captions::swap_one_fact_of(caption, kinds, &mut rng) {
                    Some(t) if !self.set.captions[i].contains(&t.text) => {
                        Ok(Some(self.tokenizer.encode(&[t.text.as_str()])?.remove(0)))
                    }
                    _ => Ok(None),
                }
            })
            .collect()
    }
}

impl Job for Stage1Job {
    fn set(&self) -> &TrainSet {
        &self.set
    }

    fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    fn losses(&self, step: usize) -> Result<StepLosses, TrainError> {
        let s = &self.settings;
        let batch = self.set.batch(s.seed, s.batch, step);
        let tokens = match &self.features {
            Some(f) => f.batch(&batch.images)?,
            None => self
                .model
                .image_tokens(&self.pixels.batch(&batch.images, &s.device)?)?,
        };
        let texts: Vec<&str> = batch.captions.iter().map(String::as_str).collect();
        let ids = self.tokenizer.encode(&texts)?;
        // A text is true of every image that lists it among its captions (short captions
        // repeat across images), not only of the image it was drawn for.
        let positives = Positives::new(
            batch
                .captions
                .iter()
                .map(|c| {
                    batch
                        .images
                        .iter()
                        .map(|&i| self.set.captions[i].iter().any(|k| k == c))
                        .collect()
                })
                .collect(),
        );
        let false_ids = match self.swapped_negatives {
            Some(kinds) => self.false_captions(kinds, &batch, s.seed, step)?,
            None => Vec::new(),
        };
        let mut rng = step_rng(s.seed ^ 0x17a1, step);
        let negatives = ItmNegatives {
            hard_per_side: self.hard_negatives,
            false_texts: &false_ids,
        };
        let l = self.model.losses(
            &tokens,
            &ids,
            negatives,
            &positives,
            &mut rng,
            self.objectives,
        )?;
        let minimised = l.weighted_total(self.itm_weight)?;
        let mut named = vec![("itc", l.itc)];
        named.extend(l.itm.map(|t| ("itm", t)));
        named.extend(l.itg.map(|t| ("itg", t)));
        Ok(StepLosses { named, minimised })
    }

    fn write_model(&self, store: &ParamStore, dtype: DType) -> Result<(), TrainError> {
        let tensors: BTreeMap<String, Tensor> = store
            .all_tensors()
            .into_iter()
            .filter(|(n, _)| !is_training_only(n))
            .collect();
        write_model_folder(
            &self.paths.out,
            self.config_json.clone(),
            "Blip2ForImageTextRetrieval",
            &tensors,
            dtype,
            &[self.paths.init.as_path()],
        )
    }
}

/// Runs (or resumes) stage 1 and writes a `Blip2ForImageTextRetrieval` folder to `paths.out`.
pub fn train_stage1(
    paths: &RunPaths,
    options: &Stage1Options,
    settings: &TrainSettings,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let prepare = Instant::now();
    if !options.objectives.any() {
        return Err(TrainError::Input(
            "stage 1 needs at least one objective to minimise (itc, itm or itg)".into(),
        ));
    }
    let itm_weight = options.itm_weight.unwrap_or(1.0);
    if !(itm_weight.is_finite() && itm_weight > 0.0) {
        return Err(TrainError::Input(format!(
            "the ITM weight must be a positive number (got {itm_weight})"
        )));
    }
    let hard_negatives = std::num::NonZeroUsize::new(options.hard_negatives.unwrap_or(1))
        .ok_or_else(|| {
            TrainError::Input("ITM needs at least one hard negative per example and side".into())
        })?;
    if options.multiplied_objects && !options.swapped_negatives {
        return Err(TrainError::Input(
            "multiplied objects are a kind of swapped-caption negative: give swapped negatives too"
                .into(),
        ));
    }
    // Options that only change ITM's training mean nothing without ITM.
    let itm_options = [
        (itm_weight != 1.0, "an ITM weight"),
        (options.swapped_negatives, "swapped-caption negatives"),
        (hard_negatives.get() != 1, "more than one hard negative"),
    ];
    if let Some((_, what)) = itm_options
        .iter()
        .find(|(given, _)| *given && !options.objectives.itm)
    {
        return Err(TrainError::Input(format!(
            "{what} given, but ITM is not among the objectives"
        )));
    }
    let device = settings.device.clone();
    let config_json = read_config(&paths.init)?;
    let config = parse_config::<Blip2Config>(&config_json, &paths.init)?;
    config.validate()?;
    if !config.qformer_config.use_qformer_text_input {
        return Err(TrainError::Input(format!(
            "{}/config.json: stage 1 trains a retrieval Q-Former, which needs \
             qformer_config.use_qformer_text_input = true",
            paths.init.display()
        )));
    }
    let preprocess = read_preprocess(&paths.init, config.vision_config.image_size)?;
    let tokenizer =
        crate::checkpoint::retrieval_tokenizer(&paths.init, &config).map_err(TrainError::from)?;
    let dec_token = tokenizer.token_id("[DEC]").ok_or_else(|| {
        TrainError::Input(format!(
            "the tokenizer in {} has no [DEC] token, which ITG starts every text with",
            paths.init.display()
        ))
    })?;

    let mut source = read_tensors(&paths.init, "", &device)?;
    if let Some(bert) = &options.bert_init {
        let bert_tensors = read_tensors(bert, "", &device)?;
        for (k, v) in super::bert_init::qformer_from_bert(&bert_tensors, &config)? {
            source.entry(k).or_insert(v);
        }
    }
    if let Some(v) = &options.vision_from {
        let vision = read_tensors(v, "", &device)?;
        // A BLIP-2 folder names the encoder `vision_model.*`; a `Blip2VisionModel` folder (what
        // `quarry train vision` writes) has the bare names.
        let bare = !vision.keys().any(|k| k.starts_with("vision_model."));
        let n = vision
            .into_iter()
            .filter_map(|(k, t)| {
                if bare {
                    Some((format!("vision_model.{k}"), t))
                } else {
                    k.starts_with("vision_model.").then_some((k, t))
                }
            })
            .map(|(k, t)| source.insert(k, t))
            .count();
        if n == 0 {
            return Err(TrainError::Input(format!(
                "{} has no vision_model.* tensors to take the image encoder from",
                v.display()
            )));
        }
    } else if !options.train_vision && !source.keys().any(|k| k.starts_with("vision_model.")) {
        return Err(TrainError::Input(format!(
            "{} has no image encoder weights: stage 1 trains against a frozen, pre-trained \
             encoder (give --vision-from DIR, or pre-train one with --train-vision)",
            paths.init.display()
        )));
    }
    let mut prefixes: Vec<&str> = QFORMER_PREFIXES.to_vec();
    if options.train_vision {
        prefixes.push("vision_model.");
    }
    let store = ParamStore::new(
        source,
        Trainable::prefixes(&prefixes),
        settings.seed,
        &device,
    );
    let temp = store.extra_var(TEMP, &Tensor::new(0.07f32, &device)?)?;
    let model = Stage1Model::new(&config, store.var_builder(), temp, dec_token)?;

    let set = TrainSet::load(&paths.annotations, &paths.images)?;
    check_batch(&set, settings)?;
    let pixels = Pixels::load(&set, &preprocess)?;
    let features = if options.train_vision {
        None
    } else {
        Some(FrozenFeatures::compute(
            &pixels,
            set.len(),
            |p| model.image_tokens(p),
            &device,
        )?)
    };
    let job = Stage1Job {
        model,
        objectives: options.objectives,
        itm_weight,
        swapped_negatives: options.swapped_negatives.then_some(SwapKinds {
            multiply_objects: options.multiplied_objects,
        }),
        hard_negatives,
        set,
        pixels,
        features,
        tokenizer,
        settings: settings.clone(),
        config_json,
        paths: paths.clone(),
    };
    run_loop(&job, &store, settings, &paths.out, prepare, on_event)
}

fn check_batch(set: &TrainSet, settings: &TrainSettings) -> Result<(), TrainError> {
    if settings.batch < 2 {
        return Err(TrainError::Input(
            "--batch must be at least 2 (contrastive learning needs in-batch negatives)".into(),
        ));
    }
    if set.steps_per_epoch(settings.batch) == 0 {
        return Err(TrainError::Input(format!(
            "{} images do not fill one batch of {}",
            set.len(),
            settings.batch
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The image encoder

struct VisionJob {
    model: VisionPretrainModel,
    set: TrainSet,
    pixels: Pixels,
    labels: Vec<PatchLabels>,
    drift_weight: f64,
    settings: TrainSettings,
    vision_config: serde_json::Value,
    init: PathBuf,
    out: PathBuf,
}

impl Job for VisionJob {
    fn set(&self) -> &TrainSet {
        &self.set
    }

    fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    fn losses(&self, step: usize) -> Result<StepLosses, TrainError> {
        let s = &self.settings;
        let batch = self.set.batch(s.seed, s.batch, step);
        let pixels = self.pixels.batch(&batch.images, &s.device)?;
        let labels: Vec<&PatchLabels> = batch.images.iter().map(|&i| &self.labels[i]).collect();
        let losses = self.model.losses(&pixels, &labels)?;
        let minimised = losses.weighted_total(self.drift_weight)?;
        let mut named = vec![("colour", losses.colour), ("shape", losses.shape)];
        named.extend(losses.place.map(|p| ("place", p)));
        named.extend(losses.drift.map(|d| ("drift", d)));
        Ok(StepLosses { named, minimised })
    }

    fn write_model(&self, store: &ParamStore, dtype: DType) -> Result<(), TrainError> {
        let tensors: BTreeMap<String, Tensor> = store
            .all_tensors()
            .into_iter()
            .filter_map(|(n, t)| n.strip_prefix("vision_model.").map(|k| (k.to_string(), t)))
            .collect();
        let mut config = self.vision_config.clone();
        config["model_type"] = serde_json::json!("blip_2_vision_model");
        write_model_folder(
            &self.out,
            config,
            "Blip2VisionModel",
            &tensors,
            dtype,
            &[self.init.as_path()],
        )
    }
}

/// Pre-trains the image encoder described by `paths.init`'s `vision_config` on `quarry synth`
/// scenes with per-patch colour and shape labels, and with `objectives` more
/// ([`super::vision`]), and writes it as a `Blip2VisionModel` folder, which `train_stage1`
/// takes with `vision_from`.
pub fn train_vision_encoder(
    paths: &RunPaths,
    objectives: VisionObjectives,
    settings: &TrainSettings,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let prepare = Instant::now();
    let device = settings.device.clone();
    let config_json = read_config(&paths.init)?;
    let config = parse_config::<Blip2Config>(&config_json, &paths.init)?;
    config.validate()?;
    let v = &config.vision_config;
    let preprocess = read_preprocess(&paths.init, v.image_size)?;
    let set = TrainSet::load(&paths.annotations, &paths.images)?;
    check_batch(&set, settings)?;
    let labels = read_patch_labels(&paths.annotations, v.patches_per_side())?;
    if labels.len() != set.len() {
        return Err(TrainError::Input(format!(
            "{} lists {} scenes for {} images",
            paths.annotations.display(),
            labels.len(),
            set.len()
        )));
    }
    let source = read_tensors(&paths.init, "", &device)?;
    let drift_weight = match objectives.keep_features {
        Some(w) if !(w.is_finite() && w > 0.0) => {
            return Err(TrainError::Input(format!(
                "the weight that keeps the encoder's features must be a positive number (got {w})"
            )))
        }
        Some(_) if !source.keys().any(|k| k.starts_with("vision_model.")) => {
            return Err(TrainError::Input(format!(
                "{} holds no image encoder whose features could be kept",
                paths.init.display()
            )))
        }
        Some(w) => w,
        None => 0.0,
    };
    // The anchor's own f32 copy of the starting encoder, only when there is one.
    let start = if objectives.keep_features.is_some() {
        let tensors: HashMap<String, Tensor> = source
            .iter()
            .filter(|(name, _)| name.starts_with("vision_model."))
            .map(|(name, t)| Ok((name.clone(), t.to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()?;
        Some(candle_nn::VarBuilder::from_tensors(
            tensors,
            DType::F32,
            &device,
        ))
    } else {
        None
    };
    let store = ParamStore::new(
        source,
        Trainable::prefixes(&["vision_model.", PATCH_HEADS]),
        settings.seed,
        &device,
    );
    let model = VisionPretrainModel::new(v, objectives, store.var_builder(), start)?;
    let pixels = Pixels::load(&set, &preprocess)?;
    let job = VisionJob {
        model,
        set,
        pixels,
        labels,
        drift_weight,
        settings: settings.clone(),
        vision_config: config_json["vision_config"].clone(),
        init: paths.init.clone(),
        out: paths.out.clone(),
    };
    run_loop(&job, &store, settings, &paths.out, prepare, on_event)
}

// ---------------------------------------------------------------------------------------------
// Stage 2 and the language model

/// OPT tokenization of a training caption, as LAVIS's `Blip2OPT` does it: `</s>` first, the
/// caption, then the end-of-caption token (`"\n"`, OPT's `eos_token_id` in the BLIP-2 configs).
struct OptCaptions {
    tokenizer: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    max_tokens: usize,
}

impl OptCaptions {
    fn new(folder: &Path, opt: &OptConfig, max_tokens: usize) -> Result<Self, TrainError> {
        let path = folder.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
        Ok(Self {
            tokenizer,
            bos: opt.bos_token_id,
            eos: opt.eos_token_id,
            max_tokens,
        })
    }

    fn encode(&self, caption: &str) -> Result<Vec<u32>, TrainError> {
        let enc = self
            .tokenizer
            .encode(caption, false)
            .map_err(|e| TrainError::Input(format!("tokenizing {caption:?}: {e}")))?;
        let mut ids = vec![self.bos];
        ids.extend(
            enc.get_ids()
                .iter()
                .copied()
                .take(self.max_tokens.saturating_sub(2)),
        );
        ids.push(self.eos);
        Ok(ids)
    }
}

/// LAVIS's `max_txt_len` for OPT captions.
const MAX_CAPTION_TOKENS: usize = 32;

struct Stage2Job {
    model: Stage2Model,
    set: TrainSet,
    features: FrozenFeatures,
    captions: OptCaptions,
    settings: TrainSettings,
    config_json: serde_json::Value,
    carry: Vec<PathBuf>,
    out: PathBuf,
}

impl Job for Stage2Job {
    fn set(&self) -> &TrainSet {
        &self.set
    }

    fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    fn losses(&self, step: usize) -> Result<StepLosses, TrainError> {
        let s = &self.settings;
        let batch = self.set.batch(s.seed, s.batch, step);
        let tokens = self.features.batch(&batch.images)?;
        let ids = batch
            .captions
            .iter()
            .map(|c| self.captions.encode(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StepLosses::all(vec![(
            "lm",
            self.model.loss(&tokens, &ids)?,
        )])?)
    }

    fn write_model(&self, store: &ParamStore, dtype: DType) -> Result<(), TrainError> {
        let carry: Vec<&Path> = self.carry.iter().map(PathBuf::as_path).collect();
        write_model_folder(
            &self.out,
            self.config_json.clone(),
            "Blip2ForConditionalGeneration",
            &store.all_tensors(),
            dtype,
            &carry,
        )
    }
}

/// Where stage 2 takes its parts from.
#[derive(Debug, Clone)]
pub struct Stage2Sources {
    /// A stage-1 retrieval folder: the frozen image encoder and the Q-Former to start from.
    pub qformer_from: PathBuf,
    /// An `OPTForCausalLM` folder (config, weights, tokenizer): the frozen language model.
    pub language_model: PathBuf,
}

/// Runs (or resumes) stage 2 and writes a `Blip2ForConditionalGeneration` folder (legacy hub
/// layout: no `<image>` tokens) to `paths.out`. `paths.init` holds the captioning
/// `config.json` (its `text_config` must describe the language model) and preprocessing.
pub fn train_stage2(
    paths: &RunPaths,
    sources: &Stage2Sources,
    settings: &TrainSettings,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let prepare = Instant::now();
    let device = settings.device.clone();
    let config_json = read_config(&paths.init)?;
    let config = parse_config::<Blip2Config>(&config_json, &paths.init)?;
    let text_config = config.text_config.clone().ok_or_else(|| {
        TrainError::Input(format!(
            "{}/config.json has no text_config for the language model",
            paths.init.display()
        ))
    })?;
    let opt = parse_config::<OptConfig>(&text_config, &paths.init)?;
    let lm_config = parse_config::<OptConfig>(
        &read_config(&sources.language_model)?,
        &sources.language_model,
    )?;
    if (
        lm_config.vocab_size,
        lm_config.hidden_size,
        lm_config.num_hidden_layers,
    ) != (opt.vocab_size, opt.hidden_size, opt.num_hidden_layers)
    {
        return Err(TrainError::Input(format!(
            "the language model in {} does not match text_config of {}/config.json",
            sources.language_model.display(),
            paths.init.display()
        )));
    }
    let preprocess = read_preprocess(&paths.init, config.vision_config.image_size)?;

    let mut source = read_tensors(&paths.init, "", &device)?;
    let stage1 = read_tensors(&sources.qformer_from, "", &device)?;
    for (k, t) in stage1 {
        if k.starts_with("vision_model.") || k.starts_with("qformer.") || k == "query_tokens" {
            source.insert(k, t);
        }
    }
    if !source.keys().any(|k| k.starts_with("vision_model.")) {
        return Err(TrainError::Input(format!(
            "{} has no vision_model.* tensors",
            sources.qformer_from.display()
        )));
    }
    let lm = read_tensors(&sources.language_model, "language_model.", &device)?;
    if lm.is_empty() {
        return Err(TrainError::Input(format!(
            "{} has no language-model weights",
            sources.language_model.display()
        )));
    }
    source.extend(lm);
    let store = ParamStore::new(
        source,
        Trainable::prefixes(&STAGE2_PREFIXES),
        settings.seed,
        &device,
    );
    let model = Stage2Model::new(&config, &opt, store.var_builder())?;
    let set = TrainSet::load(&paths.annotations, &paths.images)?;
    check_batch(&set, settings)?;
    let pixels = Pixels::load(&set, &preprocess)?;
    let features = FrozenFeatures::compute(&pixels, set.len(), |p| model.image_tokens(p), &device)?;
    drop(pixels);
    let job = Stage2Job {
        model,
        set,
        features,
        captions: OptCaptions::new(&sources.language_model, &opt, MAX_CAPTION_TOKENS)?,
        settings: settings.clone(),
        config_json,
        carry: vec![paths.init.clone(), sources.language_model.clone()],
        out: paths.out.clone(),
    };
    run_loop(&job, &store, settings, &paths.out, prepare, on_event)
}

/// Captions per sequence when pre-training the language model: with up to ~18 tokens each,
/// four reach past the 32 image rows plus a caption that stage 2 and captioning use.
const LM_PACKED_CAPTIONS: usize = 4;

struct LmJob {
    model: OptLanguageModel,
    set: TrainSet,
    captions: OptCaptions,
    settings: TrainSettings,
    config_json: serde_json::Value,
    init: PathBuf,
    out: PathBuf,
}

impl Job for LmJob {
    fn set(&self) -> &TrainSet {
        &self.set
    }

    fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    fn losses(&self, step: usize) -> Result<StepLosses, TrainError> {
        let s = &self.settings;
        let batch = self.set.batch(s.seed, s.batch, step);
        let encoded = batch
            .captions
            .iter()
            .map(|c| self.captions.encode(c))
            .collect::<Result<Vec<_>, _>>()?;
        // Sequences of several captions, as language models are pre-trained on packed text:
        // BLIP-2 puts 32 image rows before the caption, so the frozen decoder must already know
        // the positions behind them (a decoder trained on lone captions leaves them random).
        let n = encoded.len();
        let ids: Vec<Vec<u32>> = (0..n)
            .map(|i| {
                let mut seq = encoded[i].clone();
                for k in 1..LM_PACKED_CAPTIONS {
                    seq.extend_from_slice(&encoded[(i + k) % n][1..]);
                }
                seq
            })
            .collect();
        Ok(StepLosses::all(vec![(
            "lm",
            self.model.loss(&ids, &s.device)?,
        )])?)
    }

    fn write_model(&self, store: &ParamStore, dtype: DType) -> Result<(), TrainError> {
        write_model_folder(
            &self.out,
            self.config_json.clone(),
            "OPTForCausalLM",
            &store.all_tensors(),
            dtype,
            &[self.init.as_path()],
        )
    }
}

/// Pre-trains an OPT decoder (`OPTForCausalLM`) on the captions of a training set: how the
/// demo model's small language model is made. `paths.init` holds the OPT `config.json` and
/// tokenizer (weights optional); `paths.images` is only used to resolve the annotation file.
pub fn train_language_model(
    paths: &RunPaths,
    settings: &TrainSettings,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let prepare = Instant::now();
    let device = settings.device.clone();
    let config_json = read_config(&paths.init)?;
    let opt = parse_config::<OptConfig>(&config_json, &paths.init)?;
    let source = read_tensors(&paths.init, "", &device)?;
    let store = ParamStore::new(source, Trainable::prefixes(&[""]), settings.seed, &device);
    let model = OptLanguageModel::new(&opt, store.var_builder())?;
    let set = TrainSet::load(&paths.annotations, &paths.images)?;
    check_batch(&set, settings)?;
    let job = LmJob {
        model,
        set,
        captions: OptCaptions::new(&paths.init, &opt, MAX_CAPTION_TOKENS)?,
        settings: settings.clone(),
        config_json,
        init: paths.init.clone(),
        out: paths.out.clone(),
    };
    run_loop(&job, &store, settings, &paths.out, prepare, on_event)
}

// ---------------------------------------------------------------------------------------------
// The loop

fn run_loop(
    job: &dyn Job,
    store: &ParamStore,
    settings: &TrainSettings,
    out: &Path,
    prepare: Instant,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary, TrainError> {
    let per_epoch = job.steps_per_epoch();
    let scheduled = settings.epochs * per_epoch;
    if scheduled == 0 {
        return Err(TrainError::Input("--epochs must be at least 1".into()));
    }
    let total = settings.max_steps.map_or(scheduled, |m| m.min(scheduled));
    let schedule = Schedule {
        start_lr: settings.warmup_lr,
        peak_lr: settings.lr,
        min_lr: settings.min_lr,
        warmup: settings.warmup_steps.min(scheduled),
        total: scheduled,
    };
    let trained = store.trained();
    let trained_parameters = trained.iter().map(|(_, v)| v.elem_count()).sum();
    let mut optimizer = AdamW::new(trained.clone(), settings.adamw)?;
    let mut start = 0;
    let state_file = state_path(out);
    if settings.resume && state_file.is_file() {
        start = restore(&state_file, &trained, &mut optimizer, settings)?;
    } else if !settings.resume && state_file.is_file() {
        return Err(TrainError::Input(format!(
            "{} already holds a training run: pass --resume to continue it, or choose a new --out",
            out.display()
        )));
    }
    on_event(&TrainEvent::Started {
        trained_tensors: trained.len(),
        trained_parameters,
        start_step: start,
        total_steps: total,
        prepare_s: prepare.elapsed().as_secs_f64(),
    });
    let began = Instant::now();
    let window = settings.log_every.max(1);
    let mut first: Option<Vec<(&'static str, f32)>> = None;
    let mut sums: Vec<(&'static str, f32)> = Vec::new();
    let mut in_window = 0;
    let mut last = Vec::new();
    for step in start..total {
        let StepLosses {
            named: losses,
            minimised: total_loss,
        } = job.losses(step)?;
        let grads = total_loss.backward()?;
        let lr = schedule.lr(step);
        let update = optimizer.update(&grads, lr)?;
        let mut values: Vec<(&'static str, f32)> = losses
            .iter()
            .map(|(n, l)| Ok((*n, l.to_scalar::<f32>()?)))
            .collect::<candle_core::Result<_>>()?;
        values.push(("total", total_loss.to_scalar::<f32>()?));
        if sums.is_empty() {
            sums = values.iter().map(|(n, _)| (*n, 0.0)).collect();
        }
        for (s, (_, v)) in sums.iter_mut().zip(&values) {
            s.1 += v;
        }
        in_window += 1;
        let done = step + 1;
        if in_window == window || done == total {
            let mean: Vec<(&'static str, f32)> = sums
                .iter()
                .map(|(n, s)| (*n, s / in_window as f32))
                .collect();
            if first.is_none() {
                first = Some(mean.clone());
            }
            last = mean.clone();
            let elapsed = began.elapsed().as_secs_f64();
            on_event(&TrainEvent::Step(StepReport {
                step: done,
                total_steps: total,
                epoch: step / per_epoch.max(1),
                losses: mean,
                lr: update.lr,
                grad_norm: update.grad_norm,
                pairs_per_s: ((done - start) * job.pairs_per_step()) as f64 / elapsed.max(1e-9),
                elapsed_s: elapsed,
            }));
            sums.iter_mut().for_each(|s| s.1 = 0.0);
            in_window = 0;
        }
        if done % settings.save_every.max(1) == 0 || done == total {
            save(job, store, &optimizer, settings, out, done)?;
            on_event(&TrainEvent::Checkpoint {
                step: done,
                dir: out.to_path_buf(),
            });
        }
    }
    if start == total {
        // Nothing left to do (a resumed run that had finished): make sure the folder exists.
        save(job, store, &optimizer, settings, out, total)?;
    }
    let train_s = began.elapsed().as_secs_f64();
    Ok(TrainSummary {
        steps: total,
        first_losses: first.unwrap_or_default(),
        last_losses: last,
        pairs_per_s: ((total - start) * job.pairs_per_step()) as f64 / train_s.max(1e-9),
        train_s,
    })
}

fn save(
    job: &dyn Job,
    store: &ParamStore,
    optimizer: &AdamW,
    settings: &TrainSettings,
    out: &Path,
    step: usize,
) -> Result<(), TrainError> {
    job.write_model(store, settings.save_dtype)?;
    let mut state: BTreeMap<String, Tensor> = optimizer.state().into_iter().collect();
    for (name, var) in store.trained() {
        state.insert(format!("param.{name}"), var.as_tensor().detach());
    }
    let dir = out.join("training");
    std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut meta = HashMap::new();
    meta.insert("step".into(), step.to_string());
    meta.insert("seed".into(), settings.seed.to_string());
    meta.insert("batch".into(), settings.batch.to_string());
    write_safetensors(&state_path(out), &state, DType::F32, meta)
}

fn restore(
    file: &Path,
    trained: &[(String, candle_core::Var)],
    optimizer: &mut AdamW,
    settings: &TrainSettings,
) -> Result<usize, TrainError> {
    let bytes = std::fs::read(file).map_err(|source| TrainError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", file.display())))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| -> Result<String, TrainError> {
        meta.get(k).cloned().ok_or_else(|| {
            TrainError::Resume(format!("{} lacks `{k}` in its metadata", file.display()))
        })
    };
    for (key, want) in [("seed", settings.seed as usize), ("batch", settings.batch)] {
        if get(key)? != want.to_string() {
            return Err(TrainError::Resume(format!(
                "the checkpoint was made with --{key} {}, this run asks for {want}: resume with \
                 the same settings",
                get(key)?
            )));
        }
    }
    let step: usize = get("step")?
        .parse()
        .map_err(|_| TrainError::Resume(format!("{}: bad step", file.display())))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &settings.device)?;
    for (name, var) in trained {
        let t = tensors.get(&format!("param.{name}")).ok_or_else(|| {
            TrainError::Resume(format!(
                "{} lacks the trained tensor `{name}`",
                file.display()
            ))
        })?;
        var.set(t)?;
    }
    optimizer.restore(&tensors, step)?;
    Ok(step)
}
