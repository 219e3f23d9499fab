//! The store: one folder holding everything quarry knows about a photo library.
//!
//! ```text
//! DIR/db/          sled: records, ITC vectors, texts, failures, indexes, change log, version
//! DIR/features/    ITM feature cache, append-only f16 files (see `features`)
//! DIR/ann/         HNSW dumps (the ann module), DIR/text/ tantivy (the text module)
//! ```
//!
//! sled is the source of truth; the ANN graph and the BM25 index are derived from it and
//! catch up by replaying the change log ([`Store::changes_since`]) after their own last batch.
//! sled stays behind this module's API (nothing here returns a sled type), so it can be
//! swapped for another embedded database.
//!
//! **Durability contract**: [`Store::commit`] writes one batch atomically (one `apply_batch`
//! on one tree; see `batch`), after fsyncing any feature bytes, and returns only after
//! `flush()` (fsync) — so an image whose commit returned `Ok` survives `kill -9` and power
//! loss, and a commit interrupted before that leaves no trace. The crash test kills a
//! committing child process with SIGKILL at random times and checks exactly this.
//!
//! Only one process may open a store (sled's file lock); a second one gets
//! [`StoreError::InUse`]. Within a process, [`Store`] is `Send + Sync`: reads run
//! concurrently, commits are serialised.

mod batch;
mod caption_quality;
mod database;
mod error;
mod features;
mod keys;
mod model;
mod records;
pub mod space;

#[cfg(test)]
mod crash_test;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::disk_faults::DiskFault;
use batch::{json, Overlay, Shapes};
pub use batch::{
    BatchWrite, CommitReceipt, ImageInfo, NewCaption, NewFailure, NewImage, NewText, PathUpdate,
};
pub use caption_quality::CaptionQuality;
use database::Database;
pub use error::StoreError;
use features::FeatureFiles;
pub use model::{ModelFingerprint, ModelIdentity};
use records::{path_json, FeatureLocation, State};
pub use records::{
    BatchChanges, FailureRecord, ImageFeatures, ImageRecord, KnownFile, PathChange, StoreCounts,
    StoreSettings, TextRecord, TextSource,
};

/// sled's page cache; its default of 1 GiB is far more than a photo library's records need.
const CACHE_BYTES: u64 = 64 << 20;

/// An open store. See the module docs for the layout and the durability contract.
pub struct Store {
    dir: PathBuf,
    db: Database,
    model: ModelIdentity,
    features: FeatureFiles,
    /// The writer lock, holding the committed counters and settings.
    writer: Mutex<Writer>,
    migrated_from: Option<u32>,
}

struct Writer {
    state: State,
    settings: StoreSettings,
    /// Set when the disk failed a write or a sync for a reason other than a full disk: after
    /// a failed fsync the OS may have dropped the written pages while a later fsync succeeds
    /// (the "fsyncgate" lesson), so nothing written after it can be trusted to be durable.
    /// The store then takes no more writes in this process; reopening reads what reached
    /// the disk. A full disk is different: the write did not happen, and a commit once space
    /// is freed is safe.
    failed_write: Option<String>,
}

/// The ITM feature cache's bytes, to decide when [`Store::compact_features`] pays off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureBytes {
    /// Bytes referenced by indexed images.
    pub live: u64,
    /// Bytes of removed images, reclaimable by compaction.
    pub dead: u64,
    /// Bytes of the feature files on disk (`live + dead` in a consistent store).
    pub on_disk: u64,
}

/// What [`Store::compact_features`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    /// Feature file bytes on disk before.
    pub bytes_before: u64,
    /// Feature file bytes on disk after.
    pub bytes_after: u64,
    /// Images whose features were moved.
    pub images: u64,
}

pub(crate) fn database(dir: &Path, source: sled::Error) -> StoreError {
    // `Unsupported` is what sled says of a damaged `conf` file (its version field read wrong):
    // every store was made with this sled.
    if let sled::Error::Corruption { .. } | sled::Error::Unsupported(_) = source {
        return StoreError::DatabaseDamaged {
            dir: dir.to_owned(),
            source,
        };
    }
    StoreError::Database {
        dir: dir.join("db"),
        source,
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    dir: &Path,
    key: &[u8],
    raw: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        dir: dir.to_owned(),
        what: format!("value of key {:?}: {e}", String::from_utf8_lossy(key)),
    })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How long [`open_db`] keeps trying a lock that is held. sled 0.34 releases its file lock
/// only when the last background write task of a dropped database finishes, a moment after
/// `drop` returns; on a loaded machine a store closed a moment ago (by this process or by one
/// that is exiting) would otherwise be reported as in use.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens sled, telling a store held by another process apart from other failures.
fn open_db(dir: &Path) -> Result<Database, StoreError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let result = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            // No background flusher: every commit flushes (fsyncs) itself, and a sync that fails
            // on sled's own thread leaves later flushes waiting forever (sled 0.34; found by the
            // failing-fsync test). Syncing only on quarry's thread returns every failure to it.
            .flush_every_ms(None)
            .open();
        match result {
            Ok(db) => return Ok(Database::new(db, &dir.join("db"))),
            // sled 0.34 reports a held lock as an `Other` I/O error with this wording.
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::InUse {
                        dir: dir.to_owned(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(database(dir, e)),
        }
    }
}

impl Store {
    /// Opens the store in `dir` for indexing with `model`, creating it (with default
    /// [`StoreSettings`]) when the folder has none. A store made by other models is refused
    /// with [`StoreError::ModelMismatch`] (rules in the `model` module: same retrieval model;
    /// a captioner may be added to a store without one).
    pub fn create_or_open(dir: &Path, model: &ModelIdentity) -> Result<Store, StoreError> {
        Store::create_or_open_with(dir, model, &StoreSettings::default())
    }

    /// [`Store::create_or_open`] with the settings a new store gets (ignored for an existing
    /// store, which keeps its own).
    pub fn create_or_open_with(
        dir: &Path,
        model: &ModelIdentity,
        settings: &StoreSettings,
    ) -> Result<Store, StoreError> {
        space::ensure_room(dir, 0)?;
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let db = open_db(dir)?;
        if db.is_empty() {
            let mut batch = sled::Batch::default();
            quarry_migrations::stamp_version(&mut batch, quarry_migrations::CURRENT_FORMAT_VERSION);
            batch.insert(keys::MODEL, json(model));
            batch.insert(keys::SETTINGS, json(settings));
            batch.insert(
                keys::STATE,
                json(&State {
                    last_batch: 0,
                    ..State::default()
                }),
            );
            db.apply_batch(batch).map_err(|e| database(dir, e))?;
            db.flush().map_err(|e| database(dir, e))?;
        }
        let mut store = Store::open_db_checked(dir, db)?;
        match model::check(dir, &store.model, model) {
            Ok(model::Compatibility::Same) => {}
            Ok(model::Compatibility::AddsCaptioner) => {
                store
                    .db
                    .insert(keys::MODEL, json(model))
                    .map_err(|e| database(dir, e))?;
                store.db.flush().map_err(|e| database(dir, e))?;
                store.model = model.clone();
            }
            Err(message) => {
                return Err(StoreError::ModelMismatch {
                    dir: dir.to_owned(),
                    message,
                });
            }
        }
        Ok(store)
    }

    /// Opens an existing store without checking models (for status, removal, inspection).
    /// [`StoreError::NotFound`] when `dir` holds no store.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        if !dir.join("db").is_dir() {
            return Err(StoreError::NotFound {
                dir: dir.to_owned(),
            });
        }
        // sled writes at open (a new snapshot): never on a full disk (see `space`).
        space::ensure_room(dir, 0)?;
        let db = open_db(dir)?;
        if db.is_empty() {
            return Err(StoreError::NotFound {
                dir: dir.to_owned(),
            });
        }
        Store::open_db_checked(dir, db)
    }

    /// Upgrades the format, reads the metadata and recovers the feature files.
    fn open_db_checked(dir: &Path, db: Database) -> Result<Store, StoreError> {
        let report = quarry_migrations::upgrade(&db).map_err(|source| match source {
            quarry_migrations::MigrationError::MissingVersion => StoreError::NotAStore {
                dir: dir.to_owned(),
                reason: format!(
                    "{} holds a database without a quarry format version",
                    dir.join("db").display()
                ),
            },
            source => StoreError::Migration {
                dir: dir.to_owned(),
                source,
            },
        })?;
        let meta = |key: &[u8]| -> Result<Vec<u8>, StoreError> {
            db.get(key)
                .map_err(|e| database(dir, e))?
                .map(|v| v.to_vec())
                .ok_or_else(|| StoreError::NotAStore {
                    dir: dir.to_owned(),
                    reason: format!("missing {}", String::from_utf8_lossy(key)),
                })
        };
        let model: ModelIdentity = decode(dir, keys::MODEL, &meta(keys::MODEL)?)?;
        let settings: StoreSettings = decode(dir, keys::SETTINGS, &meta(keys::SETTINGS)?)?;
        let state: State = decode(dir, keys::STATE, &meta(keys::STATE)?)?;
        let features = FeatureFiles::open(dir.join("features"), &state)?;
        Ok(Store {
            dir: dir.to_owned(),
            db,
            model,
            features,
            writer: Mutex::new(Writer {
                state,
                settings,
                failed_write: None,
            }),
            migrated_from: report.upgraded().then_some(report.from),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave it half-updated: the state is replaced
        // only after a successful commit.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn db_error(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |e| database(&self.dir, e)
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The models that made the store.
    pub fn model(&self) -> &ModelIdentity {
        &self.model
    }

    /// The store's settings.
    pub fn settings(&self) -> StoreSettings {
        self.writer().settings.clone()
    }

    /// The format version the store had before this open upgraded it, if it did.
    pub fn migrated_from(&self) -> Option<u32> {
        self.migrated_from
    }

    /// Whether new images' ViT features are kept.
    pub fn feature_cache_enabled(&self) -> bool {
        self.writer().settings.feature_cache
    }

    /// Turns the feature cache on or off for later commits (recorded in the store). Turning
    /// it off keeps the features already stored; [`Store::compact_features`] after removals
    /// reclaims space.
    pub fn set_feature_cache(&self, on: bool) -> Result<(), StoreError> {
        self.write(|writer| {
            let mut settings = writer.settings.clone();
            settings.feature_cache = on;
            self.db
                .insert(keys::SETTINGS, json(&settings))
                .map_err(self.db_error())?;
            self.db.flush().map_err(self.db_error())?;
            writer.settings = settings;
            Ok(())
        })
    }

    /// Runs a write under the writer lock, unless the disk already failed one (see
    /// [`Writer::failed_write`]); a disk failure other than a full disk stops later writes.
    /// sled 0.34 can also hang in `flush` after its I/O thread failed a sync, so no write may
    /// reach it again.
    fn write<R>(
        &self,
        op: impl FnOnce(&mut Writer) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut writer = self.writer();
        if let Some(why) = &writer.failed_write {
            return Err(StoreError::WritesStopped {
                dir: self.dir.clone(),
                why: why.clone(),
            });
        }
        space::ensure_room(&self.dir, 0)?;
        let result = op(&mut writer);
        if let Err(e) = &result {
            let disk = matches!(e, StoreError::Io { .. } | StoreError::Database { .. });
            if disk && DiskFault::cause_of(e) != Some(DiskFault::Full) {
                writer.failed_write = Some(e.to_string());
                self.db.mark_failed();
            }
        }
        result
    }

    /// Writes `write` atomically as the next batch and returns once it is on disk (fsynced).
    /// On `Err` nothing of the batch is visible, now or after a crash.
    pub fn commit(&self, write: &BatchWrite) -> Result<CommitReceipt, StoreError> {
        self.write(|writer| self.commit_locked(writer, write))
    }

    fn commit_locked(
        &self,
        writer: &mut Writer,
        write: &BatchWrite,
    ) -> Result<CommitReceipt, StoreError> {
        let mut state = writer.state.clone();
        let shapes = Shapes {
            queries: self.model.retrieval.queries,
            dim: self.model.retrieval.embed_dim,
        };
        let mut overlay = Overlay::new(&self.db);
        let batch::Built {
            receipt,
            features: pending,
        } = batch::build(
            &mut overlay,
            &mut state,
            write,
            &shapes,
            writer.settings.feature_cache,
            &self.dir,
        )?;
        if !pending.is_empty() {
            let items: Vec<&ImageFeatures> = pending.iter().map(|(_, f)| *f).collect();
            let limit = writer.settings.feature_file_limit;
            let locations = match self.features.append(&mut state, limit, &items) {
                Ok(locations) => locations,
                Err(e) => {
                    self.features.rollback(&writer.state)?;
                    return Err(e);
                }
            };
            for ((id, _), location) in pending.iter().zip(locations) {
                overlay.insert(keys::with_id(keys::FEATURES, *id), json(&location));
            }
        }
        overlay.insert(keys::STATE.to_vec(), json(&state));
        // A failed apply writes nothing, so its feature bytes are cut back. Once applied, the
        // batch is visible in this process even if the flush then fails, so the counters
        // follow it; the caller only gets `Ok` once it is durable.
        if let Err(e) = self.db.apply_batch(overlay.into_batch()) {
            self.features.rollback(&writer.state)?;
            return Err(database(&self.dir, e));
        }
        writer.state = state;
        self.db.flush().map_err(self.db_error())?;
        Ok(receipt)
    }

    /// Id of the last committed batch (0 for a new store).
    pub fn last_batch(&self) -> u64 {
        self.writer().state.last_batch
    }

    /// The image with id `id`.
    pub fn image(&self, id: u64) -> Result<Option<ImageRecord>, StoreError> {
        let key = keys::with_id(keys::IMAGE, id);
        match self.db.get(&key).map_err(self.db_error())? {
            Some(raw) => decode(&self.dir, &key, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// The image indexed at `path`.
    pub fn image_by_path(&self, path: &Path) -> Result<Option<ImageRecord>, StoreError> {
        let key = keys::with_bytes(keys::PATH, &path_json::to_bytes(path));
        match self.db.get(&key).map_err(self.db_error())? {
            Some(raw) => match keys::trailing_id(&raw) {
                Some(id) => self.image(id),
                None => Err(self.corrupt(format!("path entry of {} is not an id", path.display()))),
            },
            None => Ok(None),
        }
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            dir: self.dir.clone(),
            what,
        }
    }

    /// Decoded values under `prefix`, in key order.
    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &'static [u8],
    ) -> impl DoubleEndedIterator<Item = Result<T, StoreError>> + '_ {
        self.db.scan_prefix(prefix).map(move |entry| {
            let (key, value) = entry.map_err(self.db_error())?;
            decode(&self.dir, &key, &value)
        })
    }

    /// Every image, by id.
    pub fn images(&self) -> impl DoubleEndedIterator<Item = Result<ImageRecord, StoreError>> + '_ {
        self.scan(keys::IMAGE)
    }

    /// Ids of the images with content hash `hash` (duplicates, or a moved file's old entry).
    pub fn image_ids_with_hash(&self, hash: u128) -> Result<Vec<u64>, StoreError> {
        let prefix = keys::with_bytes(keys::HASH, &hash.to_be_bytes());
        self.db
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, _) = entry.map_err(self.db_error())?;
                keys::parse_hash_key(&key)
                    .map(|(_, id)| id)
                    .ok_or_else(|| self.corrupt(format!("bad hash key {key:?}")))
            })
            .collect()
    }

    /// The ITC vectors of image `id`: Q×D values, row-major.
    pub fn vectors(&self, id: u64) -> Result<Option<Vec<f32>>, StoreError> {
        let key = keys::with_id(keys::VECTORS, id);
        match self.db.get(&key).map_err(self.db_error())? {
            Some(raw) => keys::f32_from_bytes(&raw).map(Some).ok_or_else(|| {
                self.corrupt(format!("vectors of image {id} have {} bytes", raw.len()))
            }),
            None => Ok(None),
        }
    }

    /// The text with id `id`, with its embedding.
    pub fn text(&self, id: u64) -> Result<Option<TextRecord>, StoreError> {
        let key = keys::with_id(keys::TEXT, id);
        match self.db.get(&key).map_err(self.db_error())? {
            Some(raw) => self
                .with_embedding(decode(&self.dir, &key, &raw)?)
                .map(Some),
            None => Ok(None),
        }
    }

    fn with_embedding(&self, mut record: TextRecord) -> Result<TextRecord, StoreError> {
        let key = keys::with_id(keys::TEXT_EMBEDDING, record.id);
        let raw = self.db.get(&key).map_err(self.db_error())?;
        record.embedding = raw
            .as_deref()
            .and_then(keys::f32_from_bytes)
            .ok_or_else(|| self.corrupt(format!("text {} has no valid embedding", record.id)))?;
        Ok(record)
    }

    /// Every text (captions and user texts), by id, with embeddings.
    pub fn texts(&self) -> impl DoubleEndedIterator<Item = Result<TextRecord, StoreError>> + '_ {
        self.scan(keys::TEXT)
            .map(|record| self.with_embedding(record?))
    }

    /// Every recorded failure, by path bytes.
    pub fn failures(
        &self,
    ) -> impl DoubleEndedIterator<Item = Result<FailureRecord, StoreError>> + '_ {
        self.scan(keys::FAILURE)
    }

    /// Every file the store knows — indexed images and recorded failures — for change
    /// detection: a file whose size and mtime match was seen before; one whose content hash
    /// matches an image's was moved.
    pub fn known_files(&self) -> Result<Vec<KnownFile>, StoreError> {
        let mut files = Vec::new();
        for image in self.images() {
            let image = image?;
            files.push(KnownFile {
                path: image.path,
                size: image.size,
                modified_ns: image.modified_ns,
                content_hash: Some(image.content_hash),
                image: Some(image.id),
                failed: false,
            });
        }
        for failure in self.failures() {
            let failure = failure?;
            files.push(KnownFile {
                path: failure.path,
                size: failure.size,
                modified_ns: failure.modified_ns,
                content_hash: failure.content_hash,
                image: None,
                failed: true,
            });
        }
        Ok(files)
    }

    /// The counts of `quarry status`.
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        let state = self.writer().state.clone();
        Ok(StoreCounts {
            images: state.images,
            vectors: state.vectors,
            captions: state.captions,
            texts: state.texts,
            failed: state.failed,
            feature_cache_bytes: self.features.bytes_on_disk()?,
        })
    }

    /// How varied the images' captions are (reads every image record: for status pages, not
    /// for every request).
    pub fn caption_quality(&self) -> Result<CaptionQuality, StoreError> {
        let mut captions = Vec::new();
        for record in self.images() {
            if let Some(c) = record?.caption {
                captions.push(c);
            }
        }
        Ok(CaptionQuality::of(captions.iter().map(String::as_str)))
    }

    /// `(date in seconds, image id)`, oldest first (`.rev()` for newest first). The date is
    /// the EXIF capture time, else the file's modification time ([`ImageRecord::date_seconds`]).
    pub fn images_by_capture_time(
        &self,
    ) -> impl DoubleEndedIterator<Item = Result<(i64, u64), StoreError>> + '_ {
        self.db.scan_prefix(keys::DATE).map(move |entry| {
            let (key, _) = entry.map_err(self.db_error())?;
            keys::parse_date_key(&key).ok_or_else(|| self.corrupt(format!("bad date key {key:?}")))
        })
    }

    /// The cached ViT output of image `id`, if the cache holds it.
    pub fn features(&self, id: u64) -> Result<Option<ImageFeatures>, StoreError> {
        let key = keys::with_id(keys::FEATURES, id);
        match self.db.get(&key).map_err(self.db_error())? {
            Some(raw) => {
                let location: FeatureLocation = decode(&self.dir, &key, &raw)?;
                self.features.read(&location).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The change log entries of the batches after `batch`, in order. Every committed batch
    /// has one (possibly empty) until [`Store::prune_changes`] drops it.
    pub fn changes_since(
        &self,
        batch: u64,
    ) -> impl Iterator<Item = Result<BatchChanges, StoreError>> + '_ {
        let start = keys::with_id(keys::CHANGES, batch.saturating_add(1));
        self.db
            .range(start..)
            .take_while(|entry| match entry {
                Ok((key, _)) => key.starts_with(keys::CHANGES),
                Err(_) => true,
            })
            .map(move |entry| {
                let (key, value) = entry.map_err(self.db_error())?;
                decode(&self.dir, &key, &value)
            })
    }

    /// Drops the change log entries up to and including `batch` (call once every derived
    /// index has persisted that batch).
    pub fn prune_changes(&self, batch: u64) -> Result<(), StoreError> {
        self.write(|_| {
            let mut prune = sled::Batch::default();
            let end = keys::with_id(keys::CHANGES, batch);
            for entry in self.db.range(keys::with_id(keys::CHANGES, 0)..=end) {
                prune.remove(entry.map_err(self.db_error())?.0);
            }
            self.db.apply_batch(prune).map_err(self.db_error())?;
            self.db.flush().map_err(self.db_error())?;
            Ok(())
        })
    }

    /// Live, dead and on-disk bytes of the feature cache.
    pub fn feature_bytes(&self) -> Result<FeatureBytes, StoreError> {
        let state = self.writer().state.clone();
        Ok(FeatureBytes {
            live: state.feature_live_bytes,
            dead: state.feature_dead_bytes,
            on_disk: self.features.bytes_on_disk()?,
        })
    }

    /// Rewrites the live features into fresh files and deletes the old ones, reclaiming the
    /// bytes of removed images. Crash-safe: the new files are fsynced before one sled batch
    /// moves every location to them; a crash before it leaves the old files in use (the new
    /// ones are deleted at open), a crash after it leaves old files that the next open deletes.
    pub fn compact_features(&self) -> Result<CompactionReport, StoreError> {
        self.write(|writer| self.compact_features_locked(writer))
    }

    fn compact_features_locked(&self, writer: &mut Writer) -> Result<CompactionReport, StoreError> {
        let bytes_before = self.features.bytes_on_disk()?;
        let mut live: Vec<(u64, FeatureLocation)> = Vec::new();
        for entry in self.db.scan_prefix(keys::FEATURES) {
            let (key, value) = entry.map_err(self.db_error())?;
            let id =
                keys::trailing_id(&key).ok_or_else(|| self.corrupt("bad feature key".into()))?;
            live.push((id, decode(&self.dir, &key, &value)?));
        }
        let mut state = writer.state.clone();
        let first = state.feature_file + 1;
        state.feature_file = first;
        state.feature_len = 0;
        state.feature_first_file = first;
        state.feature_live_bytes = 0;
        state.feature_dead_bytes = 0;
        let mut batch = sled::Batch::default();
        let limit = writer.settings.feature_file_limit;
        for chunk in live.chunks(64) {
            let loaded = chunk
                .iter()
                .map(|(_, location)| self.features.read(location))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&ImageFeatures> = loaded.iter().collect();
            let locations = match self.features.append(&mut state, limit, &refs) {
                Ok(locations) => locations,
                Err(e) => {
                    self.features.rollback(&writer.state)?;
                    return Err(e);
                }
            };
            for ((id, _), location) in chunk.iter().zip(locations) {
                batch.insert(keys::with_id(keys::FEATURES, *id), json(&location));
            }
        }
        batch.insert(keys::STATE, json(&state));
        if let Err(e) = self.db.apply_batch(batch) {
            self.features.rollback(&writer.state)?;
            return Err(database(&self.dir, e));
        }
        writer.state = state;
        self.db.flush().map_err(self.db_error())?;
        self.features.remove_below(first)?;
        Ok(CompactionReport {
            bytes_before,
            bytes_after: self.features.bytes_on_disk()?,
            images: live.len() as u64,
        })
    }

    /// Checks that the store agrees with itself: counters equal the records, every index
    /// entry (path, hash, date) points to a live image that agrees, every image has its
    /// vectors and index entries, captions and texts match, feature locations lie within the
    /// committed files, the change log ends at the last batch. Returns the problems found
    /// (empty: consistent). Reads everything: for tests, `quarry status --check` and repairs.
    pub fn check_consistency(&self) -> Result<Vec<String>, StoreError> {
        let state = self.writer().state.clone();
        let mut problems = Vec::new();
        let shapes = self.model.retrieval.queries * self.model.retrieval.embed_dim;
        let mut images = std::collections::BTreeMap::new();
        for image in self.images() {
            let image = image?;
            images.insert(image.id, image);
        }
        let mut caption_count = 0;
        for (id, image) in &images {
            match self.vectors(*id)? {
                Some(v) if v.len() == shapes => {}
                Some(v) => problems.push(format!(
                    "image {id}: {} vector values, expected {shapes}",
                    v.len()
                )),
                None => problems.push(format!("image {id}: no vectors")),
            }
            match self.image_by_path(&image.path)? {
                Some(found) if found.id == *id => {}
                _ => problems.push(format!(
                    "image {id}: path {} does not point to it",
                    image.path.display()
                )),
            }
            if !self.image_ids_with_hash(image.content_hash)?.contains(id) {
                problems.push(format!("image {id}: no hash entry"));
            }
            let date = keys::date_key(image.date_seconds(), *id);
            if !self.db.contains_key(date).map_err(self.db_error())? {
                problems.push(format!("image {id}: no date entry"));
            }
            if let Some(text) = image.caption_text {
                caption_count += 1;
                match self.text(text)? {
                    Some(t) if t.source == (TextSource::Caption { image: *id }) => {}
                    _ => problems.push(format!(
                        "image {id}: caption text {text} missing or not its caption"
                    )),
                }
            }
        }
        let count = |prefix: &[u8]| self.db.scan_prefix(prefix).keys().count() as u64;
        let checks = [
            ("images", state.images, images.len() as u64),
            ("vectors", state.vectors, count(keys::VECTORS)),
            ("path entries", state.images, count(keys::PATH)),
            ("hash entries", state.images, count(keys::HASH)),
            ("date entries", state.images, count(keys::DATE)),
            ("captions", state.captions, caption_count),
            ("texts", state.texts, count(keys::TEXT)),
            ("text embeddings", state.texts, count(keys::TEXT_EMBEDDING)),
            ("failures", state.failed, count(keys::FAILURE)),
        ];
        for (what, counter, found) in checks {
            if counter != found {
                problems.push(format!(
                    "{what}: counter says {counter}, store holds {found}"
                ));
            }
        }
        for text in self.texts() {
            let text = text?;
            if let TextSource::Caption { image } = text.source {
                if images.get(&image).and_then(|i| i.caption_text) != Some(text.id) {
                    problems.push(format!(
                        "text {}: caption of image {image}, which lacks it",
                        text.id
                    ));
                }
            }
        }
        for failure in self.failures() {
            let failure = failure?;
            if self.image_by_path(&failure.path)?.is_some() {
                problems.push(format!(
                    "{} is both an image and a failure",
                    failure.path.display()
                ));
            }
        }
        let mut live_bytes = 0;
        for entry in self.db.scan_prefix(keys::FEATURES) {
            let (key, value) = entry.map_err(self.db_error())?;
            let id = keys::trailing_id(&key).unwrap_or(u64::MAX);
            let location: FeatureLocation = decode(&self.dir, &key, &value)?;
            live_bytes += location.len;
            if !images.contains_key(&id) {
                problems.push(format!("features of missing image {id}"));
            }
            let end = location.offset + location.len;
            let in_bounds = location.file >= state.feature_first_file
                && (location.file < state.feature_file
                    || (location.file == state.feature_file && end <= state.feature_len));
            if !in_bounds || self.features.read(&location).is_err() {
                problems.push(format!(
                    "features of image {id} outside the committed files"
                ));
            }
        }
        if live_bytes != state.feature_live_bytes {
            problems.push(format!(
                "feature bytes: counter {}, locations {live_bytes}",
                state.feature_live_bytes
            ));
        }
        let on_disk = self.features.bytes_on_disk()?;
        let accounted = state.feature_live_bytes + state.feature_dead_bytes;
        if on_disk != accounted {
            problems.push(format!(
                "feature files hold {on_disk} bytes, the store accounts for {accounted} \
                 (live and dead)"
            ));
        }
        if let Some(last) = self.db.scan_prefix(keys::CHANGES).keys().next_back() {
            let last = keys::trailing_id(&last.map_err(self.db_error())?);
            if last != Some(state.last_batch) {
                problems.push(format!(
                    "change log ends at {last:?}, last batch is {}",
                    state.last_batch
                ));
            }
        }
        Ok(problems)
    }
}
