//! `quarry index`: add a photo library to a store, or bring the store up to date with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quarry::indexer::WalkOptions;
use quarry::indexing::{
    index_paths, index_watch_batch, model_identity, CaptionSettings, ImportedCaptions, IndexEvent,
    IndexModels, IndexOptions, IndexSummary,
};
use quarry::library::Library;
use quarry::watch::{FolderWatcher, WatchBatch, WatchTiming};
use quarry::LoadOptions;

use super::model_args::{open_library, retrieval_dir, store_models, Precision, StoreModels};

/// Arguments of `index`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folders or files to index.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Store folder (created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Retrieval model: a folder, or a hub name (e.g. Salesforce/blip2-itm-vit-g[@revision])
    /// found in the Hugging Face cache or downloaded [default: the built-in demo model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Captioning model, a folder or hub name (e.g. Salesforce/blip2-opt-2.7b): captions every image for
    /// word search and image → text [default: none; the built-in demo captioner when
    /// --model is not given either].
    #[arg(long, value_name = "DIR")]
    caption_model: Option<PathBuf>,
    /// Captions you already have, instead of a captioner: a LAVIS-format annotation file
    /// ([{"image": "rel/path", "caption": "…" or ["…", …]}], what `quarry synth` writes), image
    /// paths relative to the file's folder. Images it does not name get no caption.
    #[arg(long, value_name = "FILE", conflicts_with = "caption_model")]
    captions: Option<PathBuf>,
    /// Skip files and folders matching this glob (repeatable), e.g. '**/Thumbnails/**'.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Index hidden files and folders too.
    #[arg(long)]
    include_hidden: bool,
    /// Images per model batch; each batch is one durable commit.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Keep each image's ViT output for fast ITM re-ranking (~0.7 MB per image at ViT-g):
    /// on or off, remembered by the store.
    #[arg(long, value_parser = ["on", "off"])]
    feature_cache: Option<String>,
    /// Beams for captions (1 = greedy).
    #[arg(long, default_value_t = 1)]
    caption_beams: usize,
    /// Most new tokens per caption.
    #[arg(long, default_value_t = 30)]
    caption_max_tokens: usize,
    /// Where the models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// Precision of the image encoder.
    #[arg(long, value_enum, default_value = "f32")]
    vision_dtype: Precision,
    /// One JSON object per committed batch ({"event": "batch", ...}), then a summary object.
    #[arg(long)]
    json: bool,
    /// After indexing, keep following the folders: new, changed, moved and deleted photos are
    /// indexed as they land (a file is taken once it stops growing). Ctrl-C stops; everything
    /// reported as indexed is kept.
    #[arg(long)]
    watch: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let device = quarry::device::parse_device(&args.device)?;
    let options = LoadOptions {
        device,
        vision_dtype: args.vision_dtype.into(),
    };
    let caption_settings = CaptionSettings {
        num_beams: args.caption_beams,
        max_new_tokens: args.caption_max_tokens,
        min_new_tokens: CaptionSettings::default()
            .min_new_tokens
            .min(args.caption_max_tokens),
        ..CaptionSettings::default()
    };
    let dirs = match &args.captions {
        None => store_models(args.model.as_deref(), args.caption_model.as_deref())?,
        Some(_) => StoreModels {
            retrieval: retrieval_dir(args.model.as_deref())?,
            caption: None,
            retrieval_by_default: args.model.is_none(),
        },
    };
    let mut models = IndexModels::load(
        &dirs.retrieval,
        dirs.caption.as_deref(),
        &options,
        &caption_settings,
    )
    .context("loading the models")?;
    if let Some(file) = &args.captions {
        let root = file.parent().unwrap_or(Path::new("."));
        let captions = ImportedCaptions::from_annotations(file, root, None)?;
        eprintln!(
            "captions for {} images from {}",
            captions.len(),
            file.display()
        );
        models = models.with_imported_captions(captions);
    }
    let identity = model_identity(&models);
    let mut library = open_library(&args.store, &identity, &dirs)?;
    if let Some(setting) = &args.feature_cache {
        library.store().set_feature_cache(setting == "on")?;
    }
    let index_options = IndexOptions {
        walk: WalkOptions {
            excludes: args.exclude.clone(),
            include_hidden: args.include_hidden,
        },
        batch_size: args.batch,
        ..IndexOptions::default()
    };
    // Watching starts before the first walk, so nothing that lands during it is missed.
    let mut watcher = if args.watch {
        Some(FolderWatcher::new(&args.paths, WatchTiming::default())?)
    } else {
        None
    };
    index_and_report(
        &mut library,
        &models,
        &args.paths,
        None,
        &index_options,
        &args.store,
        args.json,
    )?;
    let Some(watcher) = watcher.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!(
        "watching {} for changes (Ctrl-C stops; everything reported as indexed is kept)",
        args.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut pending_rescan = false;
    while let Some(batch) = if pending_rescan {
        Some(WatchBatch::Rescan)
    } else {
        watcher.next_batch(&|| false)
    } {
        pending_rescan = false;
        if args.json {
            let line = match &batch {
                WatchBatch::Changed(paths) => {
                    serde_json::json!({"event": "watch", "changed": paths})
                }
                WatchBatch::Rescan => serde_json::json!({"event": "watch", "rescan": true}),
            };
            println!("{line}");
        }
        let result = index_and_report(
            &mut library,
            &models,
            &args.paths,
            Some(&batch),
            &index_options,
            &args.store,
            args.json,
        );
        if let Err(e) = result {
            // A failed batch (a full disk, a store error) loses nothing acknowledged; what it
            // did not finish is found again by a full walk once things recover.
            eprintln!("error: {e:#}; walking the folders again in 10 s");
            std::thread::sleep(std::time::Duration::from_secs(10));
            pending_rescan = true;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Indexes `paths` (or, with `watched`, one watcher batch over them) with a progress bar on
/// stderr (hidden with `json`), then prints what `quarry index` prints: with `json` one line
/// per committed batch and a summary object, otherwise two readable lines. Shared with
/// `quarry demo`.
pub(super) fn index_and_report(
    library: &mut Library,
    models: &IndexModels,
    paths: &[PathBuf],
    watched: Option<&WatchBatch>,
    index_options: &IndexOptions,
    store: &Path,
    json: bool,
) -> Result<IndexSummary> {
    let keep_features = library.store().feature_cache_enabled();
    let bar = ProgressBar::with_draw_target(
        None,
        if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("valid template"),
    );
    let stdout = std::io::stdout();
    let mut write_error = None;
    let mut on_event = |event: IndexEvent<'_>| match event {
        IndexEvent::Planned(plan) => {
            bar.set_length(plan.to_embed());
            bar.set_message(format!(
                "{} found, {} unchanged, {} moved, {} deleted",
                plan.found, plan.unchanged, plan.moved, plan.deleted
            ));
        }
        IndexEvent::Committed {
            batch,
            indexed,
            failed,
            embedded,
        } => {
            bar.inc(embedded);
            for f in failed {
                bar.suspend(|| eprintln!("skipped {}: {}", f.path.display(), f.reason));
            }
            if json {
                let line = serde_json::json!({
                    "event": "batch",
                    "batch": batch,
                    "indexed": indexed,
                    "failed": failed,
                });
                if let Err(e) = writeln!(stdout.lock(), "{line}") {
                    write_error.get_or_insert(e);
                }
            }
        }
    };
    let summary = match watched {
        None => index_paths(
            library,
            models,
            paths,
            index_options,
            keep_features,
            &mut on_event,
        )?,
        Some(batch) => index_watch_batch(
            library,
            models,
            paths,
            batch,
            index_options,
            keep_features,
            &mut on_event,
        )?,
    };
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e).context("writing progress to stdout");
    }
    if let Some(why) = &summary.unsaved_index {
        eprintln!(
            "warning: every file above is indexed and searchable, but the vector index could \
             not be saved ({why}); the next start replays it from the store"
        );
        if let Some(fault) = quarry::disk_faults::DiskFault::in_message(why) {
            eprintln!("hint: {}", fault.hint());
        }
    }
    let counts = library.counts()?;
    let mut out = stdout.lock();
    if json {
        let mut line = serde_json::to_value(&summary)?;
        line["event"] = "summary".into();
        line["model_busy_fraction"] = summary.model_busy_fraction().into();
        line["store"] = serde_json::to_value(counts)?;
        writeln!(out, "{line}")?;
    } else {
        let p = &summary.plan;
        writeln!(
            out,
            "{} images found: {} indexed, {} unchanged, {} moved, {} copied, {} removed, {} failed \
             ({:.1} s{})",
            p.found,
            summary.indexed,
            p.unchanged,
            p.moved,
            p.copied,
            p.deleted,
            summary.failed.len(),
            summary.seconds,
            summary
                .model_busy_fraction()
                .map(|f| format!(", model busy {:.0} %", f * 100.0))
                .unwrap_or_default(),
        )?;
        writeln!(
            out,
            "store {}: {} images, {} captions, {} texts, {} failed",
            store.display(),
            counts.images,
            counts.captions,
            counts.texts,
            counts.failed
        )?;
    }
    Ok(summary)
}
