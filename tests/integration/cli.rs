//! The command-line contract: `embed-image`, `embed-text` and `match` with `--json`, run as a
//! user would, compared with the transformers references.

use std::process::Command;

use candle_core::{Device, IndexOp, Tensor};

use crate::support::{max_abs_diff, retrieval_fixtures, Reference};

fn quarry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .unwrap()
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn embed_image_json_gives_query_vectors_and_reports_bad_files_by_name() {
    let model = retrieval_fixtures().join("small_a");
    let r = Reference::load("small_a");
    let images = retrieval_fixtures().join("images");
    let bad = tempfile::NamedTempFile::with_suffix(".jpg").unwrap();
    std::fs::write(bad.path(), b"this is text, not a JPEG").unwrap();
    let exact: Vec<String> = r
        .strings("exact_images")
        .iter()
        .map(|f| images.join(f).display().to_string())
        .collect();
    let mut args = vec![
        "embed-image",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--batch",
        "2",
    ];
    args.push(&exact[0]);
    args.push(bad.path().to_str().unwrap());
    args.push(&exact[1]);
    args.push(&exact[2]);
    let out = quarry(&args);
    assert_eq!(out.status.code(), Some(1), "a bad file gives exit code 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(bad.path().to_str().unwrap()) && stderr.contains("not a decodable image"),
        "{stderr}"
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3, "the three good images are still embedded");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["path"].as_str().unwrap(), exact[i]);
        let rows: Vec<Vec<f32>> = line["query_embeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        assert_eq!((rows.len(), rows[0].len()), (8, 16));
        let ours = Tensor::new(rows, &Device::Cpu).unwrap();
        let d = max_abs_diff(&ours, &r.tensor("image_embeds").i(i).unwrap());
        assert!(d <= 1e-4, "image {i}: {d}");
    }
}

#[test]
fn embed_text_and_match_json_agree_with_transformers() {
    let model = retrieval_fixtures().join("small_b");
    let r = Reference::load("small_b");
    let texts = r.strings("texts");
    let out = quarry(&[
        "embed-text",
        "--model",
        model.to_str().unwrap(),
        "--json",
        &texts[0],
        &texts[2],
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    for (line, t) in lines.iter().zip([0usize, 2]) {
        assert_eq!(line["text"].as_str().unwrap(), texts[t]);
        let ours = Tensor::new(floats(&line["embed"]), &Device::Cpu).unwrap();
        assert!(max_abs_diff(&ours, &r.tensor("text_embeds").i(t).unwrap()) <= 1e-4);
    }

    let image = retrieval_fixtures()
        .join("images")
        .join(&r.strings("exact_images")[1]);
    let out = quarry(&[
        "match",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--image",
        image.to_str().unwrap(),
        "--text",
        &texts[2],
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out.stdout)[0];
    let get = |k: &str| v[k].as_f64().unwrap() as f32;
    let at = |name: &str| {
        r.tensor(name)
            .i((1, 2))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!((get("itc") - at("itc")).abs() <= 1e-4, "{v}");
    assert!((get("itm") - at("itm_prob")).abs() <= 1e-4, "{v}");
    assert!(
        (get("itm_logit") - at("itm_logit_class1")).abs() <= 1e-4,
        "{v}"
    );
}

#[test]
fn wrong_model_folder_and_device_are_clear_errors() {
    let out = quarry(&["embed-text", "--model", "/nonexistent", "--json", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent: is not a directory"));
    let model = retrieval_fixtures().join("small_a");
    let out = quarry(&[
        "embed-text",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "gpu7",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda or cuda:N"));
}
