//! Resize + rescale + normalise: pixels as the model expects them.
//!
//! The arithmetic follows transformers' `BlipImageProcessor` (4.x, PIL backend) step for step so
//! that an image already at the model size gives bit-identical input: bytes × `rescale_factor`
//! in f64, rounded to f32, then `(x − mean) / std` in f32.

use std::path::Path;

use image::RgbImage;

use crate::{decode_file, resize_bicubic, DecodeLimits, PreprocessError};

/// What the model expects: a square side, per-channel mean and std, the rescale factor.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessSpec {
    /// Output side in pixels (the image is resized to `size`×`size`).
    pub size: u32,
    /// Per-channel mean, subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Multiplier from byte values to [0, 1] (1/255).
    pub rescale_factor: f64,
}

impl PreprocessSpec {
    /// Checks that the settings can be applied.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        if self.size == 0 {
            return Err(PreprocessError::Spec("size must be positive".into()));
        }
        if self.std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(PreprocessError::Spec(format!(
                "std {:?} must be positive",
                self.std
            )));
        }
        Ok(())
    }

    /// Number of f32 values per image: 3 × size × size.
    pub fn pixel_count(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }
}

/// Resizes (when needed) and normalises an RGB image into CHW f32 planes.
pub fn to_pixels(img: &RgbImage, spec: &PreprocessSpec) -> Vec<f32> {
    let resized;
    let img = if img.width() == spec.size && img.height() == spec.size {
        img
    } else {
        resized = resize_bicubic(img, spec.size, spec.size);
        &resized
    };
    let plane = spec.size as usize * spec.size as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let scaled = (f64::from(p.0[c]) * spec.rescale_factor) as f32;
            out[c * plane + i] = (scaled - spec.mean[c]) / spec.std[c];
        }
    }
    out
}

/// Decodes, orients, resizes and normalises one image file.
pub fn preprocess_file(
    path: &Path,
    spec: &PreprocessSpec,
    limits: DecodeLimits,
) -> Result<Vec<f32>, PreprocessError> {
    Ok(to_pixels(&decode_file(path, limits)?, spec))
}
