//! `quarry eval-captions`: caption accuracy on synthetic scenes (a `quarry synth` folder).
//! Captions every image and checks each caption against the scene's facts
//! ([`quarry::synth::caption_check`]); prints a markdown table and, with `--json`, one JSON
//! object as the last line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use quarry::synth::caption_check::{
    judge, load_annotations, CaptionAccuracy, CaptionTally, CaptionVerdict,
};
use quarry::{CaptionFolder, CaptionPrecision, GenerationSettings};

use super::model_args::{caption_dir, pixel_batch, Precision};

/// Arguments of `eval-captions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `quarry synth --out` folder (annotations.json with scene facts, images/).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Captioning model, a folder or hub name [default: the built-in demo captioner].
    #[arg(long, value_name = "DIR")]
    caption_model: Option<PathBuf>,
    /// Images per model batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Caption only the first N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Beams (1 = greedy, as `quarry index` captions).
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    /// Most new tokens.
    #[arg(long, default_value_t = 30)]
    max_new_tokens: usize,
    /// Fewest new tokens before the caption may end (1: the scenes' shortest references,
    /// "two red circles", are 3 tokens; a larger minimum would force words after them).
    #[arg(long, default_value_t = 1)]
    min_new_tokens: usize,
    /// Print this many captions that match no reference, with a reference, under the table.
    #[arg(long, default_value_t = 5, value_name = "N")]
    show_misses: usize,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// Precision of the image encoder.
    #[arg(long, value_enum, default_value = "f32")]
    vision_dtype: Precision,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn percent(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn row(name: &str, a: &CaptionAccuracy) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        a.images,
        percent(a.color_right),
        percent(a.shape_right),
        percent(a.object_right),
        percent(a.exact_match)
    )
}

pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let mut annotations = load_annotations(&args.data)?;
    if let Some(limit) = args.limit {
        annotations.truncate(limit);
    }
    anyhow::ensure!(!annotations.is_empty(), "no images to caption");
    // A wrong folder fails before the (slow) model load.
    for a in &annotations {
        let path = args.data.join(&a.image);
        anyhow::ensure!(
            path.is_file(),
            "{} is listed in {} but missing",
            path.display(),
            args.data.join(quarry::synth::ANNOTATIONS_FILE).display()
        );
    }
    let device = quarry::device::parse_device(&args.device)?;
    let dir = caption_dir(args.caption_model.as_deref(), "--caption-model")?;
    let folder = CaptionFolder::open(&dir)?;
    let settings = GenerationSettings {
        num_beams: args.num_beams,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens.min(args.max_new_tokens),
        ..GenerationSettings::blip2_caption(folder.opt.eos_token_id, folder.opt.pad_token_id)
    };
    settings.validate().map_err(anyhow::Error::msg)?;
    let precision = CaptionPrecision {
        vision: args.vision_dtype.into(),
        ..CaptionPrecision::default()
    };
    let model = folder
        .load(&device, precision)
        .with_context(|| format!("loading {}", dir.display()))?;
    let prompt = folder.encode_prompt("")?;

    let bar = ProgressBar::new(annotations.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("captioning [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut tally = CaptionTally::default();
    let mut misses = Vec::new();
    for chunk in annotations.chunks(args.batch.max(1)) {
        let paths: Vec<PathBuf> = chunk.iter().map(|a| args.data.join(&a.image)).collect();
        let (good, pixels, errors) = pixel_batch(&paths, &folder.preprocess, &device)?;
        if let Some(e) = errors.into_iter().next() {
            return Err(quarry::Error::from(e)).context("a scene image does not decode");
        }
        let pixels = pixels.context("empty batch")?;
        let generated = model.generate(&pixels, &vec![prompt.clone(); good.len()], &settings)?;
        for (a, g) in chunk.iter().zip(generated) {
            let caption = folder.decode(&g.token_ids)?;
            let verdict: CaptionVerdict = judge(&caption, &a.scene, &a.caption);
            tally.add(a.scene.kind, verdict);
            if !verdict.exact && misses.len() < args.show_misses {
                misses.push((a.image.clone(), caption, a.caption[0].clone()));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let report = tally.report();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "caption model {} ({} beam{}, {}–{} new tokens), {} scenes of {}, {seconds:.1} s\n",
        dir.display(),
        settings.num_beams,
        if settings.num_beams == 1 { "" } else { "s" },
        settings.min_new_tokens,
        settings.max_new_tokens,
        report.overall.images,
        args.data.display()
    );
    println!("| scenes | images | colour right | shape right | object right | exact match |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("all", &report.overall));
    for (kind, a) in &report.by_kind {
        println!("{}", row(kind, a));
    }
    if !misses.is_empty() {
        println!("\ncaptions that match no reference:");
        for (image, caption, reference) in &misses {
            println!("  {image}: {caption:?} (a reference: {reference:?})");
        }
    }
    if args.json {
        let mut line = serde_json::to_value(&report)?;
        line["caption_model"] = dir.display().to_string().into();
        line["data"] = args.data.display().to_string().into();
        line["num_beams"] = settings.num_beams.into();
        line["min_new_tokens"] = settings.min_new_tokens.into();
        line["max_new_tokens"] = settings.max_new_tokens.into();
        line["seconds"] = seconds.into();
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
