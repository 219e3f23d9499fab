//! Recall@K on Karpathy test splits (COCO 5k, Flickr30K 1k) with LAVIS's protocol, so that
//! quarry's numbers are the BLIP-2 paper's numbers.
//!
//! The protocol, as LAVIS's `retrieval` task runs it for BLIP-2:
//! 1. captions normalised by [`caption::pre_caption`] (max 50 words), BERT tokens, at most 35;
//! 2. ITC for every image–text pair ([`protocol::ItcMatrix`]);
//! 3. for every image its top `k_test` texts, and for every text its top `k_test` images, are
//!    re-scored as ITM class-1 logit (averaged over the queries) + ITC; everything else −100
//!    ([`protocol::ItmPlan`], [`protocol::ItmMatrices`]). A model folder may weigh the logit
//!    otherwise ([`crate::itm_fusion`]); the report then gives LAVIS's sum beside it;
//! 4. TR@1/5/10, IR@1/5/10 and their means, in percent, under LAVIS's key names
//!    ([`metrics::RecallMetrics`]).
//!
//! [`Evaluator`] runs it over a model and an image folder with a disk cache
//! ([`cache::FeatureCache`]) that keeps each image's ITC vectors and f16 ViT features, so the
//! 5k-image COCO split never holds ViT features in RAM and reruns skip the ViT.

pub mod annotations;
pub mod cache;
pub mod caption;
pub mod metrics;
pub mod protocol;
mod run;
pub mod served;

use std::path::PathBuf;

pub use annotations::{AnnotationLayout, Annotations};
pub use cache::{default_cache_root, CachePrecision, FeatureCache};
pub use metrics::RecallMetrics;
pub use protocol::{ItcMatrix, ItmMatrices, ItmPlan, RescoredPair};
pub use run::{
    EvalProgress, EvalReport, EvalSettings, Evaluation, Evaluator, FusionReport, NoProgress, Stage,
};

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The annotation file cannot be read or does not have either supported layout.
    #[error("annotations {path}: {message}")]
    Annotations {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The image folder does not exist.
    #[error("image folder {0} does not exist or is not a folder (pass --images DIR)")]
    ImageRoot(PathBuf),
    /// Images named by the annotations are not under the image folder.
    #[error(
        "{count} of {total} images are missing under {root}, e.g. {}; --images must be the \
         folder the annotation paths are relative to",
        first.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingImages {
        /// The image folder.
        root: PathBuf,
        /// How many are missing.
        count: usize,
        /// How many the annotations name.
        total: usize,
        /// The first few missing paths.
        first: Vec<PathBuf>,
    },
    /// An image file cannot be read.
    #[error("{path}: cannot read: {source}")]
    ImageRead {
        /// The image file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An image does not decode; the protocol needs every image, so the run stops.
    #[error("{0}")]
    Image(#[from] quarry_indexer::PreprocessError),
    /// A setting is out of range.
    #[error("invalid evaluation setting: {0}")]
    Setting(String),
    /// The cache folder or a cache file cannot be read or written.
    #[error("embedding cache {path}: {source} (choose another folder with --cache-dir)")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A cache entry is not what this run wrote.
    #[error("embedding cache entry {path}: {reason}")]
    CacheEntry {
        /// The entry file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A search of the served path failed.
    #[error(transparent)]
    Search(Box<crate::search::SearchError>),
    /// The model failed (loading or running). Boxed: the library error is large and this
    /// enum travels through every `Result` of the module.
    #[error(transparent)]
    Model(Box<crate::Error>),
}

impl From<crate::Error> for EvalError {
    fn from(e: crate::Error) -> Self {
        EvalError::Model(Box::new(e))
    }
}

impl From<candle_core::Error> for EvalError {
    fn from(e: candle_core::Error) -> Self {
        EvalError::Model(Box::new(crate::Error::Candle(e)))
    }
}

impl EvalError {
    /// Whether the user can fix it (bad file, folder or setting) rather than an internal
    /// failure.
    pub fn is_user_error(&self) -> bool {
        match self {
            EvalError::Model(e) => e.is_user_error(),
            EvalError::CacheEntry { .. } => false,
            EvalError::Search(e) => e.is_user_error(),
            _ => true,
        }
    }
}
