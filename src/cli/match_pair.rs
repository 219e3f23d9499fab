//! `quarry match`: one image against one text, ITC and ITM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use quarry::model::itc_scores;

use super::model_args::{pixel_batch, ModelArgs};

/// Arguments of `match`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Print {"itc": f32, "itm": f32, "itm_logit": f32}.
    #[arg(long)]
    json: bool,
    /// The image.
    #[arg(long, value_name = "IMAGE")]
    image: PathBuf,
    /// The text.
    #[arg(long, value_name = "TEXT")]
    text: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let loaded = args.model.load()?;
    let (_, pixels, errors) = pixel_batch(
        std::slice::from_ref(&args.image),
        &loaded.folder.preprocess,
        &loaded.device,
    )?;
    let Some(pixels) = pixels else {
        return Err(errors
            .into_iter()
            .next()
            .map(quarry::Error::from)
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no image")));
    };
    let model = &loaded.model;
    let tokens = model.image_tokens(&pixels)?;
    let text = loaded
        .folder
        .tokenizer
        .batch(&[args.text.as_str()], None, &loaded.device)?;
    let itc = itc_scores(
        &model.image_embeddings(&tokens)?,
        &model.embed_texts(&text)?,
    )?
    .flatten_all()?
    .to_vec1::<f32>()?[0];
    let itm = model.itm_pairs(&tokens, &text)?;
    let (prob, logit) = (itm.probability[0], itm.logit[0]);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"itc": itc, "itm": prob, "itm_logit": logit})
        );
    } else {
        println!(
            "ITC cosine {itc:.4}; ITM match probability {:.1} % (class-1 logit {logit:.4})",
            prob * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
