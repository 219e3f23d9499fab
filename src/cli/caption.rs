//! `quarry caption`: images → captions (or answers to a prompt) with a BLIP-2 OPT checkpoint.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use quarry::{CaptionFolder, CaptionPrecision, GenerationSettings};

use super::model_args::{caption_dir, pixel_batch, Precision};

/// Arguments of `caption`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Captioning model: a folder, or a hub name (e.g. Salesforce/blip2-opt-2.7b[@revision])
    /// found in the Hugging Face cache or downloaded [default: the built-in demo captioner].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// One JSON object per line: {"path": ..., "caption": ..., "token_ids": [...]}.
    #[arg(long)]
    json: bool,
    /// Text the caption continues, e.g. "a photo of" or "Question: what is this? Answer:".
    #[arg(long, default_value = "")]
    prompt: String,
    /// Beams of beam search (1 = greedy).
    #[arg(long, default_value_t = 5)]
    num_beams: usize,
    /// Most new tokens.
    #[arg(long, default_value_t = 30)]
    max_new_tokens: usize,
    /// Fewest new tokens before the caption may end.
    #[arg(long, default_value_t = 8)]
    min_new_tokens: usize,
    /// Penalty for tokens already in the sequence (1.0 = none, as in the BLIP-2 paper).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Exponent of beam search's length normalisation.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    /// Forbid repeating n-grams of this size (0 = off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Images per model batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// Precision of the image encoder.
    #[arg(long, value_enum, default_value = "f32")]
    vision_dtype: Precision,
    /// Precision of the language model (softmax and logits stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    lm_dtype: Precision,
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let device = quarry::device::parse_device(&args.device)?;
    let dir = caption_dir(args.model.as_deref(), "--model")?;
    let folder = CaptionFolder::open(&dir)?;
    let prompt = folder.encode_prompt(&args.prompt)?;
    let settings = GenerationSettings {
        num_beams: args.num_beams,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        length_penalty: args.length_penalty,
        repetition_penalty: args.repetition_penalty,
        no_repeat_ngram_size: args.no_repeat_ngram_size,
        eos_token_id: folder.opt.eos_token_id,
        pad_token_id: folder.opt.pad_token_id,
    };
    settings.validate().map_err(anyhow::Error::msg)?;
    let precision = CaptionPrecision {
        vision: args.vision_dtype.into(),
        language: args.lm_dtype.into(),
    };
    let model = folder
        .load(&device, precision)
        .with_context(|| format!("loading {}", dir.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0;
    for chunk in args.images.chunks(args.batch.max(1)) {
        let (paths, pixels, errors) = pixel_batch(chunk, &folder.preprocess, &device)?;
        for e in &errors {
            eprintln!("error: {e}");
        }
        failed += errors.len();
        let Some(pixels) = pixels else { continue };
        let prompts = vec![prompt.clone(); paths.len()];
        let generated = model.generate(&pixels, &prompts, &settings)?;
        for (path, g) in paths.iter().zip(generated) {
            let caption = folder.decode(&g.token_ids)?;
            if args.json {
                let line = serde_json::json!({
                    "path": path.display().to_string(),
                    "caption": caption,
                    "token_ids": g.token_ids,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}: {caption}", path.display())?;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
