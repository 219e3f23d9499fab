//! Typed errors of the quarry library.
//!
//! User errors (a wrong model folder, an image that does not decode, a bad argument) are kept
//! apart from internal ones (a tensor operation that failed), so front ends can tell a person
//! what to fix instead of printing a backtrace.

use std::path::PathBuf;

/// Everything that can go wrong inside the quarry library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model folder is missing a file, or a file in it cannot be read or parsed.
    #[error("model folder {folder}: {message}")]
    ModelFolder {
        /// The folder given by the user.
        folder: PathBuf,
        /// What is wrong, naming the file.
        message: String,
    },
    /// A checkpoint lacks a tensor the configuration asks for.
    #[error("checkpoint {folder}: tensor `{tensor}` is missing")]
    MissingTensor {
        /// The model folder.
        folder: PathBuf,
        /// The full tensor name, as in the safetensors header.
        tensor: String,
    },
    /// A checkpoint tensor has another shape than the configuration implies.
    #[error(
        "checkpoint {folder}: tensor `{tensor}` in {file} has shape {found:?}, \
         but config.json implies {expected:?}"
    )]
    TensorShape {
        /// The model folder.
        folder: PathBuf,
        /// The safetensors file holding the tensor.
        file: String,
        /// The full tensor name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An input (image, text, argument) the user gave cannot be used.
    #[error("{0}")]
    Input(#[from] quarry_indexer::PreprocessError),
    /// Text could not be tokenized.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The requested compute device is unknown or not compiled in.
    #[error("device: {0}")]
    Device(String),
    /// A tensor operation failed: a bug or an exhausted resource, not a user error.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Whether the error is the user's to fix (bad input or folder), as opposed to an internal
    /// failure.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Candle(_))
    }
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
