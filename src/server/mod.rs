//! `quarry serve`: the JSON API under `/api/v1` and the embedded web page, over one library
//! that the server owns for its whole life.
//!
//! Concurrency: actix's async workers only parse, check and answer. Everything that touches
//! the model (text and image encoding, ITM) runs on the blocking pool behind a [`ModelPool`]
//! permit: at most `model_permits` requests compute at once; a request that cannot get a
//! permit within `busy_wait` answers 503 `busy` instead of queueing without bound. Health,
//! stats and metadata need no permit, so they answer while the model is saturated. The
//! library sits in a `RwLock`: searches read it; added texts and indexing jobs write it, one
//! commit at a time (see [`crate::indexing::IndexTarget`]).

// see src/search/mod.rs: results carry SearchError/ApiError by value, once per request.
#![allow(clippy::result_large_err)]

mod assets;
mod clients;
mod error;
mod jobs;
mod openapi;
mod params;
mod routes;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::{web, App, HttpServer};

pub use self::clients::ClientLimits;
pub use self::error::ApiError;
pub use self::jobs::{JobState, JobStatus, JobTracker};
use crate::indexing::{model_identity, IndexModels};
use crate::library::Library;
use crate::search::{SearchSettings, Searcher};
use crate::store::ModelIdentity;

/// Request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest uploaded image (multipart body), bytes.
    pub max_upload_bytes: usize,
    /// Largest JSON body, bytes.
    pub max_json_bytes: usize,
    /// Most texts per `POST /texts`.
    pub max_texts: usize,
    /// Requests one client address may have in flight (0: no limit; see [`ClientLimits`]).
    pub per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 << 20,
            max_json_bytes: 1 << 20,
            max_texts: 256,
            per_client: 32,
        }
    }
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (loopback by default).
    pub bind: SocketAddr,
    /// Bearer token required for writes and jobs, when set.
    pub token: Option<String>,
    /// actix worker threads (async; they never run the model).
    pub workers: usize,
    /// Requests allowed to run model work at once.
    pub model_permits: usize,
    /// How long a request waits for a model permit before answering 503 `busy`.
    pub busy_wait: Duration,
    /// Search limits and fusion settings.
    pub search: SearchSettings,
    /// Body limits.
    pub limits: Limits,
    /// Folders `POST /index` may index (paths under them only); empty: any absolute path.
    pub index_roots: Vec<PathBuf>,
}

/// `size` permits, each waited for at most `wait`: what bounds model work and uploads.
#[derive(Debug, Clone)]
struct Permits {
    semaphore: Arc<tokio::sync::Semaphore>,
    size: usize,
    wait: Duration,
}

impl Permits {
    fn new(size: usize, wait: Duration) -> Self {
        let size = size.max(1);
        Self {
            semaphore: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
            wait,
        }
    }

    fn in_use(&self) -> usize {
        self.size - self.semaphore.available_permits()
    }

    /// A permit, or 503 `busy` (saying `busy`) after the wait.
    async fn acquire(
        &self,
        busy: impl FnOnce() -> String,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let acquire = self.semaphore.clone().acquire_owned();
        match actix_web::rt::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::busy("the server is shutting down")),
            Err(_) => Err(ApiError::busy(busy())),
        }
    }
}

/// Bounds model work: a permit per request, waited for at most `wait`.
#[derive(Debug, Clone)]
pub struct ModelPool {
    permits: Permits,
}

impl ModelPool {
    /// A pool of `size` permits.
    pub fn new(size: usize, wait: Duration) -> Self {
        Self {
            permits: Permits::new(size, wait),
        }
    }

    /// Model slots.
    pub fn size(&self) -> usize {
        self.permits.size
    }

    /// Requests computing right now.
    pub fn in_use(&self) -> usize {
        self.permits.in_use()
    }

    /// Runs `work` on the blocking pool once a permit is free; 503 `busy` after the wait.
    pub async fn run<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let (size, wait) = (self.permits.size, self.permits.wait);
        let permit = self
            .permits
            .acquire(|| {
                format!(
                    "all {size} model slots stayed busy for {:.1} s; try again shortly",
                    wait.as_secs_f64()
                )
            })
            .await?;
        web::block(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(ApiError::internal)
    }
}

/// Bounds the memory uploads hold: a request body is read only while it holds one of `size`
/// permits (waited for at most `wait`, then 503 `busy`), and keeps it until its answer is
/// computed. A flood of uploads therefore holds at most `size` × the upload limit, however
/// many clients send at once.
#[derive(Debug, Clone)]
pub struct UploadGate {
    permits: Permits,
}

impl UploadGate {
    /// A gate for `size` uploads at once (at least one).
    pub fn new(size: usize, wait: Duration) -> Self {
        Self {
            permits: Permits::new(size, wait),
        }
    }

    /// Uploads allowed at once.
    pub fn size(&self) -> usize {
        self.permits.size
    }

    /// Uploads being read or worked on right now.
    pub fn in_use(&self) -> usize {
        self.permits.in_use()
    }

    /// Waits for a permit; 503 `busy` after the wait.
    pub async fn enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let size = self.permits.size;
        self.permits
            .acquire(|| format!("{size} uploads are already being processed; try again shortly"))
            .await
    }
}

/// What every handler shares.
pub struct AppState {
    /// The library, owned by the server.
    pub library: Arc<RwLock<Library>>,
    /// The loaded models.
    pub models: Arc<IndexModels>,
    /// The store's model identity (names for /stats).
    pub identity: ModelIdentity,
    /// Search settings.
    pub search: SearchSettings,
    /// Body limits.
    pub limits: Limits,
    /// The model permits.
    pub pool: ModelPool,
    /// The upload permits (two per model slot, and two more: enough to keep the slots fed
    /// while the next bodies arrive).
    pub uploads: UploadGate,
    /// Bearer token for writes.
    pub token: Option<String>,
    /// Requests in flight per client address.
    pub clients: ClientLimits,
    /// The indexing job.
    pub jobs: JobTracker,
    /// Where thumbnails are cached.
    pub thumbnails: PathBuf,
    /// Folders `POST /index` may index; empty: any absolute path.
    pub index_roots: Vec<PathBuf>,
}

impl AppState {
    /// State over an opened library and loaded models.
    pub fn new(library: Library, models: IndexModels, config: &ServerConfig) -> Self {
        let thumbnails = library.dir().join("thumbnails");
        Self {
            identity: model_identity(&models),
            library: Arc::new(RwLock::new(library)),
            models: Arc::new(models),
            search: config.search.clone(),
            limits: config.limits,
            pool: ModelPool::new(config.model_permits, config.busy_wait),
            uploads: UploadGate::new(2 * config.model_permits.max(1) + 2, config.busy_wait),
            token: config.token.clone(),
            clients: ClientLimits::new(config.limits.per_client),
            jobs: JobTracker::default(),
            thumbnails,
            index_roots: config.index_roots.clone(),
        }
    }

    /// Read access to the library (a poisoned lock is still readable: writers commit
    /// atomically, so a panic mid-write leaves the previous state).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Library> {
        self.library
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A searcher over the models.
    pub fn searcher(models: &IndexModels, settings: SearchSettings) -> Searcher<'_> {
        Searcher::new(
            &models.retriever,
            &models.retrieval.tokenizer,
            &models.retrieval.preprocess,
            settings,
        )
    }
}

/// Registers every route (the API, the web page) on an actix app; used by [`run`] and tests.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let limits = state.limits;
        cfg.app_data(state)
            .app_data(
                web::JsonConfig::default()
                    .limit(limits.max_json_bytes)
                    .error_handler(|e, _| error::json_error(e).into()),
            )
            .app_data(
                web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()))
            .app_data(web::PayloadConfig::default().limit(limits.max_upload_bytes + 64 * 1024));
        routes::register(cfg);
        assets::register(cfg);
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then checkpoints the library.
pub fn run(state: AppState, config: &ServerConfig) -> std::io::Result<()> {
    let state = web::Data::new(state);
    let library = state.library.clone();
    let workers = config.workers.max(1);
    let bind = config.bind;
    let served = actix_web::rt::System::new().block_on(async move {
        let app_state = state.clone();
        HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::Compress::default())
                .configure(configure(app_state.clone()))
        })
        .workers(workers)
        .shutdown_timeout(10)
        .bind(bind)?
        .run()
        .await
    });
    // Whatever happened to the server, persist the vector indexes for a fast next start.
    let checkpoint = library
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .checkpoint();
    served?;
    checkpoint.map_err(std::io::Error::other)
}
