//! `quarry serve`: the HTTP API and web page over one store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use quarry::indexing::{model_identity, CaptionSettings, IndexModels};
use quarry::library::Library;
use quarry::search::SearchSettings;
use quarry::server::{AppState, Limits, ServerConfig};
use quarry::LoadOptions;

use super::model_args::Precision;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store folder (created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Retrieval model folder (the one the store was indexed with).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Captioning model folder, used by indexing jobs started from the server.
    #[arg(long, value_name = "DIR")]
    caption_model: Option<PathBuf>,
    /// Address to listen on. Loopback by default: anything else exposes the photo library.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    bind: SocketAddr,
    /// Token that writes and indexing jobs must send as `Authorization: Bearer <token>`.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Candidates re-ranked by ITM per search when the request does not say (default: 16 on
    /// CPU, 128 on a GPU).
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
    /// Where the models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// Precision of the image encoder.
    #[arg(long, value_enum, default_value = "f32")]
    vision_dtype: Precision,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if !(0.0..=3600.0).contains(&args.busy_wait) {
        anyhow::bail!("--busy-wait must be between 0 and 3600 seconds");
    }
    let device = quarry::device::parse_device(&args.device)?;
    let options = LoadOptions {
        device: device.clone(),
        vision_dtype: args.vision_dtype.into(),
    };
    let models = IndexModels::load(
        &args.model,
        args.caption_model.as_deref(),
        &options,
        &CaptionSettings::default(),
    )
    .context("loading the models")?;
    let library = Library::open(&args.store, &model_identity(&models))?;
    let mut search = SearchSettings::for_device(&device);
    if let Some(n) = args.rerank {
        anyhow::ensure!(
            n <= search.max_rerank,
            "--rerank {n} is above the limit of {}",
            search.max_rerank
        );
        search.rerank_default = n;
    }
    let config = ServerConfig {
        bind: args.bind,
        token: args.token.filter(|t| !t.is_empty()),
        workers: args.workers,
        model_permits: args.model_slots,
        busy_wait: Duration::from_secs_f64(args.busy_wait),
        search,
        limits: Limits {
            max_upload_bytes: args.max_upload_mib.max(1) << 20,
            ..Limits::default()
        },
    };
    if !args.bind.ip().is_loopback() && config.token.is_none() {
        eprintln!(
            "warning: listening on {} without --token: anyone who can reach it can add texts \
             and start indexing jobs",
            args.bind
        );
    }
    let state = AppState::new(library, models, &config);
    eprintln!(
        "quarry serving {} on http://{}/",
        args.store.display(),
        args.bind
    );
    quarry::server::run(state, &config).context("running the server")?;
    eprintln!("quarry stopped; store checkpointed");
    Ok(ExitCode::SUCCESS)
}
