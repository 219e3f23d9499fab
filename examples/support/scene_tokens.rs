//! Shared by the diagnosis examples: the frozen encoder's output for the images of a
//! `quarry synth` folder, one image at a time, as the inference code preprocesses it.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use quarry::eval::Annotations;
use quarry::indexer::{preprocess_file, DecodeLimits};
use quarry::{RetrievalFolder, Retriever};

/// Image tokens [1, T, hidden] of the image file at `path`.
pub fn image_tokens(
    path: &Path,
    folder: &RetrievalFolder,
    retriever: &Retriever,
) -> Result<Tensor> {
    let size = folder.preprocess.size as usize;
    let pixels = preprocess_file(path, &folder.preprocess, DecodeLimits::default())?;
    let pixels = Tensor::from_vec(pixels, (1, 3, size, size), &Device::Cpu)?;
    Ok(retriever.image_tokens(&pixels)?)
}

/// [`image_tokens`] of each image of `ann` (paths relative to `data`), in order.
#[allow(dead_code)] // itm_fact_check reads its images one at a time.
pub fn scene_tokens(
    data: &Path,
    ann: &Annotations,
    folder: &RetrievalFolder,
    retriever: &Retriever,
) -> Result<Vec<Tensor>> {
    ann.images
        .iter()
        .map(|path| image_tokens(&data.join(path), folder, retriever))
        .collect()
}
