//! One indexing run: walk, plan, metadata-only changes, then model work in batches.
//!
//! The run first commits everything that needs no model (moves, touches, copies of known
//! content, deletions, files that cannot be read) as one batch, so a moved folder is
//! searchable under its new path at once and re-embeds nothing. Then the files that need the
//! model (new, modified, previously failed) stream through the bounded decode pipeline; each
//! model batch is one commit, acknowledged (reported as indexed) only after it is durable.
//! A modified file keeps its old record until its new embedding commits, in the same batch
//! that removes the old one, so it never drops out of search.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::models::IndexModels;
use crate::indexer::{
    plan_changes, prepare_batches, walk_library, ChangePlan, ContentHash, FoundFile, HashedFile,
    KnownFile, PipelineError, PipelineOptions, WalkError, WalkOptions,
};
use crate::library::{Library, LibraryError};
use crate::store::{BatchWrite, ImageInfo, NewCaption, NewFailure, NewImage, PathUpdate};

/// How a run works.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// What the walk skips.
    pub walk: WalkOptions,
    /// Images per model batch (and per commit).
    pub batch_size: usize,
    /// Decoding threads (0 = one per core).
    pub decode_workers: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            walk: WalkOptions::default(),
            batch_size: 8,
            decode_workers: 0,
        }
    }
}

/// Why a run stopped. Files that fail are not errors: they are recorded and reported.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A root is missing or an exclude glob is invalid.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The library could not be written.
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// The decoding pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl IndexError {
    /// Whether the user can fix it.
    pub fn is_user_error(&self) -> bool {
        match self {
            IndexError::Walk(_) => true,
            IndexError::Library(e) => e.is_user_error(),
            IndexError::Pipeline(_) => false,
        }
    }
}

/// What the walk and the comparison with the store found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanSummary {
    /// Image files found.
    pub found: u64,
    /// Unchanged since the last run (not read).
    pub unchanged: u64,
    /// New files to embed.
    pub new: u64,
    /// Changed files to embed again.
    pub modified: u64,
    /// Previously failed files to try again.
    pub retry: u64,
    /// Moved files (path updated, nothing embedded).
    pub moved: u64,
    /// Copies of indexed content, or of content another file of this run brings (record
    /// copied, nothing embedded).
    pub copied: u64,
    /// Touched files (metadata updated).
    pub touched: u64,
    /// Files gone since the last run, removed from search.
    pub deleted: u64,
    /// Files that could not be used.
    pub problems: u64,
    /// Indexed images captioned now (a captioner was added to the store).
    pub recaption: u64,
}

impl PlanSummary {
    /// Files that need the model.
    pub fn to_embed(&self) -> u64 {
        self.new + self.modified + self.retry + self.recaption
    }
}

/// A file that could not be indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedFile {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum IndexEvent<'a> {
    /// The plan is known; `to_embed` files will go through the model.
    Planned(&'a PlanSummary),
    /// A batch is durable: these files are indexed (searchable, crash-safe) or failed.
    Committed {
        /// The store batch id.
        batch: u64,
        /// Files indexed by this batch (new content, copies, moves).
        indexed: &'a [PathBuf],
        /// Files recorded as failed by this batch.
        failed: &'a [FailedFile],
        /// Files that went through the model in this batch (for the progress bar).
        embedded: u64,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexSummary {
    /// The plan.
    pub plan: PlanSummary,
    /// Files embedded and committed.
    pub indexed: u64,
    /// Files that failed, with reasons.
    pub failed: Vec<FailedFile>,
    /// Commits made.
    pub batches: u64,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Wall time of the model stage (first batch requested to last committed), seconds.
    pub model_stage_seconds: f64,
    /// Time the model spent computing, seconds.
    pub model_busy_seconds: f64,
    /// Why the vector indexes could not be saved at the end (a full disk): the run's work is
    /// committed and searchable all the same, and the next open replays it from the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsaved_index: Option<String>,
}

impl IndexSummary {
    /// Fraction of the model stage the model was computing (the pipeline's goal: ≥ 0.9).
    pub fn model_busy_fraction(&self) -> Option<f64> {
        (self.model_stage_seconds > 0.0).then(|| self.model_busy_seconds / self.model_stage_seconds)
    }
}

/// Where a run writes: a [`Library`] owned by the caller, or one shared with searches (the
/// server), which is locked only for each commit and never for the model work.
pub trait IndexTarget {
    /// Reads from the library.
    fn read<R>(&self, f: impl FnOnce(&Library) -> R) -> R;
    /// Commits one batch (see [`Library::commit`]).
    fn commit(&mut self, write: &BatchWrite) -> Result<crate::store::CommitReceipt, LibraryError>;
    /// Dumps the vector indexes (see [`Library::checkpoint`]).
    fn checkpoint(&mut self) -> Result<(), LibraryError>;
}

impl IndexTarget for Library {
    fn read<R>(&self, f: impl FnOnce(&Library) -> R) -> R {
        f(self)
    }
    fn commit(&mut self, write: &BatchWrite) -> Result<crate::store::CommitReceipt, LibraryError> {
        Library::commit(self, write)
    }
    fn checkpoint(&mut self) -> Result<(), LibraryError> {
        Library::checkpoint(self)
    }
}

impl IndexTarget for &std::sync::RwLock<Library> {
    fn read<R>(&self, f: impl FnOnce(&Library) -> R) -> R {
        f(&std::sync::RwLock::read(self).unwrap_or_else(std::sync::PoisonError::into_inner))
    }
    fn commit(&mut self, write: &BatchWrite) -> Result<crate::store::CommitReceipt, LibraryError> {
        // The store and the vectors under the write lock (what a search reads then agrees
        // with the store), the word index's commit and its fsyncs under a read lock after it:
        // searches go on meanwhile (see `Library::commit_store_and_vectors`).
        let receipt = std::sync::RwLock::write(self)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .commit_store_and_vectors(write);
        let words = IndexTarget::read(self, Library::catch_up_words);
        let receipt = receipt?;
        words?;
        Ok(receipt)
    }
    fn checkpoint(&mut self) -> Result<(), LibraryError> {
        std::sync::RwLock::write(self)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .checkpoint()
    }
}

/// What a file needs from the model, carried through the pipeline.
#[derive(Debug, Clone)]
enum Work {
    New(HashedFile),
    Modified {
        file: HashedFile,
        old_image: Option<u64>,
    },
    Retry(HashedFile),
}

impl Work {
    fn file(&self) -> &HashedFile {
        match self {
            Work::New(f) | Work::Retry(f) | Work::Modified { file: f, .. } => f,
        }
    }
}

/// Indexes `roots` into `library` with `models`. Only records under the roots are compared,
/// so indexing a second folder into the same store never removes the first.
pub fn index_paths(
    library: &mut impl IndexTarget,
    models: &IndexModels,
    roots: &[PathBuf],
    options: &IndexOptions,
    keep_features: bool,
    on_event: &mut dyn FnMut(IndexEvent<'_>),
) -> Result<IndexSummary, IndexError> {
    index_scope(
        library,
        models,
        roots,
        roots,
        options,
        keep_features,
        on_event,
    )
}

/// Indexes what a watcher saw change ([`crate::watch`]): `changed` files and folders, present
/// or gone. Only those are walked and only the records under them compared, so a photo copied
/// into a large library costs one file, a folder moved within it is recognised as a move (its
/// old and new paths are in one call), and a deleted one leaves search. Changed files that are
/// not images (a `notes.txt`, a browser's `.crdownload`) are skipped silently, as a walk of
/// their folder would skip them.
pub fn index_changes(
    library: &mut impl IndexTarget,
    models: &IndexModels,
    changed: &[PathBuf],
    options: &IndexOptions,
    keep_features: bool,
    on_event: &mut dyn FnMut(IndexEvent<'_>),
) -> Result<IndexSummary, IndexError> {
    let mut scope: Vec<PathBuf> = changed
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    scope.sort();
    scope.dedup();
    // A path inside another changed folder is covered by that folder's walk.
    let outer: Vec<PathBuf> = scope
        .iter()
        .filter(|p| !scope.iter().any(|o| o != *p && p.starts_with(o)))
        .cloned()
        .collect();
    let walk_roots: Vec<PathBuf> = outer
        .iter()
        .filter(|p| p.is_dir() || (p.is_file() && crate::indexer::is_image_candidate(p)))
        .cloned()
        .collect();
    index_scope(
        library,
        models,
        &walk_roots,
        &outer,
        options,
        keep_features,
        on_event,
    )
}

/// Indexes one batch of a [`FolderWatcher`](crate::watch::FolderWatcher) over `roots`: the
/// changed paths, or every root again after lost events. A path that vanishes between the
/// watcher's report and the walk (a temporary file renamed away) is simply gone: the batch is
/// retried once without it.
pub fn index_watch_batch(
    library: &mut impl IndexTarget,
    models: &IndexModels,
    roots: &[PathBuf],
    batch: &crate::watch::WatchBatch,
    options: &IndexOptions,
    keep_features: bool,
    on_event: &mut dyn FnMut(IndexEvent<'_>),
) -> Result<IndexSummary, IndexError> {
    match batch {
        crate::watch::WatchBatch::Rescan => {
            index_paths(library, models, roots, options, keep_features, on_event)
        }
        crate::watch::WatchBatch::Changed(paths) => {
            match index_changes(library, models, paths, options, keep_features, on_event) {
                Err(IndexError::Walk(WalkError::MissingRoot { .. })) => {
                    index_changes(library, models, paths, options, keep_features, on_event)
                }
                other => other,
            }
        }
    }
}

/// Walks `walk_roots` and compares what it finds with the records under `scope` (which
/// includes the walk roots and may name paths that no longer exist).
fn index_scope(
    library: &mut impl IndexTarget,
    models: &IndexModels,
    walk_roots: &[PathBuf],
    scope: &[PathBuf],
    options: &IndexOptions,
    keep_features: bool,
    on_event: &mut dyn FnMut(IndexEvent<'_>),
) -> Result<IndexSummary, IndexError> {
    let started = Instant::now();
    let mut walk = walk_library(walk_roots, &options.walk)?;
    let roots: Vec<PathBuf> = scope
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
        .collect();
    // The plan compares known files under the walk's roots; a scope path that is gone was
    // looked at too (there is nothing there), so what the store knows under it is deleted.
    walk.roots.clone_from(&roots);
    let stored = library
        .read(|l| l.store().known_files())
        .map_err(LibraryError::from)?;
    let mut image_of: HashMap<PathBuf, u64> = HashMap::new();
    let known: Vec<KnownFile> = stored
        .into_iter()
        .filter(|k| roots.iter().any(|r| k.path.starts_with(r)))
        .map(|k| {
            if let Some(id) = k.image {
                image_of.insert(k.path.clone(), id);
            }
            KnownFile {
                path: k.path,
                size: k.size,
                modified_ns: k.modified_ns,
                content_hash: ContentHash(k.content_hash.unwrap_or(0)),
                failed: k.failed,
            }
        })
        .collect();
    let plan = plan_changes(&walk, &known);
    let mut summary = IndexSummary {
        plan: summarize(&walk.files.len(), &plan, walk.problems.len()),
        ..IndexSummary::default()
    };
    on_event(IndexEvent::Planned(&summary.plan));

    // 1. Everything that needs no model, in one commit.
    let mut write = BatchWrite::default();
    let mut indexed_paths = Vec::new();
    let mut failed_files = Vec::new();
    for m in &plan.moved {
        write.path_updates.push(PathUpdate {
            from: m.from.clone(),
            to: m.to.file.path.clone(),
            size: m.to.file.size,
            modified_ns: m.to.file.modified_ns,
        });
        indexed_paths.push(m.to.file.path.clone());
    }
    for t in &plan.touched {
        write.path_updates.push(PathUpdate {
            from: t.file.path.clone(),
            to: t.file.path.clone(),
            size: t.file.size,
            modified_ns: t.file.modified_ns,
        });
    }
    for d in &plan.deleted {
        match image_of.get(&d.path) {
            Some(&id) if !d.failed => write.removals.push(id),
            _ => write.clear_failures.push(d.path.clone()),
        }
    }
    for problem in walk.problems.iter().chain(&plan.problems) {
        // An indexed file that cannot be examined now (unreadable for a moment, or damaged)
        // keeps its record: the plan leaves it alone, and the next run looks again.
        if !image_of.contains_key(&problem.path) {
            write.failures.push(NewFailure {
                path: problem.path.clone(),
                reason: problem.reason.clone(),
                size: 0,
                modified_ns: 0,
                content_hash: None,
            });
        }
        failed_files.push(FailedFile {
            path: problem.path.clone(),
            reason: problem.reason.clone(),
        });
    }
    commit_if_any(
        library,
        &write,
        &indexed_paths,
        &failed_files,
        0,
        &mut summary,
        on_event,
    )?;

    // Copies read the source's record, which the moves above may have just renamed.
    let mut write = BatchWrite::default();
    let mut indexed_paths = Vec::new();
    for c in &plan.copied {
        if let Some(image) = library.read(|l| copy_of(l, &c.to))? {
            write.new_images.push(image);
            indexed_paths.push(c.to.file.path.clone());
        }
    }
    commit_if_any(
        library,
        &write,
        &indexed_paths,
        &[],
        0,
        &mut summary,
        on_event,
    )?;

    // 2. Model work: new, modified and retried files, and, when a captioner was added to a
    // store indexed without one, the unchanged images that still lack a caption (re-indexed
    // whole: the new record replaces the old one in the same commit).
    let recaption = if models.caption.is_some() {
        uncaptioned(library, &walk.files, &plan)?
    } else {
        Vec::new()
    };
    summary.plan.recaption = recaption.len() as u64;
    let work: Vec<(Work, PathBuf)> = plan
        .new
        .iter()
        .map(|f| Work::New(f.clone()))
        .chain(plan.modified.iter().map(|m| Work::Modified {
            file: m.file.clone(),
            old_image: image_of.get(&m.file.file.path).copied(),
        }))
        .chain(plan.retry.iter().map(|f| Work::Retry(f.clone())))
        .chain(recaption)
        .map(|w| {
            let path = w.file().file.path.clone();
            (w, path)
        })
        .collect();
    if !work.is_empty() {
        let stage_started = Instant::now();
        let mut busy = Duration::ZERO;
        let pipeline = prepare_batches(
            work,
            models.preprocess().clone(),
            PipelineOptions {
                batch_size: options.batch_size.max(1),
                workers: options.decode_workers,
                ..PipelineOptions::default()
            },
        )?;
        for batch in pipeline {
            let mut write = BatchWrite::default();
            let mut indexed_paths = Vec::new();
            let mut failed_files = Vec::new();
            let mut ready = Vec::new();
            for prepared in batch {
                let file = prepared.tag.file().file.clone();
                if let Work::Modified {
                    old_image: Some(old),
                    ..
                } = prepared.tag
                {
                    write.removals.push(old);
                }
                match prepared.result {
                    Ok(image) => ready.push((file, image)),
                    Err(e) => {
                        let reason = e.to_string();
                        write.failures.push(failure(&file, &reason, None));
                        failed_files.push(FailedFile {
                            path: file.path.clone(),
                            reason,
                        });
                    }
                }
            }
            let embedded = ready.len() as u64;
            if !ready.is_empty() {
                let pixels: Vec<&[f32]> = ready.iter().map(|(_, p)| p.pixels.as_slice()).collect();
                let paths: Vec<&Path> = ready.iter().map(|(f, _)| f.path.as_path()).collect();
                let t = Instant::now();
                let analysis = models.analyze(&pixels, &paths, keep_features);
                busy += t.elapsed();
                match analysis {
                    Ok(analysis) => {
                        for ((file, prepared), a) in ready.iter().zip(analysis) {
                            write.new_images.push(new_image(file, prepared, a));
                            indexed_paths.push(file.path.clone());
                        }
                    }
                    Err(e) => {
                        // A model failure on this batch: record each file, so the next run
                        // retries exactly these, and go on with the rest.
                        let reason = format!("model: {e}");
                        for (file, prepared) in &ready {
                            write.failures.push(failure(
                                file,
                                &reason,
                                Some(prepared.content_hash.0),
                            ));
                            failed_files.push(FailedFile {
                                path: file.path.clone(),
                                reason: reason.clone(),
                            });
                        }
                    }
                }
            }
            summary.indexed += indexed_paths.len() as u64;
            commit_if_any(
                library,
                &write,
                &indexed_paths,
                &failed_files,
                embedded + failed_files.len() as u64,
                &mut summary,
                on_event,
            )?;
        }
        summary.model_stage_seconds = stage_started.elapsed().as_secs_f64();
        summary.model_busy_seconds = busy.as_secs_f64();
    }

    // 3. Files identical to one embedded just now copy its record instead of repeating its
    // model work. When that file could not be indexed, they are recorded as failed with its
    // content hash, so the next run retries them (and embeds the content once again).
    let mut write = BatchWrite::default();
    let mut indexed_paths = Vec::new();
    let mut failed_files = Vec::new();
    for d in &plan.duplicates {
        match library.read(|l| copy_of(l, &d.to))? {
            Some(image) => {
                write.new_images.push(image);
                indexed_paths.push(d.to.file.path.clone());
            }
            None => {
                let reason = format!(
                    "same content as {}, which could not be indexed",
                    d.source.display()
                );
                write
                    .failures
                    .push(failure(&d.to.file, &reason, Some(d.to.content_hash.0)));
                failed_files.push(FailedFile {
                    path: d.to.file.path.clone(),
                    reason,
                });
            }
        }
    }
    commit_if_any(
        library,
        &write,
        &indexed_paths,
        &failed_files,
        0,
        &mut summary,
        on_event,
    )?;
    // The dump only saves the next open a replay: failing it loses nothing committed.
    if let Err(e) = library.checkpoint() {
        summary.unsaved_index = Some(e.to_string());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Unchanged indexed images under the walk with no caption, as work that replaces them.
fn uncaptioned(
    library: &mut impl IndexTarget,
    files: &[FoundFile],
    plan: &ChangePlan,
) -> Result<Vec<Work>, LibraryError> {
    let changing: std::collections::HashSet<&Path> = plan
        .modified
        .iter()
        .map(|m| m.file.file.path.as_path())
        .chain(plan.touched.iter().map(|t| t.file.path.as_path()))
        .chain(plan.moved.iter().map(|m| m.to.file.path.as_path()))
        .chain(plan.copied.iter().map(|c| c.to.file.path.as_path()))
        .chain(plan.duplicates.iter().map(|c| c.to.file.path.as_path()))
        .collect();
    library.read(|l| {
        let mut work = Vec::new();
        for file in files {
            if changing.contains(file.path.as_path()) {
                continue;
            }
            if let Some(record) = l.store().image_by_path(&file.path)? {
                if record.caption.is_none() {
                    work.push(Work::Modified {
                        file: HashedFile {
                            file: file.clone(),
                            content_hash: ContentHash(record.content_hash),
                        },
                        old_image: Some(record.id),
                    });
                }
            }
        }
        Ok(work)
    })
}

fn summarize(found: &usize, plan: &ChangePlan, walk_problems: usize) -> PlanSummary {
    PlanSummary {
        found: *found as u64,
        unchanged: plan.unchanged,
        new: plan.new.len() as u64,
        modified: plan.modified.len() as u64,
        retry: plan.retry.len() as u64,
        moved: plan.moved.len() as u64,
        copied: (plan.copied.len() + plan.duplicates.len()) as u64,
        touched: plan.touched.len() as u64,
        deleted: plan.deleted.len() as u64,
        problems: (walk_problems + plan.problems.len()) as u64,
        recaption: 0,
    }
}

fn failure(file: &FoundFile, reason: &str, hash: Option<u128>) -> NewFailure {
    NewFailure {
        path: file.path.clone(),
        reason: reason.to_string(),
        size: file.size,
        modified_ns: file.modified_ns,
        content_hash: hash,
    }
}

fn new_image(
    file: &FoundFile,
    prepared: &crate::indexer::PreparedImage,
    analysis: super::models::ImageAnalysis,
) -> NewImage {
    let info = &prepared.info;
    NewImage {
        info: ImageInfo {
            path: file.path.clone(),
            content_hash: prepared.content_hash.0,
            size: file.size,
            modified_ns: file.modified_ns,
            width: info.width,
            height: info.height,
            format: file.format.name().to_string(),
            captured_at: info.captured_at.as_ref().map(|c| c.iso8601.clone()),
            captured_at_s: info.captured_at.as_ref().map(|c| c.seconds),
            camera_make: info.camera_make.clone(),
            camera_model: info.camera_model.clone(),
        },
        vectors: analysis.vectors,
        caption: match (analysis.caption, analysis.caption_embedding) {
            (Some(text), Some(embedding)) => Some(NewCaption { text, embedding }),
            _ => None,
        },
        features: analysis.features,
    }
}

/// A new record for `to` with the vectors, caption and features of indexed identical content.
fn copy_of(library: &Library, to: &HashedFile) -> Result<Option<NewImage>, LibraryError> {
    let store = library.store();
    let Some(&source) = store.image_ids_with_hash(to.content_hash.0)?.first() else {
        return Ok(None);
    };
    let (Some(record), Some(vectors)) = (store.image(source)?, store.vectors(source)?) else {
        return Ok(None);
    };
    let caption = match (record.caption.clone(), record.caption_text) {
        (Some(text), Some(text_id)) => store.text(text_id)?.map(|t| NewCaption {
            text,
            embedding: t.embedding,
        }),
        _ => None,
    };
    Ok(Some(NewImage {
        info: ImageInfo {
            path: to.file.path.clone(),
            content_hash: record.content_hash,
            size: to.file.size,
            modified_ns: to.file.modified_ns,
            width: record.width,
            height: record.height,
            format: record.format.clone(),
            captured_at: record.captured_at.clone(),
            captured_at_s: record.captured_at_s,
            camera_make: record.camera_make.clone(),
            camera_model: record.camera_model.clone(),
        },
        vectors,
        caption,
        features: store.features(source)?,
    }))
}

fn commit_if_any(
    library: &mut impl IndexTarget,
    write: &BatchWrite,
    indexed: &[PathBuf],
    failed: &[FailedFile],
    embedded: u64,
    summary: &mut IndexSummary,
    on_event: &mut dyn FnMut(IndexEvent<'_>),
) -> Result<(), IndexError> {
    if write.is_empty() {
        return Ok(());
    }
    let receipt = library.commit(write)?;
    summary.batches += 1;
    summary.failed.extend(failed.iter().cloned());
    on_event(IndexEvent::Committed {
        batch: receipt.batch,
        indexed,
        failed,
        embedded,
    });
    Ok(())
}
