//! Does a model folder's frozen image encoder tell the Q-Former where each patch is?
//!
//! The Q-Former reads only the encoder's output tokens, so it can learn "left of" or "in the
//! top right" only if those tokens still carry their patch's place. This fits a ridge
//! regression from each output patch token to its patch's (row, column) on three quarters of
//! a scene set and reports, on the other quarter, R² per coordinate and how often the rounded
//! prediction is the exact cell (chance: one over the number of patches). Issue #7 used it to
//! find why neither of the demo model's heads knows places and relations.
//!
//! ```text
//! cargo run --release --example vit_position_probe -- DATA_DIR MODEL_DIR [MODEL_DIR …]
//! ```
//! DATA_DIR holds `annotations.json` and the images (`quarry synth --out DATA_DIR`). Prints a
//! JSON line per model.

use std::path::PathBuf;

use anyhow::{bail, ensure, Result};
use quarry::eval::Annotations;
use quarry::{LoadOptions, RetrievalFolder};

#[path = "support/scene_tokens.rs"]
mod support;
use support::scene_tokens;

/// Ridge strength (the tokens are layer-normed, so features are O(1)).
const RIDGE: f64 = 1e-2;

/// Solves the symmetric positive-definite system `a · x = b` (n × n, n × m) by Cholesky.
fn solve_spd(mut a: Vec<f64>, mut b: Vec<f64>, n: usize, m: usize) -> Vec<f64> {
    for j in 0..n {
        let d = (a[j * n + j] - (0..j).map(|k| a[j * n + k].powi(2)).sum::<f64>()).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| a[i * n + k] * a[j * n + k]).sum();
            a[i * n + j] = (a[i * n + j] - s) / d;
        }
    }
    for c in 0..m {
        for i in 0..n {
            let s: f64 = (0..i).map(|k| a[i * n + k] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / a[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| a[k * n + i] * b[k * m + c]).sum();
            b[i * m + c] = (b[i * m + c] - s) / a[i * n + i];
        }
    }
    b
}

/// One patch token (with a constant 1 appended) and its (row, column).
struct Sample {
    features: Vec<f64>,
    place: [f64; 2],
}

fn samples(data: &std::path::Path, ann: &Annotations, model: &str) -> Result<Vec<Vec<Sample>>> {
    let folder = RetrievalFolder::open(model)?;
    let retriever = folder.load(&LoadOptions::default())?;
    scene_tokens(data, ann, &folder, &retriever)?
        .iter()
        .map(|tokens| {
            let tokens: Vec<Vec<f32>> = tokens.squeeze(0)?.to_vec2()?;
            let patches = tokens.len() - 1;
            let side = (patches as f64).sqrt() as usize;
            ensure!(
                side * side == patches,
                "{patches} patch tokens do not make a square grid"
            );
            Ok(tokens[1..]
                .iter()
                .enumerate()
                .map(|(p, token)| Sample {
                    features: token.iter().map(|&x| f64::from(x)).chain([1.0]).collect(),
                    place: [(p / side) as f64, (p % side) as f64],
                })
                .collect())
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (data, models) = match args.as_slice() {
        [data, models @ ..] if !models.is_empty() => (PathBuf::from(data), models),
        _ => bail!("usage: vit_position_probe DATA_DIR MODEL_DIR [MODEL_DIR …]"),
    };
    let ann = Annotations::load(&data.join("annotations.json"), None)?;
    ensure!(ann.images.len() >= 8, "the probe needs at least 8 scenes");
    for model in models {
        let per_image = samples(&data, &ann, model)?;
        let (fit, held_out) = per_image.split_at(per_image.len() * 3 / 4);
        let n = fit[0][0].features.len();
        let (mut xtx, mut xty) = (vec![0.0; n * n], vec![0.0; n * 2]);
        for s in fit.iter().flatten() {
            for i in 0..n {
                for j in 0..n {
                    xtx[i * n + j] += s.features[i] * s.features[j];
                }
                xty[i * 2] += s.features[i] * s.place[0];
                xty[i * 2 + 1] += s.features[i] * s.place[1];
            }
        }
        for i in 0..n - 1 {
            xtx[i * n + i] += RIDGE * fit.len() as f64;
        }
        let w = solve_spd(xtx, xty, n, 2);
        let held: Vec<&Sample> = held_out.iter().flatten().collect();
        let predict =
            |s: &Sample, c: usize| (0..n).map(|i| s.features[i] * w[i * 2 + c]).sum::<f64>();
        let side = (held_out[0].len() as f64).sqrt();
        let mut r2 = [0.0; 2];
        for (c, r) in r2.iter_mut().enumerate() {
            let mean = held.iter().map(|s| s.place[c]).sum::<f64>() / held.len() as f64;
            let residual: f64 = held
                .iter()
                .map(|s| (predict(s, c) - s.place[c]).powi(2))
                .sum();
            let total: f64 = held.iter().map(|s| (s.place[c] - mean).powi(2)).sum();
            *r = 1.0 - residual / total;
        }
        let exact = held
            .iter()
            .filter(|s| (0..2).all(|c| predict(s, c).round().clamp(0.0, side - 1.0) == s.place[c]))
            .count();
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "model": model,
                "held_out_patches": held.len(),
                "r2_row": round(r2[0]),
                "r2_column": round(r2[1]),
                "exact_cell_percent": round(100.0 * exact as f64 / held.len() as f64),
                "chance_percent": round(100.0 / held_out[0].len() as f64),
            })
        );
    }
    Ok(())
}
