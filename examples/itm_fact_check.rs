//! How often a retrieval model scores each caption of a test set above the same caption with
//! one fact changed (`src/train/swapped_captions.rs`), by the kind of fact, with ITM (the
//! class-1 logit) and with ITC (the cosine, max over queries): whether a model checks colours,
//! shapes, sizes, counts (also one object made three or four), places and which colour goes
//! with which object. Issue #7 used it to see what the demo model's ITM head misses.
//!
//! ```text
//! cargo run --release --example itm_fact_check -- DATA_DIR MODEL_DIR [MODEL_DIR …]
//! ```
//! DATA_DIR holds `annotations.json` and the images (`quarry synth --out DATA_DIR`). Prints a
//! JSON line per model and kind: `{"model", "fact", "pairs", "itm_percent", "itc_percent"}`.
//! The swaps are drawn from a fixed seed, so every model is asked the same questions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use quarry::eval::Annotations;
use quarry::model::itc_scores;
use quarry::synth::rng::SplitMix64;
use quarry::train::swapped_captions::{
    multiply_one_object, swap_one_fact, FalseFact, SwappedCaption,
};
use quarry::{LoadOptions, RetrievalFolder};

#[path = "support/scene_tokens.rs"]
mod support;
use support::image_tokens;

#[derive(Default)]
struct Tally {
    pairs: u32,
    itm_right: u32,
    itc_right: u32,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (data, models) = match args.as_slice() {
        [data, models @ ..] if !models.is_empty() => (data, models),
        _ => bail!("usage: itm_fact_check DATA_DIR MODEL_DIR [MODEL_DIR …]"),
    };
    let data = PathBuf::from(data);
    let ann = Annotations::load(&data.join("annotations.json"), None)?;
    for model in models {
        let folder = RetrievalFolder::open(model).with_context(|| model.clone())?;
        let retriever = folder.load(&LoadOptions::default())?;
        let mut rng = SplitMix64::for_scene(7, 7);
        // Its own generator, so that the other changes are drawn as before it was added.
        let mut multiply_rng = SplitMix64::for_scene(7, 8);
        let mut tallies: BTreeMap<FalseFact, Tally> = BTreeMap::new();
        for (image, path) in ann.images.iter().enumerate() {
            let captions: Vec<&String> =
                ann.img2txt[image].iter().map(|&t| &ann.texts[t]).collect();
            // (true caption, swapped one), unless the swap gives another of its captions.
            let pairs: Vec<(&String, SwappedCaption)> = captions
                .iter()
                .filter_map(|&c| swap_one_fact(c, &mut rng).map(|s| (c, s)))
                .chain(
                    captions
                        .iter()
                        .filter_map(|&c| multiply_one_object(c, &mut multiply_rng).map(|s| (c, s))),
                )
                .filter(|(_, s)| !captions.contains(&&s.text))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let tokens = image_tokens(&data.join(path), &folder, &retriever)?;
            let texts: Vec<&str> = pairs
                .iter()
                .flat_map(|(c, s)| [c.as_str(), s.text.as_str()])
                .collect();
            let batch = folder.tokenizer.batch(&texts, None, &Device::Cpu)?;
            let itm = retriever
                .itm_one_image(&retriever.image_memory(&tokens)?, &batch)?
                .logit;
            let itc = itc_scores(
                &retriever.image_embeddings(&tokens)?,
                &retriever.embed_texts(&batch)?,
            )?
            .squeeze(0)?
            .to_vec1::<f32>()?;
            for (k, (_, swapped)) in pairs.iter().enumerate() {
                let t = tallies.entry(swapped.fact).or_default();
                t.pairs += 1;
                t.itm_right += u32::from(itm[2 * k] > itm[2 * k + 1]);
                t.itc_right += u32::from(itc[2 * k] > itc[2 * k + 1]);
            }
        }
        for (fact, t) in tallies {
            let percent = |n: u32| 100.0 * f64::from(n) / f64::from(t.pairs);
            println!(
                "{}",
                serde_json::json!({
                    "model": model,
                    "fact": fact.name(),
                    "pairs": t.pairs,
                    "itm_percent": (percent(t.itm_right) * 10.0).round() / 10.0,
                    "itc_percent": (percent(t.itc_right) * 10.0).round() / 10.0,
                })
            );
        }
    }
    Ok(())
}
