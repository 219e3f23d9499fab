//! `quarry demo`: the first command to run on a fresh machine. It needs no download and no
//! flags: it generates sample scenes with the synthetic-scene generator, indexes and captions
//! them with the built-in demo models, and serves the web page over them, exactly as
//! `quarry index` and `quarry serve` would.
//!
//! Everything lives in one workspace folder (`scenes/`, `store/`), so a second run reuses the
//! scenes and the store; indexing is incremental, so it does no model work the second time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use quarry::cache_dir::cache_dir;
use quarry::demo_models::{demo_captioner_dir, demo_retrieval_dir};
use quarry::indexing::{model_identity, CaptionSettings, IndexModels, IndexOptions};
use quarry::library::{Library, LibraryError};
use quarry::store::StoreError;
use quarry::synth::{generate, SynthOptions, ANNOTATIONS_FILE};
use quarry::LoadOptions;

use super::index::index_and_report;
use super::serve::{serve, ServerFlags};

/// Seed of the demo scenes: not 1 or 2, the seeds the demo model is trained on, so the demo
/// searches scenes the model has never seen.
const DEMO_SEED: u64 = 7;

/// Side of the demo scenes: the demo model's input size, so nothing is resized twice.
const DEMO_SIZE: u32 = 224;

/// Queries printed with the URL; the scenes' captions use these words.
const EXAMPLE_QUERIES: [&str; 5] = [
    "a red circle",
    "two blue squares",
    "a small yellow star above a green triangle",
    "a purple diamond on a white background",
    "three orange triangles",
];

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workspace folder: the scenes go to DIR/scenes, the store to DIR/store
    /// [default: demo-workspace in quarry's cache folder].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Number of sample scenes.
    #[arg(long, default_value_t = 200, value_name = "N")]
    n: usize,
    /// Index, then exit without serving (for scripts and tests).
    #[arg(long)]
    no_serve: bool,
    /// Indexing progress as JSON lines, as `quarry index --json` prints them.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerFlags,
    /// Where the models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if !args.no_serve {
        // Before minutes of work, not after.
        args.server.check()?;
    }
    let workspace = args
        .dir
        .clone()
        .unwrap_or_else(|| cache_dir().join("demo-workspace"));
    fs::create_dir_all(&workspace)
        .with_context(|| format!("creating the demo folder {}", workspace.display()))?;
    let scenes = workspace.join("scenes");
    ensure_scenes(&workspace, &scenes, args.n)?;

    let device = quarry::device::parse_device(&args.device)?;
    let options = LoadOptions {
        device: device.clone(),
        vision_dtype: candle_core::DType::F32,
    };
    let retrieval = demo_retrieval_dir()?;
    let captioner = demo_captioner_dir()?;
    eprintln!(
        "models: the built-in demo retrieval model and captioner ({} and {})",
        retrieval.display(),
        captioner.display()
    );
    let models = IndexModels::load(
        &retrieval,
        Some(&captioner),
        &options,
        &CaptionSettings::default(),
    )
    .context("loading the demo models")?;
    let store = workspace.join("store");
    let mut library = open_demo_store(&store, &models)?;
    index_and_report(
        &mut library,
        &models,
        &[scenes.join("images")],
        None,
        &IndexOptions::default(),
        &store,
        args.json,
    )?;

    if args.no_serve {
        eprintln!(
            "demo store ready: {} (run `quarry demo{}` to search it in the browser)",
            store.display(),
            args.dir
                .as_ref()
                .map(|d| format!(" --dir {}", d.display()))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bind = args.server.bind;
    let host = if bind.ip().is_unspecified() {
        std::net::SocketAddr::new([127, 0, 0, 1].into(), bind.port())
    } else {
        bind
    };
    eprintln!("\nOpen http://{host}/ and try:");
    for q in EXAMPLE_QUERIES {
        eprintln!("    {q}");
    }
    eprintln!(
        "or drop one of the scenes ({}) on the page to find similar ones. Ctrl-C stops.\n",
        scenes.join("images").display()
    );
    serve(
        library,
        models,
        &device,
        args.server,
        &store,
        &retrieval,
        None,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Makes `scenes` hold exactly `n` demo scenes: reused when a complete folder of `n` is there,
/// otherwise generated into a temporary folder and renamed into place (a folder with an
/// annotation file is complete, see [`quarry::synth::generate`]).
fn ensure_scenes(workspace: &Path, scenes: &Path, n: usize) -> Result<()> {
    if let Some(have) = scene_count(scenes) {
        if have == n {
            eprintln!(
                "reusing {n} sample scenes in {} (seed {DEMO_SEED})",
                scenes.display()
            );
            return Ok(());
        }
    }
    let partial = workspace.join(format!(".scenes.partial-{}", std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    eprintln!(
        "generating {n} sample scenes in {} (seed {DEMO_SEED}, {DEMO_SIZE} px)",
        scenes.display()
    );
    generate(
        &partial,
        SynthOptions {
            count: n,
            seed: DEMO_SEED,
            size: DEMO_SIZE,
        },
    )?;
    if scenes.exists() {
        // Another --n, or an interrupted earlier run: replace the folder. Scenes are
        // deterministic per index, so the store keeps the embeddings of the images that stay.
        let old = workspace.join(format!(".scenes.old-{}", std::process::id()));
        fs::rename(scenes, &old).with_context(|| format!("moving {} aside", scenes.display()))?;
        fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    fs::rename(&partial, scenes)
        .with_context(|| format!("moving the new scenes to {}", scenes.display()))?;
    Ok(())
}

/// How many scenes a complete scenes folder holds; `None` when there is none.
fn scene_count(scenes: &Path) -> Option<usize> {
    let bytes = fs::read(scenes.join(ANNOTATIONS_FILE)).ok()?;
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    Some(entries.len())
}

/// Opens the demo's store. The store is the demo's own: when it was made with other demo
/// weights (an older quarry), it is rebuilt rather than refused.
fn open_demo_store(store: &Path, models: &IndexModels) -> Result<Library> {
    let identity = model_identity(models);
    match Library::open(store, &identity) {
        Err(LibraryError::Store(StoreError::ModelMismatch { .. })) => {
            eprintln!(
                "the demo store {} was made with other demo models; indexing it again",
                store.display()
            );
            fs::remove_dir_all(store).with_context(|| format!("removing {}", store.display()))?;
            Ok(Library::open(store, &identity)?)
        }
        other => Ok(other?),
    }
}
