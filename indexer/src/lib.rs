//! quarry-indexer: from photo files to model-ready pixels.
//!
//! This crate knows nothing of BLIP-2 beyond an image size, a mean and a standard deviation
//! ([`PreprocessSpec`]). It decodes images of the common formats with their EXIF orientation
//! applied, drops alpha the way PIL's `convert("RGB")` does, resizes with a port of Pillow's
//! bicubic resampling (the filter the checkpoints were trained and evaluated with), and
//! normalises into CHW f32 planes.

mod decode;
mod normalize;
mod resample;

pub use decode::{decode_bytes, decode_file, DecodeLimits};
pub use normalize::{preprocess_file, to_pixels, PreprocessSpec};
pub use resample::resize_bicubic;

use std::path::PathBuf;

/// Why an image could not be turned into pixels. Every variant names the file, so a run over a
/// library can report it and go on.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content is not an image in a supported format, or is corrupt.
    #[error("{path}: not a decodable image: {reason}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's explanation.
        reason: String,
    },
    /// The image is larger than the configured pixel limit (a guard against decompression bombs).
    #[error("{path}: image of {width}x{height} pixels exceeds the limit of {limit} pixels")]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The configured maximum number of pixels.
        limit: u64,
    },
    /// A preprocessing setting is unusable.
    #[error("invalid preprocessing settings: {0}")]
    Spec(String),
}
