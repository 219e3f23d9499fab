//! quarry's bicubic resize against Pillow's, byte for byte.
//!
//! `fixtures/resample/` holds what Pillow (the version in `cases.json`, 13.0.0) produced for
//! 327 shapes — written by `tools/make_resample_fixtures.py`. The inputs are regenerated here
//! from each case's seed with the same SplitMix64 stream. Tolerance: none; every output byte
//! must be equal.

use std::path::PathBuf;

use image::RgbImage;
use quarry_indexer::resize_bicubic;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/resample")
}

/// Row-major RGB bytes from SplitMix64(seed), as `pixels()` in the fixture script.
fn pixels(width: u32, height: u32, seed: u64, kind: &str) -> RgbImage {
    let n = width as usize * height as usize * 3;
    let mut state = seed;
    let mut data = Vec::with_capacity(n + 8);
    while data.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        data.extend_from_slice(&z.to_le_bytes());
    }
    data.truncate(n);
    match kind {
        "noise" => {}
        "binary" => data
            .iter_mut()
            .for_each(|b| *b = if *b >= 128 { 255 } else { 0 }),
        other => panic!("unknown pixel kind {other:?} in cases.json"),
    }
    RgbImage::from_raw(width, height, data).unwrap()
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

struct Case {
    label: String,
    input: RgbImage,
    out: (u32, u32),
    expected: Vec<u8>,
    pil_order: String,
    other_order_max_diff: u8,
}

fn cases() -> (String, Vec<Case>) {
    let dir = fixture_dir();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let blob = std::fs::read(dir.join("outputs.bin")).unwrap();
    let num = |v: &Value| v.as_u64().unwrap();
    let cases = manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let (iw, ih) = (num(&c["in"][0]) as u32, num(&c["in"][1]) as u32);
            let (ow, oh) = (num(&c["out"][0]) as u32, num(&c["out"][1]) as u32);
            let kind = c["kind"].as_str().unwrap();
            let offset = num(&c["offset"]) as usize;
            let len = ow as usize * oh as usize * 3;
            Case {
                label: format!(
                    "{} {kind} {iw}x{ih} -> {ow}x{oh}",
                    c["name"].as_str().unwrap()
                ),
                input: pixels(iw, ih, num(&c["seed"]), kind),
                out: (ow, oh),
                expected: blob[offset..offset + len].to_vec(),
                pil_order: c["pil_order"].as_str().unwrap().to_owned(),
                other_order_max_diff: num(&c["other_order_max_diff"]) as u8,
            }
        })
        .collect();
    let version = manifest["pillow_version"].as_str().unwrap().to_owned();
    (version, cases)
}

#[test]
fn resize_matches_pillow_byte_for_byte_on_every_fixture_shape() {
    let (version, cases) = cases();
    // The module docs name the Pillow version whose rule is ported; the fixture must be from it.
    assert_eq!(version, "13.0.0", "fixture written by another Pillow");
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let got = resize_bicubic(&case.input, case.out.0, case.out.1);
        assert_eq!(got.dimensions(), case.out, "{}", case.label);
        let diff = max_diff(got.as_raw(), &case.expected);
        if diff != 0 {
            failures.push(format!(
                "{} (Pillow: {}): max diff {diff}",
                case.label, case.pil_order
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shapes differ from Pillow:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The fixture can only prove the pass order if the order changes the bytes: check that it
/// does for many shapes of each order, and that the other order (two single-axis resizes
/// chained, each one pass) gives exactly the difference Pillow's script measured.
#[test]
fn fixture_tells_the_pass_orders_apart_and_the_other_order_is_reproduced() {
    let (_, cases) = cases();
    let mut discriminating = [0usize; 2];
    for case in cases.iter().filter(|c| c.other_order_max_diff > 0) {
        let (ow, oh) = case.out;
        let (iw, ih) = case.input.dimensions();
        let other = match case.pil_order.as_str() {
            "vertical_first" => {
                discriminating[0] += 1;
                resize_bicubic(&resize_bicubic(&case.input, ow, ih), ow, oh)
            }
            "horizontal_first" => {
                discriminating[1] += 1;
                resize_bicubic(&resize_bicubic(&case.input, iw, oh), ow, oh)
            }
            other => panic!("{}: order {other:?} with a nonzero difference", case.label),
        };
        assert_eq!(
            max_diff(other.as_raw(), &case.expected),
            case.other_order_max_diff,
            "{}",
            case.label
        );
    }
    assert!(
        discriminating.iter().all(|&n| n >= 40),
        "shapes where the order matters (vertical first, horizontal first): {discriminating:?}"
    );
}
