//! `quarry serve`: the HTTP API and web page over one store.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::Device;
use quarry::indexing::{model_identity, CaptionSettings, IndexModels};
use quarry::library::Library;
use quarry::search::{SearchFusion, SearchSettings};
use quarry::server::{AppState, JobState, Limits, ServerConfig};
use quarry::watch::{FolderWatcher, WatchBatch, WatchTiming};
use quarry::LoadOptions;

use super::model_args::{open_library, store_models, Precision};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store folder (created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Retrieval model, a folder or hub name (the one the store was indexed with) [default:
    /// the built-in demo model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Captioning model, a folder or hub name, used by indexing jobs started from the server [default: none;
    /// the built-in demo captioner when --model is not given either].
    #[arg(long, value_name = "DIR")]
    caption_model: Option<PathBuf>,
    /// A folder to keep indexed (repeatable): walked at start, then new, changed, moved and
    /// deleted photos are indexed as they land, shown in the page's progress banner.
    #[arg(long, value_name = "DIR")]
    watch: Vec<PathBuf>,
    #[command(flatten)]
    server: ServerFlags,
    /// Where the models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// Precision of the image encoder.
    #[arg(long, value_enum, default_value = "f32")]
    vision_dtype: Precision,
}

/// The server's flags, shared by `serve` and `demo`.
#[derive(Debug, clap::Args)]
pub struct ServerFlags {
    /// Address to listen on. Loopback by default: anything else exposes the photo library.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
    /// Token that writes and indexing jobs must send as `Authorization: Bearer <token>`.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Candidates re-ranked by ITM per search when the request does not say (default: the
    /// depth the model folder's fitted search fusion chose, else 16 on CPU, 128 on a GPU).
    #[arg(long, value_name = "N")]
    rerank: Option<usize>,
    /// HTTP worker threads (they never run the model).
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: usize,
    /// Requests that may run the model at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    model_slots: usize,
    /// Seconds a request waits for a model slot before answering 503 busy.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    busy_wait: f64,
    /// Largest uploaded image, in MiB.
    #[arg(long, default_value_t = 20, value_name = "MIB")]
    max_upload_mib: usize,
    /// A folder that POST /index may index (repeatable; paths under it only) [default: any
    /// absolute path, or the --watch folders when there are some].
    #[arg(long, value_name = "DIR")]
    index_root: Vec<PathBuf>,
    /// Requests one client address may have in progress at once; more are answered 429
    /// (0: no limit, e.g. behind a reverse proxy that limits clients itself).
    #[arg(long, default_value_t = 32, value_name = "N")]
    per_client: usize,
}

impl ServerFlags {
    /// Checks the flags before anything slow happens: the numbers are in range and the
    /// address can be listened on (a port in use is the usual first-run problem).
    pub fn check(&self) -> Result<()> {
        if !(0.0..=3600.0).contains(&self.busy_wait) {
            anyhow::bail!("--busy-wait must be between 0 and 3600 seconds");
        }
        TcpListener::bind(self.bind).map_err(|e| bind_error(self.bind, e))?;
        Ok(())
    }
}

/// A clear message for an address that cannot be listened on.
fn bind_error(bind: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let next = SocketAddr::new(bind.ip(), bind.port().wrapping_add(1).max(1024));
    match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{bind} is already in use (another quarry serve or demo, or another program): stop \
             it or pass --bind with a free port, e.g. --bind {next}"
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {bind} (ports below 1024 need privileges): pass --bind \
             with another port, e.g. --bind {}",
            SocketAddr::new(bind.ip(), 8080)
        ),
        _ => anyhow::Error::new(e).context(format!("cannot listen on {bind}")),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    args.server.check()?;
    let device = quarry::device::parse_device(&args.device)?;
    let options = LoadOptions {
        device: device.clone(),
        vision_dtype: args.vision_dtype.into(),
    };
    let dirs = store_models(args.model.as_deref(), args.caption_model.as_deref())?;
    let models = IndexModels::load(
        &dirs.retrieval,
        dirs.caption.as_deref(),
        &options,
        &CaptionSettings::default(),
    )
    .context("loading the models")?;
    let library = open_library(&args.store, &model_identity(&models), &dirs)?;
    let watcher = if args.watch.is_empty() {
        None
    } else {
        Some(FolderWatcher::new(&args.watch, WatchTiming::default())?)
    };
    let roots = args
        .watch
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
        .collect();
    let watch = watcher.map(|w| (w, roots));
    serve(
        library,
        models,
        &device,
        args.server,
        &args.store,
        &dirs.retrieval,
        watch,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Follows watched folders on a thread of its own: a full walk first (what changed while the
/// server was down), then each settled batch of changes, as indexing jobs of origin `watch`.
fn follow_watched(state: &AppState, mut watcher: FolderWatcher, roots: Vec<PathBuf>) -> Result<()> {
    let library = state.library.clone();
    let models = state.models.clone();
    let jobs = state.jobs.clone();
    jobs.set_watching(roots.clone());
    eprintln!(
        "watching {} for changes",
        roots
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            jobs.run_watched(&library, &models, &roots, &WatchBatch::Rescan);
            while let Some(batch) = watcher.next_batch(&|| false) {
                jobs.run_watched(&library, &models, &roots, &batch);
                if jobs.status().state == JobState::Failed {
                    // Found again by a full walk once the cause (a full disk) is gone.
                    std::thread::sleep(Duration::from_secs(10));
                    jobs.run_watched(&library, &models, &roots, &WatchBatch::Rescan);
                }
            }
        })
        .context("starting the folder watcher")?;
    Ok(())
}

/// Serves `library` until Ctrl-C or SIGTERM, as `quarry serve` does. Shared with `quarry demo`.
/// `retrieval_folder` holds the retrieval model, and with it the search fusion fitted for it
/// (see [`SearchFusion::for_store`]).
pub(super) fn serve(
    library: Library,
    models: IndexModels,
    device: &Device,
    flags: ServerFlags,
    store: &Path,
    retrieval_folder: &Path,
    watch: Option<(FolderWatcher, Vec<PathBuf>)>,
) -> Result<()> {
    let mut search = SearchSettings::for_device(device);
    search.fusion = SearchFusion::for_store(retrieval_folder, library.store().model())?;
    if !search.fusion.fitted {
        eprintln!(
            "note: no search fusion is fitted for this model and these captions ({}); words \
             only break near-ties of the image embeddings (quarry eval-search --fit fits one)",
            search.fusion.caption_source
        );
    }
    if let Some(n) = flags.rerank.or(search.fusion.rerank) {
        anyhow::ensure!(
            n <= search.max_rerank,
            "--rerank {n} is above the limit of {}",
            search.max_rerank
        );
        search.rerank_default = n;
    }
    let config = ServerConfig {
        bind: flags.bind,
        token: flags.token.filter(|t| !t.is_empty()),
        workers: flags.workers,
        model_permits: flags.model_slots,
        busy_wait: Duration::from_secs_f64(flags.busy_wait),
        search,
        limits: Limits {
            max_upload_bytes: flags.max_upload_mib.max(1) << 20,
            per_client: flags.per_client,
            ..Limits::default()
        },
        index_roots: if flags.index_root.is_empty() {
            watch
                .as_ref()
                .map(|(_, roots)| roots.clone())
                .unwrap_or_default()
        } else {
            flags
                .index_root
                .iter()
                .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
                .collect()
        },
    };
    if !flags.bind.ip().is_loopback() && config.token.is_none() {
        eprintln!(
            "warning: listening on {} without --token: anyone who can reach it can add texts \
             and start indexing jobs",
            flags.bind
        );
    }
    let state = AppState::new(library, models, &config);
    if let Some((watcher, roots)) = watch {
        follow_watched(&state, watcher, roots)?;
    }
    eprintln!(
        "quarry serving {} on http://{}/",
        store.display(),
        flags.bind
    );
    quarry::server::run(state, &config).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
        ) {
            bind_error(flags.bind, e)
        } else {
            anyhow::Error::new(e).context("running the server")
        }
    })?;
    eprintln!("quarry stopped; store checkpointed");
    Ok(())
}
