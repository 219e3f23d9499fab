//! Format version 1, frozen: the first layout of a quarry store, as its first release wrote it.
//!
//! Do not edit: old stores on disk have exactly this shape, and the golden store under
//! `tests/golden/v1` is generated from it. A change to the live layout is a new version file
//! with an upgrade step, never an edit here.
//!
//! Everything lives in sled's default tree (one tree, so that one `apply_batch` commits a
//! whole indexing batch atomically), under textual prefixes followed by big-endian integers
//! (so that byte order is numeric order):
//!
//! | key | value |
//! |---|---|
//! | `meta:format_version` | `u32` BE |
//! | `meta:model` | JSON model identity |
//! | `meta:settings` | JSON store settings |
//! | `meta:state` | JSON [`State`]: last batch, next ids, counters, feature file tail |
//! | `img:` id `u64` | JSON [`ImageRecord`] |
//! | `vec:` id | the ITC vectors, Q×D `f32` little-endian |
//! | `path:` path bytes | image id `u64` BE |
//! | `hash:` content hash `u128` BE, id | empty |
//! | `txt:` id | JSON [`TextRecord`] |
//! | `temb:` id | the text embedding, D `f32` little-endian |
//! | `fail:` path bytes | JSON [`FailureRecord`] |
//! | `feat:` id | JSON [`FeatureLocation`] |
//! | `chg:` batch id | JSON [`BatchChanges`] |
//!
//! Paths are stored as their raw OS bytes in keys; in JSON a path is a string when it is
//! UTF-8 and an array of bytes otherwise (see [`path_json`]).

use serde::{Deserialize, Serialize};

/// This layout's version number.
pub const VERSION: u32 = 1;

/// Key prefixes and key builders of version 1.
pub mod keys {
    /// Model identity (JSON).
    pub const MODEL: &[u8] = b"meta:model";
    /// Store settings (JSON).
    pub const SETTINGS: &[u8] = b"meta:settings";
    /// Counters and tails (JSON [`super::State`]).
    pub const STATE: &[u8] = b"meta:state";
    /// Image records by id.
    pub const IMAGE: &[u8] = b"img:";
    /// ITC vectors by image id.
    pub const VECTORS: &[u8] = b"vec:";
    /// Image id by path bytes.
    pub const PATH: &[u8] = b"path:";
    /// Content hash + image id, empty value.
    pub const HASH: &[u8] = b"hash:";
    /// Text records by id.
    pub const TEXT: &[u8] = b"txt:";
    /// Text embeddings by text id.
    pub const TEXT_EMBEDDING: &[u8] = b"temb:";
    /// Failure records by path bytes.
    pub const FAILURE: &[u8] = b"fail:";
    /// Feature cache locations by image id.
    pub const FEATURES: &[u8] = b"feat:";
    /// Change log entries by batch id.
    pub const CHANGES: &[u8] = b"chg:";

    /// `prefix` followed by `id` big-endian.
    pub fn with_id(prefix: &[u8], id: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + 8);
        key.extend_from_slice(prefix);
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    /// `prefix` followed by raw bytes.
    pub fn with_bytes(prefix: &[u8], bytes: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + bytes.len());
        key.extend_from_slice(prefix);
        key.extend_from_slice(bytes);
        key
    }

    /// The hash index key of image `id` with content hash `hash`.
    pub fn hash(hash: u128, id: u64) -> Vec<u8> {
        let mut key = with_bytes(HASH, &hash.to_be_bytes());
        key.extend_from_slice(&id.to_be_bytes());
        key
    }
}

/// JSON form of a path: a string when it is UTF-8, an array of raw bytes otherwise, so that
/// odd file names survive exactly.
pub mod path_json {
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    /// The raw bytes of a path (its OS bytes on Unix, UTF-8 elsewhere).
    pub fn to_bytes(path: &Path) -> Vec<u8> {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            path.as_os_str().as_bytes().to_vec()
        }
        #[cfg(not(unix))]
        {
            path.to_string_lossy().into_owned().into_bytes()
        }
    }

    /// The path of raw bytes written by [`to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> PathBuf {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
        }
        #[cfg(not(unix))]
        {
            PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
        }
    }

    /// serde `serialize_with` for a path.
    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => Repr::Text(text.to_owned()).serialize(s),
            None => Repr::Bytes(to_bytes(path)).serialize(s),
        }
    }

    /// serde `deserialize_with` for a path.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => PathBuf::from(text),
            Repr::Bytes(bytes) => from_bytes(&bytes),
        })
    }
}

/// Counters and tails, kept in one value so that every batch updates them atomically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Id of the last committed batch (0: none yet; batch ids start at 1).
    pub last_batch: u64,
    /// Id the next new image gets.
    pub next_image: u64,
    /// Id the next new text gets.
    pub next_text: u64,
    /// Number of image records.
    pub images: u64,
    /// Number of vector entries.
    pub vectors: u64,
    /// Number of images with a caption.
    pub captions: u64,
    /// Number of text records (captions and user texts).
    pub texts: u64,
    /// Number of failure records.
    pub failed: u64,
    /// Feature file the next bytes are appended to.
    pub feature_file: u32,
    /// Committed length of that file; bytes past it are from an unacknowledged commit.
    pub feature_len: u64,
    /// Lowest feature file still referenced (files below are leftovers of a compaction).
    pub feature_first_file: u32,
    /// Feature bytes referenced by live images.
    pub feature_live_bytes: u64,
    /// Feature bytes of removed images, reclaimable by compaction.
    pub feature_dead_bytes: u64,
}

/// One image, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id.
    pub id: u64,
    /// File path.
    #[serde(with = "path_json")]
    pub path: std::path::PathBuf,
    /// xxh3-128 of the file bytes.
    pub content_hash: u128,
    /// File size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub modified_ns: i64,
    /// Width in pixels (after EXIF orientation).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Image format name.
    pub format: String,
    /// EXIF capture time as written in the file.
    pub captured_at: Option<String>,
    /// EXIF capture time, seconds since the Unix epoch.
    pub captured_at_s: Option<i64>,
    /// Camera maker.
    pub camera_make: Option<String>,
    /// Camera model.
    pub camera_model: Option<String>,
    /// Caption.
    pub caption: Option<String>,
    /// Id of the caption's text record.
    pub caption_text: Option<u64>,
    /// Batch that indexed the image.
    pub indexed_batch: u64,
}

/// Where a text came from, version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextSource {
    /// Caption of an image.
    Caption {
        /// The image.
        image: u64,
    },
    /// Added by a user.
    User,
}

/// One text (its embedding is under `temb:`), version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRecord {
    /// Text id.
    pub id: u64,
    /// The text.
    pub text: String,
    /// Where it came from.
    pub source: TextSource,
}

/// One file that could not be indexed, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// File path.
    #[serde(with = "path_json")]
    pub path: std::path::PathBuf,
    /// Why.
    pub reason: String,
    /// File size.
    pub size: u64,
    /// Modification time, ns.
    pub modified_ns: i64,
    /// Content hash, if the file could be read.
    pub content_hash: Option<u128>,
    /// How many runs tried it.
    pub attempts: u32,
    /// The last batch that tried it.
    pub last_batch: u64,
}

/// Where an image's ViT features are, version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLocation {
    /// Feature file number (`features/NNNNNN.f16`).
    pub file: u32,
    /// Byte offset in it.
    pub offset: u64,
    /// Byte length (tokens × width × 2).
    pub len: u64,
    /// Tokens (rows).
    pub tokens: u32,
    /// Width (columns).
    pub width: u32,
}

/// A path change in the change log, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathChange {
    /// The image.
    pub image: u64,
    /// Old path.
    #[serde(with = "path_json")]
    pub from: std::path::PathBuf,
    /// New path.
    #[serde(with = "path_json")]
    pub to: std::path::PathBuf,
}

/// One change log entry, version 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchChanges {
    /// The batch.
    pub batch: u64,
    /// Images added.
    pub images_added: Vec<u64>,
    /// Images removed.
    pub images_removed: Vec<u64>,
    /// Texts added.
    pub texts_added: Vec<u64>,
    /// Texts removed.
    pub texts_removed: Vec<u64>,
    /// Paths changed.
    pub paths_changed: Vec<PathChange>,
}

/// Little-endian bytes of `f32` values, the encoding of `vec:` and `temb:`.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// JSON bytes of a record (serialising these types cannot fail).
pub fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("v1 records serialise to JSON")
}

/// One model's fingerprint, version 1 (under `meta:model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// Folder name.
    pub name: String,
    /// Content fingerprint.
    pub fingerprint: String,
    /// Embedding width D.
    pub embed_dim: usize,
    /// Query vectors per image Q.
    pub queries: usize,
    /// Input image size in pixels.
    pub image_size: usize,
}

/// The models of a store, version 1 (`meta:model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The retrieval model.
    pub retrieval: ModelFingerprint,
    /// The captioning model, if any.
    pub captioner: Option<ModelFingerprint>,
}

/// Store settings, version 1 (`meta:settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Whether ViT features are kept.
    pub feature_cache: bool,
    /// Size at which a feature file is closed and the next one started.
    pub feature_file_limit: u64,
}
