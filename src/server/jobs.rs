//! The one indexing job a server runs at a time, on its own thread, writing through the
//! server's `RwLock<Library>` one commit at a time so searches keep answering.
//!
//! Jobs come from `POST /index` or from watched folders (`quarry serve --watch DIR`): the
//! watcher's batches run one after another as jobs of origin `watch`, waiting while a requested
//! job runs, so the web page's progress banner shows both.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::indexing::{index_watch_batch, IndexEvent, IndexModels, IndexOptions};
use crate::library::Library;
use crate::watch::WatchBatch;

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOrigin {
    /// `POST /index` (or no job yet).
    Request,
    /// A change in a watched folder.
    Watch,
}

/// Where the job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// No job has run.
    Idle,
    /// A job is running.
    Running,
    /// The last job finished.
    Done,
    /// The last job stopped with an error.
    Failed,
}

/// Progress of the current or last job (the `GET /index` answer).
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// The job number (0 before the first).
    pub job: u64,
    /// State.
    pub state: JobState,
    /// Images embedded so far.
    pub done: u64,
    /// Images to embed.
    pub total: u64,
    /// Files that failed.
    pub failed: u64,
    /// Images per second since the model stage started.
    pub rate: f64,
    /// Estimated seconds left, when known.
    pub eta_s: Option<f64>,
    /// A sentence about the plan, the outcome or the failure.
    pub message: String,
    /// What started the job.
    pub origin: JobOrigin,
    /// The folders the server watches (empty without `--watch`): the page keeps polling.
    pub watching: Vec<PathBuf>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Default for JobStatus {
    fn default() -> Self {
        Self {
            job: 0,
            state: JobState::Idle,
            done: 0,
            total: 0,
            failed: 0,
            rate: 0.0,
            eta_s: None,
            message: String::new(),
            origin: JobOrigin::Request,
            watching: Vec::new(),
            started: None,
        }
    }
}

/// Holds the job status; cloned handles share it.
#[derive(Debug, Clone, Default)]
pub struct JobTracker {
    status: Arc<Mutex<JobStatus>>,
}

impl JobTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current status, with rate and ETA brought up to now.
    pub fn status(&self) -> JobStatus {
        let mut s = self.lock().clone();
        if s.state == JobState::Running {
            if let Some(started) = s.started {
                let secs = started.elapsed().as_secs_f64();
                if secs > 0.0 && s.done > 0 {
                    s.rate = s.done as f64 / secs;
                    s.eta_s = Some(s.total.saturating_sub(s.done) as f64 / s.rate);
                }
            }
        }
        s
    }

    /// Marks a new job running, unless one is; its number.
    fn begin(&self, origin: JobOrigin, message: String) -> Option<u64> {
        let mut s = self.lock();
        if s.state == JobState::Running {
            return None;
        }
        let job = s.job + 1;
        let watching = std::mem::take(&mut s.watching);
        *s = JobStatus {
            job,
            state: JobState::Running,
            message,
            origin,
            watching,
            started: Some(Instant::now()),
            ..JobStatus::default()
        };
        Some(job)
    }

    /// Starts indexing `paths` on a new thread; `None` when a job is already running.
    pub fn start(
        &self,
        library: Arc<RwLock<Library>>,
        models: Arc<IndexModels>,
        paths: Vec<PathBuf>,
    ) -> Option<u64> {
        let job = self.begin(
            JobOrigin::Request,
            format!("planning {} path(s)", paths.len()),
        )?;
        let tracker = self.clone();
        std::thread::Builder::new()
            .name(format!("index-job-{job}"))
            .spawn(move || tracker.work(&library, &models, &paths, &WatchBatch::Rescan))
            .map_err(|e| {
                let mut s = self.lock();
                s.state = JobState::Failed;
                s.message = format!("could not start the indexing thread: {e}");
            })
            .ok()?;
        Some(job)
    }

    /// Records the folders a watcher follows (shown by `GET /index`).
    pub fn set_watching(&self, roots: Vec<PathBuf>) {
        self.lock().watching = roots;
    }

    /// Runs one watched batch as a job on the calling thread, after any running job ends.
    pub fn run_watched(
        &self,
        library: &RwLock<Library>,
        models: &IndexModels,
        roots: &[PathBuf],
        batch: &WatchBatch,
    ) {
        let message = match batch {
            WatchBatch::Rescan => format!("watched folders: walking {} folder(s)", roots.len()),
            WatchBatch::Changed(paths) => format!("watched folders: {} change(s)", paths.len()),
        };
        while self.begin(JobOrigin::Watch, message.clone()).is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.work(library, models, roots, batch);
    }

    /// Runs a job: `batch` over `roots` (a full walk of `roots` for [`WatchBatch::Rescan`]).
    fn work(
        &self,
        library: &RwLock<Library>,
        models: &IndexModels,
        roots: &[PathBuf],
        batch: &WatchBatch,
    ) {
        let keep_features = library
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .store()
            .feature_cache_enabled();
        let mut target = library;
        let mut on_event = |event: IndexEvent<'_>| {
            let mut s = self.lock();
            match event {
                IndexEvent::Planned(plan) => {
                    s.total = plan.to_embed();
                    s.started = Some(Instant::now());
                    s.message = format!(
                        "{} found, {} unchanged, {} moved, {} deleted",
                        plan.found, plan.unchanged, plan.moved, plan.deleted
                    );
                }
                IndexEvent::Committed {
                    embedded, failed, ..
                } => {
                    s.done += embedded;
                    s.failed += failed.len() as u64;
                }
            }
        };
        let result = index_watch_batch(
            &mut target,
            models,
            roots,
            batch,
            &IndexOptions::default(),
            keep_features,
            &mut on_event,
        );
        let mut s = self.lock();
        match result {
            Ok(summary) => {
                s.state = JobState::Done;
                s.done = summary.indexed;
                s.failed = summary.failed.len() as u64;
                s.rate = if summary.seconds > 0.0 {
                    summary.indexed as f64 / summary.seconds
                } else {
                    0.0
                };
                s.eta_s = Some(0.0);
                s.message = format!(
                    "{}{} indexed, {} unchanged, {} moved, {} removed, {} failed in {:.1} s{}",
                    if s.origin == JobOrigin::Watch {
                        "watched folders: "
                    } else {
                        ""
                    },
                    summary.indexed,
                    summary.plan.unchanged,
                    summary.plan.moved,
                    summary.plan.deleted,
                    summary.failed.len(),
                    summary.seconds,
                    summary
                        .unsaved_index
                        .as_ref()
                        .map(|why| format!(
                            "; the vector index could not be saved ({why}): it is replayed \
                             from the store at the next start"
                        ))
                        .unwrap_or_default()
                );
            }
            Err(e) => {
                s.state = JobState::Failed;
                s.eta_s = None;
                s.message = match crate::disk_faults::DiskFault::cause_of(&e) {
                    Some(fault) => format!("{e} — {}", fault.hint()),
                    None => e.to_string(),
                };
            }
        }
    }
}
