//! Indexing a photo library: the indexer's prepared pixels through the models into the store.

pub mod imported_captions;
pub mod models;
pub mod run;

pub use imported_captions::ImportedCaptions;
pub use models::{model_identity, CaptionSettings, ImageAnalysis, IndexModels};
pub use run::{
    index_changes, index_paths, index_watch_batch, FailedFile, IndexError, IndexEvent,
    IndexOptions, IndexSummary, IndexTarget, PlanSummary,
};
