//! Where ITM re-ranking of ITC's top `k` images gains and loses against ITC alone (text →
//! image, LAVIS's score `itm logit + itc`), and how sure ITM is when it decides: issue #7 asks
//! for re-ranked R@1 above ITC's, and this says whether the demo's ITM fails by being
//! over-confident (several candidates near p = 1, ordered by noise) or by being weak (the right
//! image below p = 0.5).
//!
//! ```text
//! cargo run --release --example rerank_diagnosis -- DATA_DIR MODEL_DIR [K]
//! ```
//! DATA_DIR holds `annotations.json` and the images (`quarry synth --out DATA_DIR`); K is
//! `k_test` (16). Prints one JSON object: R@1 of ITC, of LAVIS's fused score and of ranking by
//! ITM probability (ties by ITC, the web search's order); how many texts each of ITC and the
//! fused score get right that the other gets wrong; quantiles of ITM's probability for the true
//! image and for the image that beat it where the fused score loses; and ITM's probability
//! against how often a candidate is true (its image is the text's own, or has the same caption).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use quarry::eval::Annotations;
use quarry::model::itc_scores;
use quarry::{LoadOptions, RetrievalFolder};

#[path = "support/scene_tokens.rs"]
mod support;
use support::scene_tokens;

/// Upper edges of the probability bins of the calibration table.
const BIN_EDGES: [f64; 5] = [0.1, 0.5, 0.9, 0.99, 1.0];

struct Candidate {
    image: usize,
    itc: f32,
    logit: f32,
    probability: f32,
}

fn quantiles(mut values: Vec<f32>) -> Vec<f32> {
    if values.is_empty() {
        return Vec::new();
    }
    values.sort_by(f32::total_cmp);
    [0.1, 0.25, 0.5, 0.75, 0.9]
        .iter()
        .map(|q| values[((q * values.len() as f64) as usize).min(values.len() - 1)])
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (data, model, k) = match args.as_slice() {
        [data, model] => (PathBuf::from(data), model, 16),
        [data, model, k] => (PathBuf::from(data), model, k.parse()?),
        _ => bail!("usage: rerank_diagnosis DATA_DIR MODEL_DIR [K]"),
    };
    let ann = Annotations::load(&data.join("annotations.json"), None)?;
    let folder = RetrievalFolder::open(model)?;
    let retriever = folder.load(&LoadOptions::default())?;
    let texts: Vec<&str> = ann.texts.iter().map(String::as_str).collect();
    let text_embeds =
        retriever.embed_texts(&folder.tokenizer.batch(&texts, None, &Device::Cpu)?)?;

    // ITC of every image with every text, keeping each image's ViT output for ITM.
    let image_tokens = scene_tokens(&data, &ann, &folder, &retriever)?;
    let itc: Vec<Vec<f32>> = image_tokens
        .iter()
        .map(|tokens| {
            Ok(
                itc_scores(&retriever.image_embeddings(tokens)?, &text_embeds)?
                    .squeeze(0)?
                    .to_vec1()?,
            )
        })
        .collect::<Result<_>>()?;

    // Each text's top-k images by ITC, then ITM of each needed pair, one image at a time.
    let top_k: Vec<Vec<usize>> = (0..texts.len())
        .map(|t| {
            let mut images: Vec<usize> = (0..ann.images.len()).collect();
            images.sort_by(|&a, &b| itc[b][t].total_cmp(&itc[a][t]));
            images.truncate(k);
            images
        })
        .collect();
    let mut texts_of_image: Vec<Vec<usize>> = vec![Vec::new(); ann.images.len()];
    for (t, images) in top_k.iter().enumerate() {
        for &i in images {
            texts_of_image[i].push(t);
        }
    }
    let mut itm: HashMap<(usize, usize), (f32, f32)> = HashMap::new();
    for (i, ts) in texts_of_image
        .iter()
        .enumerate()
        .filter(|(_, ts)| !ts.is_empty())
    {
        let batch: Vec<&str> = ts.iter().map(|&t| texts[t]).collect();
        let batch = folder.tokenizer.batch(&batch, None, &Device::Cpu)?;
        let scores = retriever.itm_one_image(&retriever.image_memory(&image_tokens[i])?, &batch)?;
        for (j, &t) in ts.iter().enumerate() {
            itm.insert((i, t), (scores.logit[j], scores.probability[j]));
        }
    }

    let true_of = |i: usize, t: usize| ann.img2txt[i].iter().any(|&u| ann.texts[u] == ann.texts[t]);
    let (mut itc_right, mut fused_right, mut probability_right) = (0u32, 0u32, 0u32);
    let (mut only_itc, mut only_fused) = (0u32, 0u32);
    let (mut lost_truth_p, mut lost_winner_p) = (Vec::new(), Vec::new());
    let mut bins = [(0u32, 0u32); BIN_EDGES.len()];
    for (t, images) in top_k.iter().enumerate() {
        let truth = ann.txt2img[t];
        let candidates: Vec<Candidate> = images
            .iter()
            .map(|&i| Candidate {
                image: i,
                itc: itc[i][t],
                logit: itm[&(i, t)].0,
                probability: itm[&(i, t)].1,
            })
            .collect();
        let by_fused = candidates
            .iter()
            .max_by(|a, b| (a.logit + a.itc).total_cmp(&(b.logit + b.itc)))
            .unwrap();
        let by_probability = candidates
            .iter()
            .max_by(|a, b| {
                a.probability
                    .total_cmp(&b.probability)
                    .then(a.itc.total_cmp(&b.itc))
            })
            .unwrap();
        let itc_hit = candidates[0].image == truth;
        let fused_hit = by_fused.image == truth;
        itc_right += u32::from(itc_hit);
        fused_right += u32::from(fused_hit);
        probability_right += u32::from(by_probability.image == truth);
        only_itc += u32::from(itc_hit && !fused_hit);
        only_fused += u32::from(fused_hit && !itc_hit);
        if itc_hit && !fused_hit {
            lost_truth_p.push(itm[&(truth, t)].1);
            lost_winner_p.push(by_fused.probability);
        }
        for c in &candidates {
            let bin = BIN_EDGES
                .iter()
                .position(|&e| f64::from(c.probability) < e)
                .unwrap_or(BIN_EDGES.len() - 1);
            bins[bin].0 += 1;
            bins[bin].1 += u32::from(true_of(c.image, t));
        }
    }
    let percent = |n: u32, of: u32| (1000.0 * f64::from(n) / f64::from(of.max(1))).round() / 10.0;
    let n = texts.len() as u32;
    let calibration: Vec<_> = bins
        .iter()
        .zip(BIN_EDGES)
        .map(|(&(pairs, true_pairs), edge)| {
            serde_json::json!({"p_below": edge, "pairs": pairs, "true_percent": percent(true_pairs, pairs)})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "model": model,
            "k": k,
            "ir1_itc": percent(itc_right, n),
            "ir1_fused": percent(fused_right, n),
            "ir1_by_probability": percent(probability_right, n),
            "right_only_with_itc": only_itc,
            "right_only_fused": only_fused,
            "lost_truth_p_quantiles": quantiles(lost_truth_p),
            "lost_winner_p_quantiles": quantiles(lost_winner_p),
            "calibration": calibration,
        })
    );
    Ok(())
}
