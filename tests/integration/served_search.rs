//! `quarry eval-search` on small synthetic stores indexed as users index them (the built-in
//! demo models, fixed seeds): the served order is the library's order, the report holds every
//! row, captions of known quality are used as fitted, and a fit writes a readable file.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Scenes per store: a few seconds to index, ~4 captions each.
const SCENES: usize = 40;

fn quarry(cache: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .env("QUARRY_CACHE_DIR", cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "quarry {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// `quarry eval-search` over `store` and `annotations` with `extra` arguments; its stdout.
fn eval_search(cache: &Path, store: &Path, annotations: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "eval-search",
        "--store",
        store.to_str().unwrap(),
        "--annotations",
        annotations.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    quarry(cache, &args).0
}

fn last_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// The recall row whose order starts with `prefix`.
fn row<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["text_to_image"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["order"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix} in {report}"))
}

fn r1(report: &Value, prefix: &str) -> f64 {
    row(report, prefix)["recall"]["r1"].as_f64().unwrap()
}

#[test]
fn eval_search_measures_the_served_path_and_fits_a_fusion() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let scenes = tmp.path().join("scenes");
    quarry::synth::generate(
        &scenes,
        quarry::synth::SynthOptions {
            count: SCENES,
            seed: 11,
            size: 224,
        },
    )
    .unwrap();
    let images = scenes.join("images");
    let annotations = scenes.join("annotations.json");
    let queries: usize =
        serde_json::from_slice::<Vec<Value>>(&std::fs::read(&annotations).unwrap())
            .unwrap()
            .iter()
            .map(|e| e["caption"].as_array().unwrap().len())
            .sum();

    // 1. The demo captioner's store, searched as `quarry serve` searches it.
    let captioned = tmp.path().join("captioned");
    quarry(
        &cache,
        &[
            "index",
            images.to_str().unwrap(),
            "--store",
            captioned.to_str().unwrap(),
        ],
    );
    let out = eval_search(
        &cache,
        &captioned,
        &annotations,
        &["--depths", "4,8,16", "--json"],
    );
    let report = last_json(&out);
    assert!(out.contains("| served default"), "{out}");
    assert_eq!(report["queries"], queries, "{report}");
    assert_eq!(report["images_matched"], SCENES, "{report}");
    // The demo folder's fusion is fitted for the demo captioner, with its re-ranking depth.
    assert_eq!(report["fusion"]["fitted"], true, "{report}");
    let depth = report["rerank_default"].as_u64().unwrap();
    assert_eq!(report["fusion"]["rerank"], depth, "{report}");
    assert!([4, 8, 16].contains(&depth), "{report}");
    // The served search (Searcher::search_text, as the server runs it) orders exactly as the
    // library's ordering of the same candidates at the same depth.
    assert_eq!(
        row(&report, "served default")["recall"],
        row(&report, &format!("re-ranked {depth} ("))["recall"],
        "{report}"
    );
    for r in report["text_to_image"].as_array().unwrap() {
        let recall = &r["recall"];
        let (a, b, c) = (
            recall["r1"].as_f64().unwrap(),
            recall["r5"].as_f64().unwrap(),
            recall["r10"].as_f64().unwrap(),
        );
        assert!(0.0 <= a && a <= b && b <= c && c <= 100.0, "{r}");
    }
    // The demo's ITC finds most scenes; its captions are nearly all alike, so BM25 alone does
    // not; the fitted fusion does not fall below ITC alone.
    assert!(r1(&report, "ITC alone") > 50.0, "{report}");
    assert!(
        r1(&report, "BM25 alone") < r1(&report, "ITC alone"),
        "{report}"
    );
    assert!(
        r1(&report, "served default") >= r1(&report, "ITC alone") - 2.5,
        "{report}"
    );
    let calibration = &report["calibration"];
    assert_eq!(calibration["pairs"], queries as u64 * depth, "{report}");
    assert!(calibration["ece"].as_f64().unwrap() < 0.5);
    assert_eq!(calibration["cutoffs"].as_array().unwrap().len(), 3);
    for stage in ["encode", "ann", "itm", "total"] {
        let s = report["latency_ms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap();
        assert!(
            s["p50"].as_f64().unwrap() > 0.0
                && s["p95"].as_f64().unwrap() >= s["p50"].as_f64().unwrap(),
            "{s}"
        );
    }
    // The store's texts are generated captions, none of them an annotation caption.
    assert!(report["image_to_text"].is_null(), "{report}");

    // 2. The annotation's own first captions, imported: the word search now knows the answer,
    // and the fusion fitted for imported captions trusts it; image → text is measured.
    let first_only = scenes.join("first_captions.json");
    let entries: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&annotations).unwrap()).unwrap();
    let firsts: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::json!({"image": e["image"], "caption": [e["caption"][0]]}))
        .collect();
    std::fs::write(&first_only, serde_json::to_vec(&firsts).unwrap()).unwrap();
    let imported = tmp.path().join("imported");
    quarry(
        &cache,
        &[
            "index",
            images.to_str().unwrap(),
            "--store",
            imported.to_str().unwrap(),
            "--captions",
            first_only.to_str().unwrap(),
        ],
    );
    let (status, _) = quarry(
        &cache,
        &["status", "--store", imported.to_str().unwrap(), "--json"],
    );
    let status = last_json(&status);
    assert_eq!(status["captions"], SCENES, "{status}");
    assert_eq!(
        status["caption_quality"]["uninformative"], false,
        "{status}"
    );
    let out = eval_search(
        &cache,
        &imported,
        &first_only,
        &["--depths", "16", "--json"],
    );
    let report = last_json(&out);
    assert_eq!(
        report["fusion"]["caption_source"],
        "captioner:imported-captions"
    );
    assert_eq!(report["fusion"]["fitted"], true, "{report}");
    // Each query is its image's own caption, word for word.
    assert!(r1(&report, "BM25 alone") >= 80.0, "{report}");
    assert!(
        r1(&report, "served default") > r1(&report, "ITC alone"),
        "{report}"
    );
    let i2t = &report["image_to_text"];
    assert_eq!(i2t["queries"], SCENES, "{report}");
    assert!(i2t["r10"].as_f64().unwrap() >= 60.0, "{report}");

    // 3. A fit writes the file the server reads: one entry for this caption source, a
    // calibration, and weights from the grid.
    let fit = tmp.path().join("search_fusion.json");
    let fit_arg = fit.to_str().unwrap();
    let out = eval_search(
        &cache,
        &imported,
        &first_only,
        &["--depths", "16", "--fit", fit_arg, "--json"],
    );
    let report = last_json(&out);
    // Every depth × β × w was measured.
    let grid = report["fit"]["grid"].as_array().unwrap();
    assert_eq!(
        grid.len(),
        quarry::eval::served::FIT_DEPTHS.len()
            * quarry::search::fusion::BM25_WEIGHT_GRID.len()
            * quarry::search::fusion::ITM_WEIGHT_GRID.len()
    );
    let file: Value = serde_json::from_slice(&std::fs::read(&fit).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    let fits = file["fits"].as_array().unwrap();
    assert_eq!(fits.len(), 1, "{file}");
    assert_eq!(fits[0]["caption_source"], "captioner:imported-captions");
    let beta = fits[0]["bm25_weight"].as_f64().unwrap() as f32;
    assert!(
        quarry::search::fusion::BM25_WEIGHT_GRID.contains(&beta),
        "{file}"
    );
    // The grid holds ITC alone (β = w = 0) at every depth, so the chosen point is no worse,
    // and it is the best R@1 of the grid.
    let chosen = fits[0]["r1"].as_f64().unwrap();
    assert!(chosen >= fits[0]["itc_r1"].as_f64().unwrap(), "{file}");
    let best = grid
        .iter()
        .map(|p| p[3].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        chosen >= best - quarry::eval::served::DEPTH_TOLERANCE,
        "{file}"
    );
    assert!(
        file["itm_calibration"]["scale"].as_f64().unwrap() > 0.0,
        "{file}"
    );

    // --calibration-only replaces the calibration and keeps the weights of every source.
    eval_search(
        &cache,
        &captioned,
        &annotations,
        &["--fit", fit_arg, "--calibration-only"],
    );
    let again: Value = serde_json::from_slice(&std::fs::read(&fit).unwrap()).unwrap();
    assert_eq!(again["fits"], file["fits"], "{again}");
    assert_ne!(again["itm_calibration"], file["itm_calibration"], "{again}");
}
