//! quarry-indexer: from a photo library to model-ready pixels.
//!
//! This crate knows nothing of BLIP-2 beyond an image size, a mean and a standard deviation
//! ([`PreprocessSpec`]). An indexing run goes through its modules in this order:
//!
//! 1. [`walk_library`] lists the images under the given roots, recognised by content (JPEG, PNG,
//!    WebP, GIF, BMP, TIFF, HEIC, AVIF, JPEG XL), following symlinks
//!    without loops, skipping hidden entries and `--exclude` globs, and reporting every file it
//!    cannot use as a [`FileProblem`] without stopping.
//! 2. [`plan_changes`] compares the walk with what the store knows ([`KnownFile`]) and says what
//!    is new, modified, moved, copied, touched, deleted, unchanged, or to retry ([`ChangePlan`]);
//!    unchanged files are not read, the others are identified by [`ContentHash`] (xxh3-128).
//! 3. [`prepare_batches`] decodes and preprocesses the files to embed on a bounded pool of
//!    threads and hands the model full batches ([`PreparedBatches`]), each image with its
//!    [`ImageInfo`] (displayed size, EXIF orientation, capture time, camera) and the hash of the
//!    bytes decoded; a file that fails gives an error in its slot.
//!
//! Underneath, decoding applies the EXIF orientation, refuses images over a pixel limit from
//! the header (decompression bombs), drops alpha the way PIL's `convert("RGB")` does, resizes
//! with a port of Pillow's bicubic resampling (the filter the checkpoints were trained and
//! evaluated with), and normalises into CHW f32 planes.

mod changes;
mod codecs;
mod decode;
mod hash;
mod metadata;
mod normalize;
mod pipeline;
mod resample;
mod sniff;
mod walk;

#[cfg(test)]
mod bad_inputs;
#[cfg(test)]
mod testutil;

pub use changes::{plan_changes, ChangePlan, Copied, HashedFile, KnownFile, Modified, Moved};
pub use decode::{decode_bytes, decode_file, DecodeLimits};
pub use hash::{ContentHash, ParseContentHashError};
pub use metadata::{image_info_from_bytes, read_image_info, CaptureTime, ImageInfo, MetadataError};
pub use normalize::{preprocess_file, to_pixels, PreprocessSpec};
pub use pipeline::{
    prepare_batches, PipelineError, PipelineOptions, Prepared, PreparedBatches, PreparedImage,
};
pub use resample::resize_bicubic;
pub use sniff::{sniff, ImageKind, Sniffed, SNIFF_LEN};
pub use walk::{
    is_image_candidate, walk_library, FileProblem, FoundFile, Walk, WalkError, WalkOptions,
};

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
