//! Flags shared by every command that runs the model, and where models come from when no
//! `--model` is given: the built-in demo models ([`quarry::demo_models`]), announced with one
//! line on stderr so nobody mistakes their scores for a real checkpoint's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use quarry::demo_models::{demo_captioner_dir, demo_retrieval_dir};
use quarry::indexer::{preprocess_file, DecodeLimits, PreprocessError, PreprocessSpec};
use quarry::library::{Library, LibraryError};
use quarry::store::{ModelIdentity, StoreError};
use quarry::{LoadOptions, RetrievalFolder, Retriever};

/// Precision names accepted by `--vision-dtype`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit float (default).
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<Precision> for DType {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// `--model`, `--device`, `--vision-dtype`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Model folder, or a hub name (e.g. Salesforce/blip2-itm-vit-g, name@revision) found in
    /// the Hugging Face cache or downloaded [default: the built-in demo model].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// Precision of the image encoder (the Q-Former always runs in f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub vision_dtype: Precision,
}

/// A loaded model with what it needs around it.
pub struct Loaded {
    pub folder: RetrievalFolder,
    pub model: Retriever,
    pub device: Device,
}

impl ModelArgs {
    /// The model folder: `--model`, or the demo model (announced on stderr).
    pub fn dir(&self) -> Result<PathBuf> {
        retrieval_dir(self.model.as_deref())
    }

    /// Opens the folder and loads the weights.
    pub fn load(&self) -> Result<Loaded> {
        let device = quarry::device::parse_device(&self.device)?;
        let dir = self.dir()?;
        let folder = RetrievalFolder::open(&dir)?;
        let options = LoadOptions {
            device: device.clone(),
            vision_dtype: self.vision_dtype.into(),
        };
        let model = folder
            .load(&options)
            .with_context(|| format!("loading {}", dir.display()))?;
        Ok(Loaded {
            folder,
            model,
            device,
        })
    }
}

/// Preprocesses images into one [B, 3, S, S] tensor, returning the paths that made it in
/// and the errors of those that did not (each naming its file).
pub fn pixel_batch(
    paths: &[PathBuf],
    spec: &PreprocessSpec,
    device: &Device,
) -> Result<(Vec<PathBuf>, Option<Tensor>, Vec<PreprocessError>)> {
    let s = spec.size as usize;
    let mut data = Vec::with_capacity(paths.len() * spec.pixel_count());
    let mut good = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match preprocess_file(p, spec, DecodeLimits::default()) {
            Ok(pixels) => {
                data.extend(pixels);
                good.push(p.clone());
            }
            Err(e) => errors.push(e),
        }
    }
    let tensor = if good.is_empty() {
        None
    } else {
        Some(Tensor::from_vec(data, (good.len(), 3, s, s), device)?)
    };
    Ok((good, tensor, errors))
}

/// Where the one-line notes about default models point users.
const REAL_RETRIEVAL: &str = "Salesforce/blip2-itm-vit-g";
const REAL_CAPTIONER: &str = "Salesforce/blip2-opt-2.7b";

/// A `--model`/`--caption-model` value: a folder, or a hub name resolved through the Hugging
/// Face cache and downloaded when missing ([`quarry::hub`]).
pub fn model_folder(given: &Path) -> Result<PathBuf> {
    Ok(quarry::hub::resolve_model_folder(
        given,
        &quarry::hub::HubSettings::from_env(),
    )?)
}

/// The retrieval model folder: the given one, or the demo model with a note on stderr.
pub fn retrieval_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return model_folder(dir);
    }
    let dir = demo_retrieval_dir()?;
    eprintln!(
        "note: no --model given: using the built-in demo retrieval model ({}); pass --model DIR \
         for a real checkpoint such as {REAL_RETRIEVAL}",
        dir.display()
    );
    Ok(dir)
}

/// The captioning model folder: the given one, or the demo captioner with a note on stderr
/// naming `flag`, the command's flag for it.
pub fn caption_dir(given: Option<&Path>, flag: &str) -> Result<PathBuf> {
    if let Some(dir) = given {
        return model_folder(dir);
    }
    let dir = demo_captioner_dir()?;
    eprintln!(
        "note: no {flag} given: using the built-in demo captioner ({}); pass {flag} DIR for a \
         real checkpoint such as {REAL_CAPTIONER}",
        dir.display()
    );
    Ok(dir)
}

/// The models of a command that indexes or serves a store.
#[derive(Debug)]
pub struct StoreModels {
    /// Retrieval model folder.
    pub retrieval: PathBuf,
    /// Captioning model folder, if captions are made.
    pub caption: Option<PathBuf>,
    /// Whether no `--model` was given, so the demo retrieval model was chosen by default.
    pub retrieval_by_default: bool,
}

/// `index` and `serve`: `--model` defaults to the demo model; `--caption-model` stays
/// optional, except that with neither flag (pure defaults) the demo captioner is used too, so
/// `quarry index DIR --store S` gives captions out of the box.
pub fn store_models(model: Option<&Path>, caption_model: Option<&Path>) -> Result<StoreModels> {
    match (model, caption_model) {
        (None, None) => {
            let retrieval = demo_retrieval_dir()?;
            let caption = demo_captioner_dir()?;
            eprintln!(
                "note: no --model given: using the built-in demo retrieval model and captioner \
                 ({} and {}); pass --model DIR (and --caption-model DIR) for real checkpoints \
                 such as {REAL_RETRIEVAL}",
                retrieval.display(),
                caption.display()
            );
            Ok(StoreModels {
                retrieval,
                caption: Some(caption),
                retrieval_by_default: true,
            })
        }
        (model, caption) => {
            let retrieval = retrieval_dir(model)?;
            Ok(StoreModels {
                retrieval,
                caption: caption.map(model_folder).transpose()?,
                retrieval_by_default: model.is_none(),
            })
        }
    }
}

/// Opens a store for these models; when the store was made with other models and the demo
/// model was chosen by default, the error says so first (the store's own message follows).
pub fn open_library(
    store: &Path,
    identity: &ModelIdentity,
    models: &StoreModels,
) -> Result<Library> {
    match Library::open(store, identity) {
        Ok(library) => Ok(library),
        Err(e @ LibraryError::Store(StoreError::ModelMismatch { .. }))
            if models.retrieval_by_default =>
        {
            Err(anyhow::Error::new(e).context(format!(
                "no --model was given, so the built-in demo model was used, but {} was indexed \
                 with other models: pass --model DIR (and --caption-model DIR) with the models \
                 the store was made with (`quarry status --store {}` names them)",
                store.display(),
                store.display()
            )))
        }
        Err(e) => Err(e.into()),
    }
}
