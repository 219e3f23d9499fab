//! Indexing a photo library: the indexer's prepared pixels through the models into the store.

pub mod models;
pub mod run;

pub use models::{model_identity, CaptionSettings, ImageAnalysis, IndexModels};
pub use run::{
    index_paths, FailedFile, IndexError, IndexEvent, IndexOptions, IndexSummary, IndexTarget,
    PlanSummary,
};
