//! `quarry synth`: captioned synthetic scenes for training, evaluation and the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use quarry::synth::{generate, SynthOptions, ANNOTATIONS_FILE};

/// Arguments of `synth`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder (new or empty): images/NNNNNN.png and annotations.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 224)]
    size: u32,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let options = SynthOptions {
        count: args.n,
        seed: args.seed,
        size: args.size,
    };
    let annotations = generate(&args.out, options)?;
    let captions: usize = annotations.iter().map(|a| a.caption.len()).sum();
    println!(
        "wrote {} images and {captions} captions to {} ({})",
        annotations.len(),
        args.out.display(),
        ANNOTATIONS_FILE
    );
    Ok(ExitCode::SUCCESS)
}
