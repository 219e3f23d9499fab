//! A library: the store, the two vector indexes and the word index of one folder, kept in step.
//!
//! sled is the source of truth. Each commit goes, in this fixed order, to
//! 1. the store (one atomic sled batch, fsynced, with a change-log entry carrying its batch id),
//! 2. the word index (tantivy; its commit payload carries the same batch id),
//! 3. the in-memory vector indexes (HNSW), which are dumped to disk at checkpoints with the id
//!    of the last batch they contain.
//!
//! When a process dies between two steps, the next open replays the store's change log from
//! the batch each index last recorded, so every image the store acknowledged becomes
//! searchable again; an index that is missing or unreadable is rebuilt from the store. Dumping
//! the HNSW graph after every batch would rewrite hundreds of megabytes per batch at 100 k
//! images; replaying the log costs only the inserts since the last dump.
//!
//! Folder layout: `DIR/db` (sled), `DIR/features` (ITM feature cache), `DIR/ann/images`,
//! `DIR/ann/texts` (HNSW dumps), `DIR/text` (tantivy).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ann::{AnnError, AnnParams, MultiVectorIndex};
use crate::store::{
    BatchChanges, BatchWrite, CommitReceipt, ModelIdentity, Store, StoreCounts, StoreError,
    TextSource,
};
use crate::text::{TextIndex, TextIndexError};

/// How often the vector indexes are dumped during a long run; also at every [`Library::checkpoint`].
const DUMP_INTERVAL: Duration = Duration::from_secs(120);

/// Why a library cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A vector index failed.
    #[error("vector index: {0}")]
    Ann(#[from] AnnError),
    /// The word index failed.
    #[error("word index: {0}")]
    Text(#[from] TextIndexError),
}

impl LibraryError {
    /// Whether the user can fix it (a store in use, made by another model, ...).
    pub fn is_user_error(&self) -> bool {
        match self {
            LibraryError::Store(e) => e.is_user_error(),
            _ => false,
        }
    }
}

/// What opening a library had to repair, for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Store batches replayed into the word index.
    pub text_batches_replayed: u64,
    /// The word index was rebuilt from the store.
    pub text_rebuilt: bool,
    /// Store batches replayed into the vector indexes.
    pub ann_batches_replayed: u64,
    /// The vector indexes were rebuilt from the store (no usable dump).
    pub ann_rebuilt: bool,
}

/// One store folder, opened for reading and writing.
pub struct Library {
    store: Store,
    images: MultiVectorIndex,
    texts: MultiVectorIndex,
    words: TextIndex,
    /// The batch the vector dumps on disk contain.
    dumped_batch: u64,
    /// The last batch the vector indexes hold; behind the store's only after a failed commit
    /// (a full disk), until the next commit catches up.
    applied_batch: u64,
    /// The last batch the word index holds (committed). Behind a lock of its own: a server
    /// catches the words up under the library's read lock (see `catch_up_words`).
    words_batch: Mutex<u64>,
    last_dump: Instant,
    recovery: Recovery,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("dir", &self.store.dir())
            .field("last_batch", &self.store.last_batch())
            .finish_non_exhaustive()
    }
}

impl Library {
    /// Opens (or creates) the library in `dir` for `model`; refuses a store made by another
    /// model or held by another process.
    pub fn open(dir: &Path, model: &ModelIdentity) -> Result<Self, LibraryError> {
        Self::with_store(Store::create_or_open(dir, model)?)
    }

    /// Opens an existing library without a model (status, removal).
    pub fn open_existing(dir: &Path) -> Result<Self, LibraryError> {
        Self::with_store(Store::open_existing(dir)?)
    }

    fn with_store(store: Store) -> Result<Self, LibraryError> {
        let dir = store.dir().to_path_buf();
        let dim = store.model().retrieval.embed_dim;
        let mut recovery = Recovery::default();
        let last = store.last_batch();

        let (mut words, damaged) = open_words(&dir.join("text"))?;
        if damaged {
            // A fresh, empty index: rebuilt from the store below.
            recovery.text_rebuilt = true;
        }
        match words.committed_batch()? {
            Some(done) if done == last => {}
            Some(done) if done < last => {
                for changes in store.changes_since(done) {
                    apply_words(&store, &words, &changes?)?;
                    recovery.text_batches_replayed += 1;
                }
                words.commit(last)?;
            }
            None if last == 0 => {}
            _ => {
                rebuild_words(&store, &mut words)?;
                words.commit(last)?;
                recovery.text_rebuilt = true;
            }
        }

        let (images, texts, dumped_batch) = match load_vectors(&dir) {
            Some((mut images, mut texts, done)) if done <= last => {
                for changes in store.changes_since(done) {
                    apply_vectors(&store, &mut images, &mut texts, &changes?)?;
                    recovery.ann_batches_replayed += 1;
                }
                (images, texts, done)
            }
            _ => {
                let mut images = MultiVectorIndex::new(dim, AnnParams::default())?;
                let mut texts = MultiVectorIndex::new(dim, AnnParams::default())?;
                rebuild_vectors(&store, &mut images, &mut texts)?;
                recovery.ann_rebuilt = last > 0;
                (images, texts, 0)
            }
        };
        let mut library = Self {
            store,
            images,
            texts,
            words,
            dumped_batch,
            applied_batch: last,
            words_batch: Mutex::new(last),
            last_dump: Instant::now(),
            recovery,
        };
        if library.dumped_batch != last {
            library.checkpoint()?;
        }
        Ok(library)
    }

    /// What opening had to repair.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The store (records, vectors, features).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image vector index (Q vectors per image).
    pub fn image_index(&self) -> &MultiVectorIndex {
        &self.images
    }

    /// The text vector index (captions and user texts, one vector each).
    pub fn text_index(&self) -> &MultiVectorIndex {
        &self.texts
    }

    /// The word index (BM25 over captions, file and folder names, user texts).
    pub fn words(&self) -> &TextIndex {
        &self.words
    }

    /// Counts for `quarry status`.
    pub fn counts(&self) -> Result<StoreCounts, LibraryError> {
        Ok(self.store.counts()?)
    }

    /// Commits one batch: the store (durable), then the vector and word indexes; when this
    /// returns, the batch's images are searchable and survive a crash.
    pub fn commit(&mut self, write: &BatchWrite) -> Result<CommitReceipt, LibraryError> {
        let receipt = self.commit_store_and_vectors(write);
        let words = self.catch_up_words();
        let receipt = receipt?;
        words?;
        Ok(receipt)
    }

    /// [`Library::commit`] without the word index, which [`Library::catch_up_words`] then
    /// brings up to date with only `&self`: a server runs that under its read lock, so the
    /// word index's commit (tantivy's fsyncs) does not hold searches up. Between the two the
    /// batch is found by its vectors, and by its words a few milliseconds later.
    pub fn commit_store_and_vectors(
        &mut self,
        write: &BatchWrite,
    ) -> Result<CommitReceipt, LibraryError> {
        let committed = self.store.commit(write);
        // A batch whose flush failed (a full disk) is still visible in this process (see
        // `Store::commit`), and an earlier failure may have left the indexes behind: they
        // follow what the store shows either way, so search and the next run's plan agree.
        let vectors = self.catch_up_vectors();
        let receipt = committed?;
        vectors?;
        if self.images.needs_rebuild() {
            self.images.compact()?;
        }
        if self.texts.needs_rebuild() {
            self.texts.compact()?;
        }
        if self.last_dump.elapsed() >= DUMP_INTERVAL {
            // The batch is durable and searchable: a dump that fails (a full disk) must not
            // make it look failed. The change log keeps what the dump would have saved, and
            // the end of the run (or the next interval) tries again.
            let _ = self.checkpoint();
        }
        Ok(receipt)
    }

    /// Applies and commits the store's batches the word index does not hold yet. Needs only
    /// `&self`, so a server runs it (tantivy's commit and its fsyncs) under the library's read
    /// lock while searches go on; one catch-up at a time (replaying a batch twice is harmless,
    /// interleaving two would not be).
    pub fn catch_up_words(&self) -> Result<(), LibraryError> {
        let mut done = self
            .words_batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = self.store.last_batch();
        if *done >= last {
            return Ok(());
        }
        for changes in self.store.changes_since(*done) {
            apply_words(&self.store, &self.words, &changes?)?;
        }
        self.words.commit(last)?;
        *done = last;
        Ok(())
    }

    /// Applies the store's batches the vector indexes do not hold yet, in order (replaying one
    /// twice is harmless: see `apply_vectors`).
    fn catch_up_vectors(&mut self) -> Result<(), LibraryError> {
        let last = self.store.last_batch();
        if self.applied_batch >= last {
            return Ok(());
        }
        for changes in self.store.changes_since(self.applied_batch) {
            apply_vectors(&self.store, &mut self.images, &mut self.texts, &changes?)?;
        }
        self.applied_batch = last;
        Ok(())
    }

    /// Dumps the vector indexes with the current batch id and prunes the change log up to the
    /// batch every index holds. Call at the end of a run and before a clean shutdown.
    pub fn checkpoint(&mut self) -> Result<(), LibraryError> {
        // What the indexes hold, which is the store's last batch unless a commit failed.
        let last = self.applied_batch;
        if self.dumped_batch != last {
            let dir = self.store.dir().join("ann");
            // The new dumps are written beside the old ones, about as large: room for them
            // first, so a dump never fills the disk (see `store::space`).
            let dump_bytes: u64 = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            crate::store::space::ensure_room(self.store.dir(), dump_bytes + dump_bytes / 4)?;
            self.images.save(&dir.join("images"), last)?;
            self.texts.save(&dir.join("texts"), last)?;
            self.dumped_batch = last;
        }
        self.last_dump = Instant::now();
        let words_done = self.words.committed_batch()?.unwrap_or(0);
        self.store
            .prune_changes(self.dumped_batch.min(words_done))?;
        Ok(())
    }

    /// The store folder.
    pub fn dir(&self) -> PathBuf {
        self.store.dir().to_path_buf()
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // Best effort: a dump now saves the next open a replay; a failure here loses nothing,
        // since the store still holds every batch and its change log.
        let _ = self.checkpoint();
    }
}

/// Opens the word index; one that is damaged (a file missing, cut or failing its checksum, a
/// schema of another version) is moved aside to `text.damaged` and replaced by an empty one,
/// which the caller rebuilds from the store: the index is derived, so nothing is lost. Only
/// an index held by another process is an error. Returns the index and whether it was new.
fn open_words(dir: &Path) -> Result<(TextIndex, bool), LibraryError> {
    // tantivy 0.27 panics instead of erring on some cut files (a footer claiming more bytes
    // than the file has), even while checking checksums: such a panic means a damaged index
    // too. The default hook is silenced meanwhile (nothing else runs while a library opens).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| TextIndex::open_or_create(dir));
    std::panic::set_hook(hook);
    let opened = opened.unwrap_or_else(|_| {
        Err(crate::text::TextIndexError::Open {
            path: dir.to_owned(),
            reason: "tantivy could not read its files".into(),
        })
    });
    match opened {
        Ok(words) => Ok((words, false)),
        Err(e @ crate::text::TextIndexError::Locked { .. }) => Err(e.into()),
        Err(_) => {
            let aside = dir.with_extension("damaged");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(dir, &aside)
                .or_else(|_| std::fs::remove_dir_all(dir))
                .map_err(|e| crate::text::TextIndexError::Open {
                    path: dir.to_owned(),
                    reason: format!("damaged, and could not be moved aside: {e}"),
                })?;
            Ok((TextIndex::open_or_create(dir)?, true))
        }
    }
}

fn load_vectors(dir: &Path) -> Option<(MultiVectorIndex, MultiVectorIndex, u64)> {
    let ann = dir.join("ann");
    let (images, a) = MultiVectorIndex::load(&ann.join("images")).ok().flatten()?;
    let (texts, b) = MultiVectorIndex::load(&ann.join("texts")).ok().flatten()?;
    // Both dumps are written together; if a crash left them at different batches, replay
    // from the older one (replaying an already applied batch is idempotent).
    (a == b).then_some((images, texts, a))
}

/// Applies one change-log entry to the word index (idempotent: upserts and deletes by key).
fn apply_words(
    store: &Store,
    words: &TextIndex,
    changes: &BatchChanges,
) -> Result<(), LibraryError> {
    for &id in &changes.images_removed {
        words.remove_image(id);
    }
    for &id in &changes.texts_removed {
        words.remove_text(id);
    }
    let touched = changes
        .images_added
        .iter()
        .copied()
        .chain(changes.paths_changed.iter().map(|c| c.image));
    for id in touched {
        // An image added and removed again in later batches is gone from the store: skip it.
        if let Some(record) = store.image(id)? {
            words.upsert_image(id, record.caption.as_deref(), &record.path)?;
        }
    }
    for &id in &changes.texts_added {
        if let Some(text) = store.text(id)? {
            if text.source == TextSource::User {
                words.add_text(id, &text.text)?;
            }
        }
    }
    Ok(())
}

/// Applies one change-log entry to the vector indexes (idempotent).
fn apply_vectors(
    store: &Store,
    images: &mut MultiVectorIndex,
    texts: &mut MultiVectorIndex,
    changes: &BatchChanges,
) -> Result<(), LibraryError> {
    for &id in &changes.images_removed {
        images.remove(id);
    }
    for &id in &changes.texts_removed {
        texts.remove(id);
    }
    let mut added = Vec::new();
    for &id in &changes.images_added {
        if let Some(vectors) = store.vectors(id)? {
            added.push((id, vectors));
        }
    }
    images.insert_many(added.iter().map(|(id, v)| (*id, v.as_slice())))?;
    let mut added = Vec::new();
    for &id in &changes.texts_added {
        if let Some(text) = store.text(id)? {
            added.push((id, text.embedding));
        }
    }
    texts.insert_many(added.iter().map(|(id, v)| (*id, v.as_slice())))?;
    Ok(())
}

fn rebuild_words(store: &Store, words: &mut TextIndex) -> Result<(), LibraryError> {
    words.clear()?;
    for record in store.images() {
        let record = record?;
        words.upsert_image(record.id, record.caption.as_deref(), &record.path)?;
    }
    for text in store.texts() {
        let text = text?;
        if text.source == TextSource::User {
            words.add_text(text.id, &text.text)?;
        }
    }
    Ok(())
}

fn rebuild_vectors(
    store: &Store,
    images: &mut MultiVectorIndex,
    texts: &mut MultiVectorIndex,
) -> Result<(), LibraryError> {
    // Streamed from the store: a rebuild of 100 k images must not hold a second copy of
    // every vector. The first store error stops the stream and is returned.
    let mut failure: Option<StoreError> = None;
    let image_vectors = store.images().map_while(|record| {
        let found = record.and_then(|r| Ok(store.vectors(r.id)?.map(|v| (r.id, v))));
        match found {
            Ok(v) => Some(v),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        }
    });
    images.rebuild(image_vectors.flatten())?;
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    let text_vectors = store.texts().map_while(|text| match text {
        Ok(t) => Some((t.id, t.embedding)),
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    });
    texts.rebuild(text_vectors)?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
