//! `quarry embed-text`: texts → ITC text vectors.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::model_args::ModelArgs;

/// Arguments of `embed-text`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// One JSON object per line: {"text": ..., "embed": [f32; D]}.
    #[arg(long)]
    json: bool,
    /// Texts to embed (each truncated to 35 tokens, as LAVIS evaluates).
    #[arg(required = true, value_name = "TEXT")]
    texts: Vec<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let loaded = args.model.load()?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let batch = loaded
        .folder
        .tokenizer
        .batch(&texts, None, &loaded.device)?;
    let embeds = loaded.model.embed_texts(&batch)?.to_vec2::<f32>()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (text, embed) in texts.iter().zip(embeds) {
        if args.json {
            writeln!(out, "{}", serde_json::json!({"text": text, "embed": embed}))?;
        } else {
            writeln!(
                out,
                "{text:?}: {} dims; starts [{:.4}, {:.4}, {:.4}, ...]",
                embed.len(),
                embed[0],
                embed.get(1).copied().unwrap_or_default(),
                embed.get(2).copied().unwrap_or_default()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
