//! `quarry eval-search`: text → image recall of the search as `quarry serve` answers it, over
//! an indexed store and a LAVIS-format annotation file (see [`quarry::eval::served`]). A
//! markdown report, and with `--json` one JSON object as the last line. `--fit FILE` fits the
//! search fusion for the store's caption source and the ITM calibration on this (validation!)
//! data and writes them into FILE, normally the model folder's `search_fusion.json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use quarry::eval::served::{evaluate_served, ServedEvalOptions, ServedReport};
use quarry::eval::Annotations;
use quarry::indexing::{model_identity, CaptionSettings, IndexModels};
use quarry::library::Library;
use quarry::search::{SearchFusion, SearchFusionFile, SearchSettings, Searcher};
use quarry::LoadOptions;

use super::model_args::retrieval_dir;

/// Arguments of `eval-search`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store folder, indexed from the annotation's images.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Retrieval model (folder or hub name) the store was indexed with [default: the built-in
    /// demo model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// LAVIS-format annotation file (`quarry synth` writes one).
    #[arg(long, value_name = "FILE")]
    annotations: PathBuf,
    /// Folder the annotation's image paths are relative to [default: the annotation file's
    /// folder].
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Served re-ranking depth, as `quarry serve --rerank` [default: serve's: the fitted
    /// depth, else 16 on a CPU].
    #[arg(long, value_name = "N")]
    rerank: Option<usize>,
    /// More re-ranking depths to report (comma-separated).
    #[arg(
        long,
        value_name = "N,N",
        value_delimiter = ',',
        default_value = "16,32"
    )]
    depths: Vec<usize>,
    /// Fit the fusion weights and the ITM calibration on this data and write them to FILE
    /// (merged into an existing file; other caption sources' fits are kept). Fit on
    /// validation data, report on held-out data.
    #[arg(long, value_name = "FILE")]
    fit: Option<PathBuf>,
    /// With --fit: write only the ITM calibration (keep the file's fusion weights). The
    /// calibration depends on the library's size, so it may be fitted on a store of the size
    /// users search while the weights come from a larger one.
    #[arg(long, requires = "fit")]
    calibration_only: bool,
    /// Print the report as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let annotations = Annotations::load(&args.annotations, None)?;
    let image_root = match &args.images {
        Some(d) => d.clone(),
        None => args
            .annotations
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let library = Library::open_existing(&args.store)?;
    let folder = retrieval_dir(args.model.as_deref())?;
    let models = IndexModels::load(
        &folder,
        None,
        &LoadOptions::default(),
        &CaptionSettings::default(),
    )
    .context("loading the retrieval model")?;
    let store_model = library.store().model().clone();
    if !model_identity(&models)
        .retrieval
        .same_model(&store_model.retrieval)
    {
        bail!(
            "{} was indexed with {}, not with {}: pass that model with --model",
            args.store.display(),
            store_model.retrieval,
            folder.display()
        );
    }
    // The server's settings, exactly as `quarry serve` builds them.
    let mut settings = SearchSettings::for_device(&candle_core::Device::Cpu);
    settings.fusion = SearchFusion::for_store(&folder, &store_model)?;
    if let Some(n) = args.rerank.or(settings.fusion.rerank) {
        if n > settings.max_rerank {
            bail!("--rerank {n} is above the limit of {}", settings.max_rerank);
        }
        settings.rerank_default = n;
    }
    let searcher = Searcher::new(
        &models.retriever,
        &models.retrieval.tokenizer,
        &models.retrieval.preprocess,
        settings,
    );
    let options = ServedEvalOptions {
        image_root,
        rerank_depths: args.depths.clone(),
        fit: args.fit.is_some(),
    };
    let mut last = 0;
    let report = evaluate_served(
        &searcher,
        &library,
        &annotations,
        &options,
        |done, total| {
            let pct = done * 100 / total.max(1);
            if pct >= last + 10 || done == total {
                last = pct;
                eprintln!("  {done}/{total} queries");
            }
        },
    )?;
    print_report(&args, &report);
    if let (Some(path), Some(fit)) = (&args.fit, &report.fit) {
        let mut file = SearchFusionFile::read(path)?.unwrap_or_default();
        let fitted_on = args.annotations.display().to_string();
        let mut fusion = fit.fusion.clone();
        fusion.fitted_on = fitted_on.clone();
        let mut calibration = fit.calibration.clone();
        calibration.fitted_on = fitted_on;
        if !args.calibration_only {
            file.set_fit(fusion);
        }
        file.itm_calibration = Some(calibration);
        file.write(path)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(args: &Args, r: &ServedReport) {
    println!(
        "# Search as served: {} ({} queries over {} images{})\n",
        args.store.display(),
        r.queries,
        r.images_matched,
        if r.images_missing > 0 {
            format!("; {} annotated images not in the store", r.images_missing)
        } else {
            String::new()
        }
    );
    println!(
        "fusion: β {} (BM25), w {} (ITM logit), calibration scale {} bias {}, caption source \
         {}, {}\n",
        r.fusion.bm25_weight,
        r.fusion.itm_logit_weight,
        r.fusion.calibration.scale,
        r.fusion.calibration.bias,
        r.fusion.caption_source,
        if r.fusion.fitted {
            "fitted"
        } else {
            "not fitted (safe defaults)"
        }
    );
    println!("| order | text→image R@1 | R@5 | R@10 |\n|---|---|---|---|");
    for row in &r.text_to_image {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            row.order, row.recall.r1, row.recall.r5, row.recall.r10
        );
    }
    match &r.image_to_text {
        Some(i2t) => println!(
            "\nimage→text (served path, {} images): R@1 {:.1}, R@5 {:.1}, R@10 {:.1}",
            i2t.queries, i2t.r1, i2t.r5, i2t.r10
        ),
        None => println!("\nimage→text: the store holds none of the annotation captions as texts"),
    }
    println!("\n| stage | p50 ms | p95 ms |\n|---|---|---|");
    for s in &r.latency_ms {
        println!("| {} | {:.1} | {:.1} |", s.stage, s.p50, s.p95);
    }
    if let Some(c) = &r.calibration {
        print_calibration("served ITM probability", c);
    }
    if let Some(fit) = &r.fit {
        println!(
            "\nfit ({}): re-ranking {} with β {} and w {} gives R@1 {:.1} (ITC alone {:.1}) on \
             these queries; calibration scale {:.3} bias {:.3}",
            fit.fusion.criterion,
            fit.fusion.rerank,
            fit.fusion.bm25_weight,
            fit.fusion.itm_logit_weight,
            fit.fusion.r1,
            fit.fusion.itc_r1,
            fit.calibration.calibration.scale,
            fit.calibration.calibration.bias
        );
        print_calibration("before calibration (fitted order)", &fit.before);
        print_calibration("after calibration (fitted order)", &fit.after);
    }
}

fn print_calibration(title: &str, c: &quarry::eval::served::CalibrationReport) {
    println!(
        "\n{title}: {} re-ranked pairs, {} true; expected calibration error {:.3}",
        c.pairs, c.matches, c.ece
    );
    println!("| predicted | pairs | mean predicted | true-match rate |\n|---|---|---|---|");
    for b in &c.curve {
        println!(
            "| {:.1}–{:.1} | {} | {:.3} | {:.3} |",
            b.from, b.to, b.pairs, b.mean_probability, b.match_rate
        );
    }
    println!("| min_match | precision | recall | hits kept per query |\n|---|---|---|---|");
    for q in &c.cutoffs {
        println!(
            "| {} | {:.3} | {:.3} | {:.2} |",
            q.min_match, q.precision, q.recall, q.kept_per_query
        );
    }
}
