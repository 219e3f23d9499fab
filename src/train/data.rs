//! Training data: a LAVIS-format annotation file and its image folder, batches drawn in a
//! seeded order, and the images as the frozen encoder sees them.
//!
//! Every random choice (the order of an epoch, the caption of an image in a step, the hard
//! negatives) comes from a stream seeded by the run's seed and the step number, never from a
//! stream carried across steps. A run resumed at step k therefore draws exactly the batches an
//! uninterrupted run would have drawn.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::TrainError;
use crate::eval::annotations::Annotations;
use crate::eval::caption::pre_caption;
use crate::indexer::{preprocess_file, DecodeLimits, PreprocessSpec};
use crate::synth::rng::SplitMix64;

/// LAVIS's caption length limit in words (`BlipCaptionProcessor(max_words=50)`).
pub const MAX_CAPTION_WORDS: usize = 50;

/// Image–caption pairs for training.
#[derive(Debug, Clone)]
pub struct TrainSet {
    /// Image files.
    pub images: Vec<PathBuf>,
    /// Each image's captions, normalised as LAVIS's caption processor does.
    pub captions: Vec<Vec<String>>,
}

impl TrainSet {
    /// Reads `annotations` (LAVIS layout: `[{"image", "caption": "…" | ["…", …]}]`), image
    /// paths relative to `images_root`; every image must exist.
    pub fn load(annotations: &Path, images_root: &Path) -> Result<Self, TrainError> {
        let ann = Annotations::load(annotations, None).map_err(TrainError::from)?;
        // Every image must exist before any model work (the error names the missing ones).
        let images = ann.check_images(images_root).map_err(TrainError::from)?;
        let captions: Vec<Vec<String>> = ann
            .img2txt
            .iter()
            .map(|texts| {
                texts
                    .iter()
                    .map(|&t| pre_caption(&ann.texts[t], MAX_CAPTION_WORDS))
                    .collect()
            })
            .collect();
        if images.len() < 2 {
            return Err(TrainError::Input(format!(
                "{} lists {} image(s); training needs at least two",
                annotations.display(),
                images.len()
            )));
        }
        Ok(Self { images, captions })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Full batches per epoch (the last, incomplete batch is dropped: contrastive learning
    /// needs in-batch negatives).
    pub fn steps_per_epoch(&self, batch: usize) -> usize {
        self.len() / batch
    }

    /// The images and the chosen caption of each for global step `step`.
    pub fn batch(&self, seed: u64, batch: usize, step: usize) -> Batch {
        let per_epoch = self.steps_per_epoch(batch).max(1);
        let (epoch, k) = (step / per_epoch, step % per_epoch);
        let order = epoch_order(self.len(), seed, epoch);
        let images: Vec<usize> = order[k * batch..(k + 1) * batch].to_vec();
        let mut rng = step_rng(seed ^ 0xc0ffee, step);
        let captions = images
            .iter()
            .map(|&i| rng.pick(&self.captions[i]).clone())
            .collect();
        Batch { images, captions }
    }
}

/// One step's examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Image indices into the [`TrainSet`].
    pub images: Vec<usize>,
    /// One caption per image.
    pub captions: Vec<String>,
}

/// The random stream of one step.
pub fn step_rng(seed: u64, step: usize) -> SplitMix64 {
    SplitMix64::for_scene(seed, step as u64)
}

/// Mixed into the seed for epoch orders, so they differ from the per-step streams.
const ORDER_STREAM: u64 = 0x5eed_04de_0000_0001;

/// A seeded permutation of `0..n` for an epoch (Fisher–Yates).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix64::for_scene(seed ^ ORDER_STREAM, epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

/// The images as model input: preprocessed once (decoding and resizing every epoch would cost
/// more than the small models' steps), kept as f32 pixels.
#[derive(Debug)]
pub struct Pixels {
    data: Vec<Vec<f32>>,
    size: usize,
}

impl Pixels {
    /// Decodes and preprocesses every image in parallel; the first failure is reported with
    /// its file.
    pub fn load(set: &TrainSet, spec: &PreprocessSpec) -> Result<Self, TrainError> {
        let data = set
            .images
            .par_iter()
            .map(|p| preprocess_file(p, spec, DecodeLimits::default()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrainError::Input(e.to_string()))?;
        Ok(Self {
            data,
            size: spec.size as usize,
        })
    }

    /// Pixels [B, 3, S, S] of the given images.
    pub fn batch(&self, images: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let s = self.size;
        let mut flat = Vec::with_capacity(images.len() * 3 * s * s);
        for &i in images {
            flat.extend_from_slice(&self.data[i]);
        }
        Tensor::from_vec(flat, (images.len(), 3, s, s), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> TrainSet {
        TrainSet {
            images: (0..n).map(|i| PathBuf::from(format!("{i}.png"))).collect(),
            captions: (0..n)
                .map(|i| vec![format!("caption {i} a"), format!("caption {i} b")])
                .collect(),
        }
    }

    #[test]
    fn an_epoch_visits_every_full_batch_once_and_a_step_is_reproducible() {
        let s = set(10);
        assert_eq!(s.steps_per_epoch(3), 3);
        let mut seen: Vec<usize> = (0..3).flat_map(|k| s.batch(9, 3, k).images).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9, "three batches of three distinct images");
        // Step 4 (epoch 1) drawn twice, as a resumed run would: identical.
        assert_eq!(s.batch(9, 3, 4), s.batch(9, 3, 4));
        assert_ne!(epoch_order(10, 9, 0), epoch_order(10, 9, 1));
        assert_ne!(
            s.batch(9, 3, 0),
            s.batch(8, 3, 0),
            "another seed, another batch"
        );
        for (img, cap) in s
            .batch(9, 3, 2)
            .images
            .iter()
            .zip(s.batch(9, 3, 2).captions)
        {
            assert!(cap.starts_with(&format!("caption {img} ")));
        }
    }
}
