//! The records a store holds, and what it reports.
//!
//! Persisted types (marked so in their docs) are stored as JSON; their serde shape is the
//! current store format (`quarry_migrations`' newest frozen layout must agree, which the
//! golden-store test checks). Changing a persisted type needs a format migration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use quarry_migrations::v1::path_json;

/// One indexed image. Persisted (`img:` id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Store-assigned id, never reused.
    pub id: u64,
    /// The file's path, as walked.
    #[serde(with = "path_json")]
    pub path: PathBuf,
    /// Hash of the file bytes (the indexer's `ContentHash`, xxh3-128).
    pub content_hash: u128,
    /// File size in bytes.
    pub size: u64,
    /// File modification time, nanoseconds since the Unix epoch.
    pub modified_ns: i64,
    /// Width in pixels after EXIF orientation.
    pub width: u32,
    /// Height in pixels after EXIF orientation.
    pub height: u32,
    /// Container format, e.g. `jpeg`.
    pub format: String,
    /// EXIF capture time as written in the file (`YYYY:MM:DD HH:MM:SS`).
    pub captured_at: Option<String>,
    /// EXIF capture time in seconds since the Unix epoch.
    pub captured_at_s: Option<i64>,
    /// EXIF camera maker.
    pub camera_make: Option<String>,
    /// EXIF camera model.
    pub camera_model: Option<String>,
    /// The generated caption, if a captioner ran.
    pub caption: Option<String>,
    /// The caption's text record (set by the store).
    pub caption_text: Option<u64>,
    /// The batch that indexed the image (set by the store).
    pub indexed_batch: u64,
}

impl ImageRecord {
    /// The date the store orders images by: the capture time, else the file's modification
    /// time, in seconds since the Unix epoch.
    pub fn date_seconds(&self) -> i64 {
        quarry_migrations::v2::image_date(self.captured_at_s, self.modified_ns)
    }
}

/// Where a text came from. Persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextSource {
    /// The caption of an image; removed with the image.
    Caption {
        /// The image it describes.
        image: u64,
    },
    /// Added by a user (image → text search returns it too).
    User,
}

/// One text with its ITC embedding. Persisted (`txt:` id without the embedding, `temb:` id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRecord {
    /// Store-assigned id, never reused.
    pub id: u64,
    /// The text.
    pub text: String,
    /// Where it came from.
    pub source: TextSource,
    /// Its unit ITC vector (D values); not part of the JSON record.
    #[serde(skip)]
    pub embedding: Vec<f32>,
}

/// A file that could not be indexed; a later run retries it when it changes, or always when
/// the caller decides so. Persisted (`fail:` path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The file.
    #[serde(with = "path_json")]
    pub path: PathBuf,
    /// Why it failed, for the user.
    pub reason: String,
    /// File size when it failed.
    pub size: u64,
    /// File modification time when it failed, ns since the Unix epoch.
    pub modified_ns: i64,
    /// Content hash, if the file could be read.
    pub content_hash: Option<u128>,
    /// How many batches recorded this failure.
    pub attempts: u32,
    /// The last batch that recorded it.
    pub last_batch: u64,
}

/// A file the store knows, for change detection: an indexed image or a recorded failure.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownFile {
    /// The file.
    pub path: PathBuf,
    /// Size when it was indexed (or failed).
    pub size: u64,
    /// Modification time then, ns.
    pub modified_ns: i64,
    /// Content hash (always known for images).
    pub content_hash: Option<u128>,
    /// The image id, for an indexed image.
    pub image: Option<u64>,
    /// Whether the file is a recorded failure.
    pub failed: bool,
}

/// A moved image in the change log. Persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathChange {
    /// The image.
    pub image: u64,
    /// Its old path.
    #[serde(with = "path_json")]
    pub from: PathBuf,
    /// Its new path.
    #[serde(with = "path_json")]
    pub to: PathBuf,
}

/// What one committed batch changed, for bringing the ANN and text indexes up to date.
/// Persisted (`chg:` batch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchChanges {
    /// The batch id.
    pub batch: u64,
    /// Images added (their vectors are in the store).
    pub images_added: Vec<u64>,
    /// Images removed.
    pub images_removed: Vec<u64>,
    /// Texts added (captions and user texts).
    pub texts_added: Vec<u64>,
    /// Texts removed (captions of removed images and removed user texts).
    pub texts_removed: Vec<u64>,
    /// Images whose path changed (same content, new place).
    pub paths_changed: Vec<PathChange>,
}

/// Counts for `quarry status --json`: exactly these keys, in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    /// Indexed images.
    pub images: u64,
    /// Images with ITC vectors (equals `images` in a consistent store).
    pub vectors: u64,
    /// Images with a caption.
    pub captions: u64,
    /// Text records: captions plus user texts.
    pub texts: u64,
    /// Files recorded as failed.
    pub failed: u64,
    /// Bytes of the ITM feature cache files on disk (dead bytes included until compaction).
    pub feature_cache_bytes: u64,
}

/// Store settings chosen at creation. Persisted (`meta:settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSettings {
    /// Keep each image's ViT output for ITM re-ranking (about 0.7 MB per image at 257×1408
    /// f16). Can be changed later with [`crate::store::Store::set_feature_cache`].
    pub feature_cache: bool,
    /// A feature file is closed and the next one started past this many bytes.
    pub feature_file_limit: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            feature_cache: true,
            feature_file_limit: 1 << 30,
        }
    }
}

/// An image's cached ViT output: `tokens` rows of `width` f16 values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFeatures {
    /// Rows (ViT tokens, e.g. 257).
    pub tokens: usize,
    /// Columns (ViT width, e.g. 1408).
    pub width: usize,
    /// `tokens × width` values.
    pub data: Vec<half::f16>,
}

impl ImageFeatures {
    /// Features from f32 values (rounded to f16, as stored).
    pub fn from_f32(tokens: usize, width: usize, values: &[f32]) -> Self {
        ImageFeatures {
            tokens,
            width,
            data: values.iter().map(|&v| half::f16::from_f32(v)).collect(),
        }
    }
}

/// Counters and tails updated by every commit. Persisted (`meta:state`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub last_batch: u64,
    pub next_image: u64,
    pub next_text: u64,
    pub images: u64,
    pub vectors: u64,
    pub captions: u64,
    pub texts: u64,
    pub failed: u64,
    pub feature_file: u32,
    pub feature_len: u64,
    pub feature_first_file: u32,
    pub feature_live_bytes: u64,
    pub feature_dead_bytes: u64,
}

/// Where an image's features are. Persisted (`feat:` id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FeatureLocation {
    pub file: u32,
    pub offset: u64,
    pub len: u64,
    pub tokens: u32,
    pub width: u32,
}
