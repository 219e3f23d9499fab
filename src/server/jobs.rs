//! The one indexing job a server runs at a time, on its own thread, writing through the
//! server's `RwLock<Library>` one commit at a time so searches keep answering.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::indexing::{index_paths, IndexEvent, IndexModels, IndexOptions};
use crate::library::Library;

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

    /// Starts indexing `paths` on a new thread; `None` when a job is already running.
    pub fn start(
        &self,
        library: Arc<RwLock<Library>>,
        models: Arc<IndexModels>,
        paths: Vec<PathBuf>,
    ) -> Option<u64> {
        let job = {
            let mut s = self.lock();
            if s.state == JobState::Running {
                return None;
            }
            let job = s.job + 1;
            *s = JobStatus {
                job,
                state: JobState::Running,
                message: format!("planning {} path(s)", paths.len()),
                started: Some(Instant::now()),
                ..JobStatus::default()
            };
            job
        };
        let tracker = self.clone();
        std::thread::Builder::new()
            .name(format!("index-job-{job}"))
            .spawn(move || tracker.work(&library, &models, &paths))
            .map_err(|e| {
                let mut s = self.lock();
                s.state = JobState::Failed;
                s.message = format!("could not start the indexing thread: {e}");
            })
            .ok()?;
        Some(job)
    }

    fn work(&self, library: &RwLock<Library>, models: &IndexModels, paths: &[PathBuf]) {
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
        let result = index_paths(
            &mut target,
            models,
            paths,
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
                    "{} indexed, {} unchanged, {} removed, {} failed in {:.1} s",
                    summary.indexed,
                    summary.plan.unchanged,
                    summary.plan.deleted,
                    summary.failed.len(),
                    summary.seconds
                );
            }
            Err(e) => {
                s.state = JobState::Failed;
                s.eta_s = None;
                s.message = e.to_string();
            }
        }
    }
}
