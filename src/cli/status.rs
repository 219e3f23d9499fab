//! `quarry status`: what a store holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use quarry::library::Library;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store folder.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Print one JSON object: {"images", "vectors", "captions", "texts", "failed",
    /// "feature_cache_bytes", "caption_quality": {"captions", "distinct", "distinct_ratio",
    /// "most_common", "most_common_count", "uninformative"}}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let library = Library::open_existing(&args.store)?;
    let counts = library.counts()?;
    let quality = library.store().caption_quality()?;
    if args.json {
        let mut json = serde_json::to_value(counts)?;
        json["caption_quality"] = serde_json::to_value(&quality)?;
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let model = library.store().model();
    println!("store {}", args.store.display());
    println!("  retrieval model  {}", model.retrieval);
    if let Some(c) = &model.captioner {
        println!("  caption model    {c}");
    }
    println!("  images           {}", counts.images);
    println!("  vectors          {}", counts.vectors);
    println!("  captions         {}", counts.captions);
    if quality.captions > 0 {
        println!(
            "  distinct         {} of {} captions ({:.0} %)",
            quality.distinct,
            quality.captions,
            quality.distinct_ratio * 100.0
        );
    }
    if quality.uninformative {
        println!(
            "  note: most images share their caption (\"{}\" on {}): the captions cannot tell \
             images apart, so the search relies on the image embeddings",
            quality.most_common.as_deref().unwrap_or_default(),
            quality.most_common_count
        );
    }
    println!("  texts            {}", counts.texts);
    println!("  failed           {}", counts.failed);
    let per_image = counts
        .feature_cache_bytes
        .checked_div(counts.images)
        .unwrap_or(0);
    println!(
        "  feature cache    {} bytes ({} per image, {})",
        counts.feature_cache_bytes,
        per_image,
        if library.store().feature_cache_enabled() {
            "on"
        } else {
            "off"
        }
    );
    for failure in library.store().failures().take(20) {
        let failure = failure?;
        println!("  failed: {}: {}", failure.path.display(), failure.reason);
    }
    Ok(ExitCode::SUCCESS)
}
