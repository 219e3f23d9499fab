//! What one commit writes, and how it is applied.
//!
//! Design: the whole store lives in sled's default tree under key prefixes (see
//! [`super::keys`]), so one commit is one `sled::Batch` applied with `apply_batch` — atomic
//! across records, vectors, indexes, counters and the change log, with no optimistic retry
//! loop (sled's multi-tree transactions rerun their closure on conflict and would need all
//! reads inside it). Commits are serialised by the store's writer lock, so the reads made
//! while building a batch cannot be invalidated before it is applied. The batch is built on
//! an [`Overlay`]: reads see the batch's own earlier writes, so a batch may remove an image
//! and index new content at the same path, or swap two paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::keys::{self, date_key, hash, with_bytes, with_id};
use super::records::{
    path_json, BatchChanges, FailureRecord, FeatureLocation, ImageFeatures, ImageRecord,
    PathChange, State, TextRecord, TextSource,
};
use super::{database, decode, StoreError};

/// What the caller knows of a newly indexed image; the store adds the id, caption and batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// The file.
    pub path: PathBuf,
    /// Hash of the file bytes (`quarry_indexer::ContentHash.0`).
    pub content_hash: u128,
    /// File size in bytes.
    pub size: u64,
    /// File modification time, ns since the Unix epoch.
    pub modified_ns: i64,
    /// Width in pixels after EXIF orientation.
    pub width: u32,
    /// Height in pixels after EXIF orientation.
    pub height: u32,
    /// Container format, e.g. `jpeg`.
    pub format: String,
    /// EXIF capture time as written.
    pub captured_at: Option<String>,
    /// EXIF capture time, seconds since the Unix epoch.
    pub captured_at_s: Option<i64>,
    /// EXIF camera maker.
    pub camera_make: Option<String>,
    /// EXIF camera model.
    pub camera_model: Option<String>,
}

/// A caption with its ITC text embedding (it becomes a text record too).
#[derive(Debug, Clone, PartialEq)]
pub struct NewCaption {
    /// The caption.
    pub text: String,
    /// Its unit ITC vector, D values.
    pub embedding: Vec<f32>,
}

/// A newly indexed image.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    /// File facts and EXIF.
    pub info: ImageInfo,
    /// The ITC vectors, Q×D values row-major (Q and D of the store's retrieval model).
    pub vectors: Vec<f32>,
    /// The caption, if a captioner ran.
    pub caption: Option<NewCaption>,
    /// The ViT output for the ITM feature cache; ignored when the cache is off.
    pub features: Option<ImageFeatures>,
}

/// An indexed image whose file moved (same content) or was touched (new mtime).
#[derive(Debug, Clone, PartialEq)]
pub struct PathUpdate {
    /// The path the store has.
    pub from: PathBuf,
    /// The path the file has now (equal to `from` for a touched file).
    pub to: PathBuf,
    /// File size now.
    pub size: u64,
    /// Modification time now, ns.
    pub modified_ns: i64,
}

/// A file that could not be indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFailure {
    /// The file.
    pub path: PathBuf,
    /// Why, for the user.
    pub reason: String,
    /// File size.
    pub size: u64,
    /// Modification time, ns.
    pub modified_ns: i64,
    /// Content hash, if the file could be read.
    pub content_hash: Option<u128>,
}

/// A user-added text with its ITC embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct NewText {
    /// The text.
    pub text: String,
    /// Its unit ITC vector, D values.
    pub embedding: Vec<f32>,
}

/// Everything one commit writes, applied atomically by [`super::Store::commit`] in this
/// order: removals, text removals, path updates, cleared failures, new images, failures,
/// new texts. Indexing a new image at a path clears that path's failure record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchWrite {
    /// Images to remove by id, with their vectors, caption text, index entries and features.
    pub removals: Vec<u64>,
    /// User texts to remove by id (captions go with their image).
    pub remove_texts: Vec<u64>,
    /// Moved or touched images.
    pub path_updates: Vec<PathUpdate>,
    /// Failure records to drop (e.g. the file was deleted); unknown paths are ignored.
    pub clear_failures: Vec<PathBuf>,
    /// New images; the receipt gives their ids in this order.
    pub new_images: Vec<NewImage>,
    /// Failures to record; a path failing again has its attempts counted up.
    pub failures: Vec<NewFailure>,
    /// User texts to add; the receipt gives their ids in this order.
    pub new_texts: Vec<NewText>,
}

impl BatchWrite {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty()
            && self.remove_texts.is_empty()
            && self.path_updates.is_empty()
            && self.clear_failures.is_empty()
            && self.new_images.is_empty()
            && self.failures.is_empty()
            && self.new_texts.is_empty()
    }
}

/// What a commit did; returned only once the batch is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReceipt {
    /// The batch id (monotonically increasing from 1).
    pub batch: u64,
    /// Ids of [`BatchWrite::new_images`], in order.
    pub image_ids: Vec<u64>,
    /// Ids of the caption text records, one per new image (`None` without caption).
    pub caption_ids: Vec<Option<u64>>,
    /// Ids of [`BatchWrite::new_texts`], in order.
    pub text_ids: Vec<u64>,
}

/// Pending writes over the database: reads see earlier writes of the same batch.
pub(crate) struct Overlay<'a> {
    db: &'a sled::Db,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(db: &'a sled::Db) -> Self {
        Overlay {
            db,
            writes: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => Ok(self.db.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub(crate) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    pub(crate) fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }
}

/// A batch built on an overlay, before its features are appended.
pub(crate) struct Built<'w> {
    /// What the commit will report.
    pub receipt: CommitReceipt,
    /// New images' features still to append: (image id, features).
    pub features: Vec<(u64, &'w ImageFeatures)>,
}

/// Dimensions every vector of a batch must have.
pub(crate) struct Shapes {
    pub queries: usize,
    pub dim: usize,
}

fn invalid(message: String) -> StoreError {
    StoreError::InvalidBatch(message)
}

/// Builds the writes of `write` on `overlay`, advancing `state` (counters, ids, batch id).
/// Nothing reaches disk here.
pub(crate) fn build<'w>(
    overlay: &mut Overlay<'_>,
    state: &mut State,
    write: &'w BatchWrite,
    shapes: &Shapes,
    keep_features: bool,
    dir: &Path,
) -> Result<Built<'w>, StoreError> {
    check_shapes(write, shapes)?;
    let batch = state.last_batch + 1;
    let mut changes = BatchChanges {
        batch,
        ..Default::default()
    };
    let sled_err = |e: sled::Error| database(dir, e);

    let load_image = |overlay: &Overlay<'_>, id: u64| -> Result<Option<ImageRecord>, StoreError> {
        let key = with_id(keys::IMAGE, id);
        match overlay.get(&key).map_err(sled_err)? {
            Some(raw) => decode(dir, &key, &raw).map(Some),
            None => Ok(None),
        }
    };
    let path_owner =
        |overlay: &Overlay<'_>, path: &std::path::Path| -> Result<Option<u64>, StoreError> {
            let key = with_bytes(keys::PATH, &path_json::to_bytes(path));
            Ok(overlay
                .get(&key)
                .map_err(sled_err)?
                .and_then(|raw| keys::trailing_id(&raw)))
        };

    // 1. Image removals.
    for &id in &write.removals {
        let record = load_image(overlay, id)?
            .ok_or_else(|| invalid(format!("image id {id} to remove is not in the store")))?;
        overlay.remove(with_id(keys::IMAGE, id));
        overlay.remove(with_id(keys::VECTORS, id));
        let path_key = with_bytes(keys::PATH, &path_json::to_bytes(&record.path));
        if path_owner(overlay, &record.path)? == Some(id) {
            overlay.remove(path_key);
        }
        overlay.remove(hash(record.content_hash, id));
        overlay.remove(date_key(record.date_seconds(), id));
        let feature_key = with_id(keys::FEATURES, id);
        if let Some(raw) = overlay.get(&feature_key).map_err(sled_err)? {
            let location: FeatureLocation = decode(dir, &feature_key, &raw)?;
            state.feature_live_bytes = state.feature_live_bytes.saturating_sub(location.len);
            state.feature_dead_bytes += location.len;
            overlay.remove(feature_key);
        }
        if let Some(text) = record.caption_text {
            overlay.remove(with_id(keys::TEXT, text));
            overlay.remove(with_id(keys::TEXT_EMBEDDING, text));
            state.texts -= 1;
            state.captions -= 1;
            changes.texts_removed.push(text);
        }
        state.images -= 1;
        state.vectors -= 1;
        changes.images_removed.push(id);
    }

    // 2. User text removals.
    for &id in &write.remove_texts {
        let key = with_id(keys::TEXT, id);
        let raw = overlay
            .get(&key)
            .map_err(sled_err)?
            .ok_or_else(|| invalid(format!("text id {id} to remove is not in the store")))?;
        let record: TextRecord = decode(dir, &key, &raw)?;
        if let TextSource::Caption { image } = record.source {
            return Err(invalid(format!(
                "text id {id} is the caption of image {image}; it is removed with the image"
            )));
        }
        overlay.remove(key);
        overlay.remove(with_id(keys::TEXT_EMBEDDING, id));
        state.texts -= 1;
        changes.texts_removed.push(id);
    }

    // 3. Path updates: release every old path first, so that swaps and chains work.
    let mut moved = Vec::with_capacity(write.path_updates.len());
    for update in &write.path_updates {
        let id = path_owner(overlay, &update.from)?.ok_or_else(|| {
            invalid(format!(
                "path update: {} is not an indexed image",
                update.from.display()
            ))
        })?;
        let record = load_image(overlay, id)?.ok_or_else(|| {
            invalid(format!(
                "path {} points to a missing image {id}",
                update.from.display()
            ))
        })?;
        overlay.remove(with_bytes(keys::PATH, &path_json::to_bytes(&update.from)));
        moved.push((update, record));
    }
    for (update, mut record) in moved {
        if let Some(other) = path_owner(overlay, &update.to)? {
            return Err(invalid(format!(
                "path update: {} is already image {other}; remove it in the same batch",
                update.to.display()
            )));
        }
        let to_bytes = path_json::to_bytes(&update.to);
        overlay.insert(
            with_bytes(keys::PATH, &to_bytes),
            record.id.to_be_bytes().to_vec(),
        );
        clear_failure(overlay, state, &to_bytes, dir)?;
        overlay.remove(date_key(record.date_seconds(), record.id));
        if update.from != update.to {
            changes.paths_changed.push(PathChange {
                image: record.id,
                from: update.from.clone(),
                to: update.to.clone(),
            });
        }
        record.path = update.to.clone();
        record.size = update.size;
        record.modified_ns = update.modified_ns;
        overlay.insert(date_key(record.date_seconds(), record.id), Vec::new());
        overlay.insert(with_id(keys::IMAGE, record.id), json(&record));
    }

    // 4. Cleared failures.
    for path in &write.clear_failures {
        clear_failure(overlay, state, &path_json::to_bytes(path), dir)?;
    }

    // 5. New images.
    let mut receipt = CommitReceipt {
        batch,
        image_ids: Vec::new(),
        caption_ids: Vec::new(),
        text_ids: Vec::new(),
    };
    let mut pending_features = Vec::new();
    for image in &write.new_images {
        let info = &image.info;
        if let Some(other) = path_owner(overlay, &info.path)? {
            return Err(invalid(format!(
                "{} is already image {other}; remove it in the same batch to re-index it",
                info.path.display()
            )));
        }
        let id = state.next_image;
        state.next_image += 1;
        let path_bytes = path_json::to_bytes(&info.path);
        clear_failure(overlay, state, &path_bytes, dir)?;
        let caption_text = match &image.caption {
            Some(caption) => {
                let text_id = state.next_text;
                state.next_text += 1;
                let record = TextRecord {
                    id: text_id,
                    text: caption.text.clone(),
                    source: TextSource::Caption { image: id },
                    embedding: Vec::new(),
                };
                overlay.insert(with_id(keys::TEXT, text_id), json(&record));
                overlay.insert(
                    with_id(keys::TEXT_EMBEDDING, text_id),
                    keys::f32_bytes(&caption.embedding),
                );
                state.texts += 1;
                state.captions += 1;
                changes.texts_added.push(text_id);
                Some(text_id)
            }
            None => None,
        };
        let record = ImageRecord {
            id,
            path: info.path.clone(),
            content_hash: info.content_hash,
            size: info.size,
            modified_ns: info.modified_ns,
            width: info.width,
            height: info.height,
            format: info.format.clone(),
            captured_at: info.captured_at.clone(),
            captured_at_s: info.captured_at_s,
            camera_make: info.camera_make.clone(),
            camera_model: info.camera_model.clone(),
            caption: image.caption.as_ref().map(|c| c.text.clone()),
            caption_text,
            indexed_batch: batch,
        };
        overlay.insert(with_id(keys::IMAGE, id), json(&record));
        overlay.insert(with_id(keys::VECTORS, id), keys::f32_bytes(&image.vectors));
        overlay.insert(
            with_bytes(keys::PATH, &path_bytes),
            id.to_be_bytes().to_vec(),
        );
        overlay.insert(hash(info.content_hash, id), Vec::new());
        overlay.insert(date_key(record.date_seconds(), id), Vec::new());
        if keep_features {
            if let Some(features) = &image.features {
                pending_features.push((id, features));
            }
        }
        state.images += 1;
        state.vectors += 1;
        changes.images_added.push(id);
        receipt.image_ids.push(id);
        receipt.caption_ids.push(caption_text);
    }

    // 6. Failures.
    for failure in &write.failures {
        if let Some(other) = path_owner(overlay, &failure.path)? {
            return Err(invalid(format!(
                "failure for {}: the path is image {other}; remove it in the same batch",
                failure.path.display()
            )));
        }
        let key = with_bytes(keys::FAILURE, &path_json::to_bytes(&failure.path));
        let attempts = match overlay.get(&key).map_err(sled_err)? {
            Some(raw) => {
                let previous: FailureRecord = decode(dir, &key, &raw)?;
                previous.attempts + 1
            }
            None => {
                state.failed += 1;
                1
            }
        };
        let record = FailureRecord {
            path: failure.path.clone(),
            reason: failure.reason.clone(),
            size: failure.size,
            modified_ns: failure.modified_ns,
            content_hash: failure.content_hash,
            attempts,
            last_batch: batch,
        };
        overlay.insert(key, json(&record));
    }

    // 7. User texts.
    for text in &write.new_texts {
        let id = state.next_text;
        state.next_text += 1;
        let record = TextRecord {
            id,
            text: text.text.clone(),
            source: TextSource::User,
            embedding: Vec::new(),
        };
        overlay.insert(with_id(keys::TEXT, id), json(&record));
        overlay.insert(
            with_id(keys::TEXT_EMBEDDING, id),
            keys::f32_bytes(&text.embedding),
        );
        state.texts += 1;
        changes.texts_added.push(id);
        receipt.text_ids.push(id);
    }

    overlay.insert(with_id(keys::CHANGES, batch), json(&changes));
    state.last_batch = batch;
    Ok(Built {
        receipt,
        features: pending_features,
    })
}

fn clear_failure(
    overlay: &mut Overlay<'_>,
    state: &mut State,
    path_bytes: &[u8],
    dir: &Path,
) -> Result<(), StoreError> {
    let key = with_bytes(keys::FAILURE, path_bytes);
    if overlay.get(&key).map_err(|e| database(dir, e))?.is_some() {
        overlay.remove(key);
        state.failed -= 1;
    }
    Ok(())
}

fn check_shapes(write: &BatchWrite, shapes: &Shapes) -> Result<(), StoreError> {
    let per_image = shapes.queries * shapes.dim;
    for image in &write.new_images {
        let path = image.info.path.display();
        if image.vectors.len() != per_image {
            return Err(invalid(format!(
                "{path}: {} vector values, the store's model gives {} × {} = {per_image}",
                image.vectors.len(),
                shapes.queries,
                shapes.dim
            )));
        }
        if let Some(caption) = &image.caption {
            if caption.embedding.len() != shapes.dim {
                return Err(invalid(format!(
                    "{path}: caption embedding has {} values, expected {}",
                    caption.embedding.len(),
                    shapes.dim
                )));
            }
        }
        if let Some(f) = &image.features {
            if f.tokens == 0 || f.width == 0 || f.data.len() != f.tokens * f.width {
                return Err(invalid(format!(
                    "{path}: features hold {} values for a {}×{} shape",
                    f.data.len(),
                    f.tokens,
                    f.width
                )));
            }
        }
    }
    for text in &write.new_texts {
        if text.embedding.len() != shapes.dim {
            return Err(invalid(format!(
                "text {:?}: embedding has {} values, expected {}",
                text.text,
                text.embedding.len(),
                shapes.dim
            )));
        }
    }
    Ok(())
}

/// JSON bytes of a persisted record.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise to JSON")
}
