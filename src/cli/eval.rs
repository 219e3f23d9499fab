//! `quarry eval`: Recall@K on a Karpathy test split with LAVIS's protocol (ITC, then ITM on
//! the top `k_test`, weighed as the model folder says: `quarry::itm_fusion`), printed as a
//! markdown table and, with `--json`, one JSON object as the last line (keys as LAVIS names
//! them; a contract used outside the repository).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use quarry::eval::{
    default_cache_root, Annotations, CachePrecision, EvalProgress, EvalReport, EvalSettings,
    Evaluator, RecallMetrics, Stage,
};
use quarry::itm_fusion::{ItmFusion, FUSION_FILE};
use quarry::{LoadOptions, RetrievalFolder};

use super::model_args::ModelArgs;

/// `--cache-precision` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FeaturePrecision {
    /// Half precision (default): half the disk; what LAVIS's fp16 ViT hands on.
    F16,
    /// Full precision.
    F32,
}

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Annotation file: LAVIS's coco_karpathy_test.json / flickr30k_test.json layout, or
    /// Karpathy's dataset_coco.json / dataset_flickr30k.json with --split.
    #[arg(long, value_name = "FILE")]
    annotations: PathBuf,
    /// Folder the annotation's image paths are relative to (e.g. the COCO 2014 folder that
    /// holds val2014/).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Split to evaluate, for Karpathy's original files (the paper's numbers: test).
    #[arg(long, value_name = "SPLIT")]
    split: Option<String>,
    /// Candidates per image and per text re-scored by ITM (LAVIS: 128).
    #[arg(long, default_value_t = 128)]
    k_test: usize,
    /// Report ITC only (skip the ITM re-scoring).
    #[arg(long)]
    itc_only: bool,
    /// Images per ViT batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Texts per ITM batch.
    #[arg(long, default_value_t = 32)]
    itm_batch: usize,
    /// Embedding cache folder [default: $QUARRY_CACHE_DIR/eval, $XDG_CACHE_HOME/quarry/eval
    /// or ~/.cache/quarry/eval].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Precision the ViT features are cached and used in.
    #[arg(long, value_enum, default_value = "f16")]
    cache_precision: FeaturePrecision,
    /// Weight of the ITM logit in the re-ranking score `w · ITM logit + ITC` [default: the
    /// model folder's itm_fusion.json, else 1 as in LAVIS].
    #[arg(long, value_name = "W", conflicts_with = "itc_only")]
    itm_weight: Option<f32>,
    /// Also try the weights 0 … 5 and write the one with the best mean recall to FILE (an
    /// itm_fusion.json to put in the model folder). Fit on held-out data, never on the test
    /// split that will be reported.
    #[arg(long, value_name = "FILE", conflicts_with = "itc_only")]
    fit_itm_weight: Option<PathBuf>,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// indicatif bars on stderr (hidden when stderr is not a terminal).
struct Bars {
    bar: Option<ProgressBar>,
}

impl EvalProgress for Bars {
    fn stage(&mut self, stage: Stage, total: u64) {
        let label = match stage {
            Stage::Hashing => "hashing images",
            Stage::Texts => "text vectors",
            Stage::Images => "ViT (uncached images)",
            Stage::Itm => "ITM pairs",
        };
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label);
        self.bar = Some(bar);
    }

    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

fn row(name: &str, m: &RecallMetrics, seconds: f64) -> String {
    format!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {seconds:.1} s |",
        m.txt_r1, m.txt_r5, m.txt_r10, m.img_r1, m.img_r5, m.img_r10, m.txt_r_mean, m.img_r_mean,
        m.r_mean
    )
}

/// The markdown summary of a report.
fn markdown(r: &EvalReport) -> String {
    let mut out = format!(
        "checkpoint {} ({}), {} px, k_test {}, precision: ViT {} / Q-Former {} / features {}\n\
         {} images, {} captions; cache {} ({} hits, {} computed)\n\n\
         | scores | TR@1 | TR@5 | TR@10 | IR@1 | IR@5 | IR@10 | TR mean | IR mean | R mean | time |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        r.checkpoint.display(),
        r.checkpoint_fingerprint,
        r.image_size,
        r.k_test,
        r.precision.vision,
        r.precision.qformer,
        r.precision.features,
        r.images,
        r.texts,
        r.cache.dir.display(),
        r.cache.hits,
        r.cache.misses,
    );
    out.push_str(&row("ITC", &r.itc, r.seconds.itc));
    out.push('\n');
    if let (Some(m), Some(t)) = (&r.itm, r.seconds.itc_itm) {
        let weight = r.itm_fusion.as_ref().map_or(1.0, |f| f.itm_logit_weight);
        let name = if weight == 1.0 {
            "ITC+ITM".to_string()
        } else {
            format!("ITC+{weight}·ITM")
        };
        out.push_str(&row(&name, m, t));
        out.push('\n');
        if let Some(lavis) = r.itm_fusion.as_ref().and_then(|f| f.lavis.as_ref()) {
            out.push_str(&row("ITC+ITM (LAVIS)", lavis, t));
            out.push('\n');
        }
        if let Some(fit) = r.itm_fusion.as_ref().and_then(|f| f.fit.as_ref()) {
            out.push_str("\n| ITM weight | TR@1 | IR@1 | R mean |\n|---|---|---|---|\n");
            for p in &fit.grid {
                out.push_str(&format!(
                    "| {} | {:.2} | {:.2} | {:.2} |\n",
                    p.itm_logit_weight, p.txt_r1, p.img_r1, p.r_mean
                ));
            }
            out.push_str(&format!(
                "best: {} (highest R mean; ties go to the weight nearest 1)\n",
                fit.best.itm_logit_weight
            ));
        }
        if let (Some(p), Some(l)) = (r.itm_pairs, r.lavis_itm_pairs) {
            out.push_str(&format!(
                "\nITM pairs scored: {p} (LAVIS scores {l}: pairs chosen both ways twice)\n"
            ));
        }
    }
    out
}

pub fn run(args: Args) -> Result<ExitCode> {
    let annotations = Annotations::load(&args.annotations, args.split.as_deref())?;
    // Fail on a wrong image folder before the (slow) model load.
    annotations.check_images(&args.images)?;
    let device = quarry::device::parse_device(&args.model.device)?;
    let dir = args.model.dir()?;
    let folder = RetrievalFolder::open(&dir)?;
    let options = LoadOptions {
        device,
        vision_dtype: args.model.vision_dtype.into(),
    };
    let evaluator =
        Evaluator::load(folder, &options).with_context(|| format!("loading {}", dir.display()))?;
    let settings = EvalSettings {
        k_test: args.k_test,
        itc_only: args.itc_only,
        image_batch: args.batch,
        itm_batch: args.itm_batch,
        cache_root: args.cache_dir.clone().unwrap_or_else(default_cache_root),
        cache_precision: match args.cache_precision {
            FeaturePrecision::F16 => CachePrecision::F16,
            FeaturePrecision::F32 => CachePrecision::F32,
        },
        fusion: args.itm_weight.map(ItmFusion::new).transpose()?,
        fit_fusion: args.fit_itm_weight.is_some(),
        ..EvalSettings::default()
    };
    let mut bars = Bars { bar: None };
    let evaluation = evaluator.run(&annotations, &args.images, &settings, &mut bars)?;
    let report = &evaluation.report;
    println!("{}", markdown(report));
    if let (Some(path), Some(fit)) = (
        &args.fit_itm_weight,
        report.itm_fusion.as_ref().and_then(|f| f.fit.as_ref()),
    ) {
        fit.file(args.annotations.display().to_string(), args.k_test)
            .write(path)?;
        eprintln!(
            "wrote {} (ITM weight {}); copy it into the model folder as {FUSION_FILE}",
            path.display(),
            fit.best.itm_logit_weight
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(ExitCode::SUCCESS)
}
