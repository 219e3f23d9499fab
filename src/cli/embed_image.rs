//! `quarry embed-image`: images → ITC query vectors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::model_args::{pixel_batch, ModelArgs};

/// Arguments of `embed-image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// One JSON object per line: {"path": ..., "query_embeds": [[f32; D]; Q]}.
    #[arg(long)]
    json: bool,
    /// Images per model batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Image files.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let loaded = args.model.load()?;
    let spec = &loaded.folder.preprocess;
    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in args.images.chunks(args.batch.max(1)) {
        // A file that does not decode is reported by name; the others still run.
        let (chunk, pixels, errors) = pixel_batch(chunk, spec, &loaded.device)?;
        for e in &errors {
            eprintln!("error: {e}");
        }
        failed += errors.len();
        let Some(pixels) = pixels else { continue };
        let embeds = loaded.model.embed_images(&pixels)?.to_vec3::<f32>()?;
        for (path, vectors) in chunk.iter().zip(embeds) {
            if args.json {
                let line = serde_json::json!({"path": path.display().to_string(), "query_embeds": vectors});
                writeln!(out, "{line}")?;
            } else {
                let first = &vectors[0];
                writeln!(
                    out,
                    "{}: {} query vectors of {} dims; first starts [{:.4}, {:.4}, {:.4}, ...]",
                    path.display(),
                    vectors.len(),
                    first.len(),
                    first[0],
                    first.get(1).copied().unwrap_or_default(),
                    first.get(2).copied().unwrap_or_default()
                )?;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
