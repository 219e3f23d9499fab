//! quarry: self-hosted image–text retrieval with BLIP-2.
//!
//! Data flow, in reading order:
//! 1. [`checkpoint`] reads a model folder exactly as downloaded from the Hugging Face hub
//!    (`config.json`, `model.safetensors` or shards, `tokenizer.json`,
//!    `preprocessor_config.json`), memory-mapped, with errors that name the file and tensor.
//! 2. `quarry_indexer` decodes an image (EXIF orientation, alpha dropped), resizes it with
//!    Pillow's bicubic arithmetic and normalises it.
//! 3. [`model`] runs the frozen EVA ViT, then the Q-Former in image mode: 32 query outputs,
//!    projected to 32 unit vectors (ITC image side).
//! 4. [`tokenize`] turns a text into BERT tokens; the Q-Former in text mode gives its [CLS]
//!    output, projected to one unit vector (ITC text side).
//! 5. ITC = max over the query vectors of the cosine; ITM runs queries and text jointly and
//!    averages the match head over the queries.
//! 6. Captions: the captioning checkpoint's Q-Former output, projected into OPT's input space,
//!    precedes `</s>` and an optional prompt; [`model::generate`] decodes greedily or with beam
//!    search exactly as transformers does. The ViT trunk is shared with the retrieval model
//!    when both checkpoints carry the same one ([`model::shared_vision`]).
//!
//! `--model Salesforce/blip2-itm-vit-g` finds the model in the Hugging Face cache or downloads it
//! ([`hub`]). Without a downloaded checkpoint, [`demo_models`] supplies small built-in models (unpacked
//! into [`cache_dir::cache_dir`]) that every command uses by default.

pub mod ann;
pub mod cache_dir;
pub mod checkpoint;
pub mod demo_models;
pub mod device;
pub mod disk_faults;
pub mod error;
pub mod eval;
pub mod hub;
pub mod indexing;
pub mod itm_fusion;
pub mod json_file;
pub mod library;
pub mod model;
pub mod search;
pub mod server;
pub mod store;
pub mod synth;
pub mod text;
pub mod tokenize;
pub mod train;
pub mod watch;

pub use checkpoint::{CaptionFolder, LoadOptions, RetrievalFolder};
pub use error::{Error, Result};
pub use model::captioner::{CaptionPrecision, Captioner};
pub use model::generate::GenerationSettings;
pub use model::{ItmScores, Retriever, TextBatch};
pub use quarry_indexer as indexer;
