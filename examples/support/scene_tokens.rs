//! Shared by the diagnosis examples: the frozen encoder's output for every image of a
//! `quarry synth` folder, one image at a time, as the inference code preprocesses it.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use quarry::eval::Annotations;
use quarry::indexer::{preprocess_file, DecodeLimits};
use quarry::{RetrievalFolder, Retriever};

/// Image tokens [1, T, hidden] of each image of `ann` (paths relative to `data`), in order.
pub fn scene_tokens(
    data: &Path,
    ann: &Annotations,
    folder: &RetrievalFolder,
    retriever: &Retriever,
) -> Result<Vec<Tensor>> {
    let size = folder.preprocess.size as usize;
    ann.images
        .iter()
        .map(|path| {
            let pixels = preprocess_file(
                &data.join(path),
                &folder.preprocess,
                DecodeLimits::default(),
            )?;
            let pixels = Tensor::from_vec(pixels, (1, 3, size, size), &Device::Cpu)?;
            Ok(retriever.image_tokens(&pixels)?)
        })
        .collect()
}
