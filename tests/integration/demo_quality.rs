//! The committed demo model on held-out synthetic scenes (seed 2; training used seed 1): its
//! retrieval recall with ITC alone and with ITM re-ranking, and how often its captions name the
//! right colours and shapes. The floors sit a few points under the numbers measured when the
//! model was committed (closing note of the training issue), so a change that silently degrades
//! the model (a preprocessing, tokenizer or kernel regression) fails here.

use std::process::Command;

use serde_json::Value;

/// Held-out scenes: the first 200 of seed 2 (the closing note also reports 1 000).
const SCENES: usize = 200;

fn quarry(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quarry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn the_demo_model_retrieves_and_captions_held_out_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let scenes = tmp.path().join("scenes");
    quarry::synth::generate(
        &scenes,
        quarry::synth::SynthOptions {
            count: SCENES,
            seed: 2,
            size: 224,
        },
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let metrics = quarry(&[
        "eval",
        "--annotations",
        scenes.join("annotations.json").to_str().unwrap(),
        "--images",
        scenes.to_str().unwrap(),
        "--k-test",
        "16",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]);
    let get = |part: &str, key: &str| metrics[part][key].as_f64().unwrap();
    eprintln!("demo model on {SCENES} held-out scenes: {metrics}");
    let itc_ir1 = get("itc", "img_r1");
    let itm_ir1 = get("itm", "img_r1");
    assert!(itc_ir1 >= ITC_IR1_FLOOR, "ITC text→image R@1 {itc_ir1}");
    assert!(get("itc", "img_r5") >= ITC_IR5_FLOOR);
    assert!(itm_ir1 >= ITM_IR1_FLOOR, "ITM text→image R@1 {itm_ir1}");
    // Issue #7: re-ranking must beat ITC alone, with the weight the model folder carries.
    assert_eq!(metrics["itm_fusion"]["from"], "model folder");
    assert!(
        itm_ir1 > itc_ir1,
        "re-ranked text→image R@1 {itm_ir1} is not above ITC's {itc_ir1}"
    );

    let captions = quarry(&[
        "eval-captions",
        "--data",
        scenes.to_str().unwrap(),
        "--limit",
        "100",
        "--json",
    ]);
    eprintln!("demo captioner on 100 held-out scenes: {captions}");
    let colour = captions["color_right"].as_f64().unwrap();
    let shape = captions["shape_right"].as_f64().unwrap();
    assert!(colour >= COLOUR_FLOOR, "colour right {colour}");
    assert!(shape >= SHAPE_FLOOR, "shape right {shape}");
}

// Measured at commit on these 200 scenes: ITC text→image R@1 71.6, R@5 99.3; re-ranked (k_test
// 16) with the folder's ITM weight 0.05, R@1 73.1 (LAVIS's plain sum: 69.1, see
// src/itm_fusion.rs). Floors a few points under.
const ITC_IR1_FLOOR: f64 = 68.5;
const ITC_IR5_FLOOR: f64 = 96.0;
const ITM_IR1_FLOOR: f64 = 70.0;
// Measured at commit on the first 100 of these scenes: colour right 0.14, shape right 0.38. The
// demo captioner barely conditions on the image yet (closing note); these floors only guard
// the captioning path against breaking outright.
const COLOUR_FLOOR: f64 = 0.08;
const SHAPE_FLOOR: f64 = 0.25;
