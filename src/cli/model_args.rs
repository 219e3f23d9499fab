//! Flags shared by every command that runs the model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use quarry::indexer::{preprocess_file, DecodeLimits, PreprocessError, PreprocessSpec};
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
    /// Model folder as downloaded from the hub (e.g. Salesforce/blip2-itm-vit-g).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
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
    /// Opens the folder and loads the weights.
    pub fn load(&self) -> Result<Loaded> {
        let device = quarry::device::parse_device(&self.device)?;
        let folder = RetrievalFolder::open(&self.model)?;
        let options = LoadOptions {
            device: device.clone(),
            vision_dtype: self.vision_dtype.into(),
        };
        let model = folder
            .load(&options)
            .with_context(|| format!("loading {}", self.model.display()))?;
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
