//! BLIP-2 training: stage 1 (the Q-Former against a frozen image encoder, with ITC, ITM and
//! ITG), stage 2 (the Q-Former as a soft prompt of a frozen OPT), and the pre-training of the
//! small OPT of the demo model.
//!
//! BLIP-2 is first of all a training method: freeze the image encoder and the language model,
//! train only the Q-Former. Training runs on the inference model code (`crate::model`): the
//! tensors being trained are candle variables ([`params::ParamStore`]), and the model code's
//! fused CPU kernels step aside for differentiable tensor ops whenever a gradient is needed.
//! Results are written as Hugging Face model folders, so inference loads them unchanged.

pub mod bert_init;
pub mod data;
pub mod folders;
pub mod losses;
pub mod masks;
pub mod optim;
pub mod params;
mod run;
pub mod stage1;
pub mod stage2;
pub mod swapped_captions;
pub mod vision;

use std::path::PathBuf;

pub use run::{
    train_language_model, train_stage1, train_stage2, train_vision_encoder, RunPaths,
    Stage1Options, Stage2Sources, StepReport, TrainEvent, TrainSettings, TrainSummary,
};

/// Why a training run failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The annotation file or its images.
    #[error(transparent)]
    Data(Box<crate::eval::EvalError>),
    /// An input the user gave cannot be used.
    #[error("{0}")]
    Input(String),
    /// A model folder or the model code refused.
    #[error(transparent)]
    Model(Box<crate::Error>),
    /// A checkpoint cannot be resumed.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<crate::eval::EvalError> for TrainError {
    fn from(e: crate::eval::EvalError) -> Self {
        Self::Data(Box::new(e))
    }
}

impl From<crate::Error> for TrainError {
    fn from(e: crate::Error) -> Self {
        Self::Model(Box::new(e))
    }
}
