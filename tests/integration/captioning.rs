//! Captioning number for number with transformers 4.57 (f32) on the random-weight fixtures of
//! `tools/make_caption_fixtures.py`: the image side and first-step logits within 1e-4, and the
//! generated token ids identical for greedy and beam search (3 and 5 beams), with and without a
//! prompt, batched, left-padded and one at a time, in both hub layouts.

use candle_core::{DType, Device, IndexOp, Tensor};
use quarry::indexer::{decode_file, to_pixels, DecodeLimits};
use quarry::model::generate::{beam_search, greedy, GenerationSettings};
use quarry::model::opt::{DecoderState, OptConfig, OptDecoder};
use quarry::{CaptionFolder, CaptionPrecision, Captioner};
use serde_json::Value;

use crate::support::assert_close;

const TOL: f32 = 1e-4;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/captioning")
}

struct Fixture {
    folder: CaptionFolder,
    model: Captioner,
    tensors: std::collections::HashMap<String, Tensor>,
    json: Value,
}

fn open(name: &str) -> Fixture {
    let folder = CaptionFolder::open(fixtures().join(name)).unwrap();
    let model = folder
        .load(&Device::Cpu, CaptionPrecision::default())
        .unwrap();
    let dir = fixtures().join(name);
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    Fixture {
        folder,
        model,
        tensors,
        json,
    }
}

impl Fixture {
    fn t(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no reference tensor {name}"))
    }

    fn pixels(&self, idx: &[usize]) -> Tensor {
        let images = self.json["images"].as_array().unwrap();
        let spec = &self.folder.preprocess;
        let s = spec.size as usize;
        let mut data = Vec::new();
        for &i in idx {
            let path = fixtures().join("images").join(images[i].as_str().unwrap());
            data.extend(to_pixels(
                &decode_file(&path, DecodeLimits::default()).unwrap(),
                spec,
            ));
        }
        Tensor::from_vec(data, (idx.len(), 3, s, s), &Device::Cpu).unwrap()
    }

    fn prompt_ids(&self, prompts: &Value, n: usize) -> Vec<Vec<u32>> {
        match prompts.as_array() {
            None => vec![self.folder.encode_prompt("").unwrap(); n],
            Some(list) => list
                .iter()
                .map(|p| self.folder.encode_prompt(p.as_str().unwrap()).unwrap())
                .collect(),
        }
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_image_side_and_first_steps(name: &str) {
    let f = open(name);
    let tag = |w: &str| format!("{name}: {w}");
    let pixels = f.pixels(&[0, 1, 2]);
    assert_close(&tag("pixels"), &pixels, f.t("pixel_values"), 1e-6);
    let tokens = f.model.vision().forward(f.t("pixel_values")).unwrap();
    assert_close(
        &tag("ViT last_hidden_state"),
        &tokens,
        f.t("vision_last_hidden_state"),
        TOL,
    );
    let visual = f.model.visual_rows(&tokens).unwrap();
    assert_close(
        &tag("language_projection (visual rows)"),
        &visual,
        f.t("language_projection"),
        TOL,
    );

    // Prompt token ids as the OPT tokenizer gives them (with </s> first).
    for (text, ids) in f.json["prompt_ids_unpadded"].as_object().unwrap() {
        assert_eq!(
            f.folder.encode_prompt(text).unwrap(),
            ids_of(ids),
            "prompt {text:?}"
        );
    }

    for case in ["no_prompt", "prompt", "padded"] {
        let step = &f.json["first_step"][case];
        let idx: Vec<usize> = step["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let name = v.as_str().unwrap();
                f.json["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .position(|x| x.as_str() == Some(name))
                    .unwrap()
            })
            .collect();
        let prompts = f.prompt_ids(&step["prompts"], idx.len());
        let rows = f
            .model
            .visual_rows(
                &tokens
                    .index_select(
                        &Tensor::new(
                            idx.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(),
                            &Device::Cpu,
                        )
                        .unwrap(),
                        0,
                    )
                    .unwrap(),
            )
            .unwrap();
        let (_, logits, _) = f.model.prefill(&rows, &prompts).unwrap();
        assert_close(
            &tag(&format!("first-step logits, {case}")),
            &logits,
            f.t(&format!("first_step_logits_{case}")),
            TOL,
        );
    }
}

fn settings_of(f: &Fixture, v: &Value) -> GenerationSettings {
    let get = |k: &str| v.get(k).and_then(Value::as_f64);
    GenerationSettings {
        num_beams: get("num_beams").unwrap_or(1.0) as usize,
        max_new_tokens: get("max_new_tokens").unwrap() as usize,
        min_new_tokens: get("min_new_tokens").unwrap_or(0.0) as usize,
        length_penalty: get("length_penalty").unwrap_or(1.0) as f32,
        repetition_penalty: get("repetition_penalty").unwrap_or(1.0) as f32,
        no_repeat_ngram_size: get("no_repeat_ngram_size").unwrap_or(0.0) as usize,
        eos_token_id: f.folder.opt.eos_token_id,
        pad_token_id: f.folder.opt.pad_token_id,
    }
}

fn check_generation(name: &str) {
    let f = open(name);
    let cases = f.json["generation"].as_object().unwrap();
    let mut checked = 0;
    for (case, c) in cases {
        let idx: Vec<usize> = c["image_idx"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let settings = settings_of(&f, &c["settings"]);
        let prompts = f.prompt_ids(&c["prompts"], idx.len());
        let out = f
            .model
            .generate(&f.pixels(&idx), &prompts, &settings)
            .unwrap();
        let expected = c["new_tokens"].as_array().unwrap();
        let counts = c["new_token_counts"].as_array().unwrap();
        for (row, g) in out.iter().enumerate() {
            let want: Vec<u32> =
                ids_of(&expected[row])[..counts[row].as_u64().unwrap() as usize].to_vec();
            assert_eq!(
                g.token_ids, want,
                "{name}/{case} row {row}: token ids differ"
            );
        }
        if let Some(scores) = c.get("sequences_scores").and_then(Value::as_array) {
            for (row, g) in out.iter().enumerate() {
                let d = (g.score.unwrap() - scores[row].as_f64().unwrap() as f32).abs();
                assert!(
                    d <= TOL,
                    "{name}/{case} row {row}: beam score differs by {d}"
                );
            }
        }
        let kind = if settings.num_beams > 1 {
            format!("beam {}", settings.num_beams)
        } else {
            "greedy".into()
        };
        println!(
            "PARITY {name}: generate {case:<32} ({kind}, {} images) token ids identical",
            idx.len()
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} cases");
}

#[test]
fn opt_current_layout_image_side_and_first_step_logits() {
    check_image_side_and_first_steps("opt_current");
}

#[test]
fn opt_legacy_layout_image_side_and_first_step_logits() {
    check_image_side_and_first_steps("opt_legacy");
}

#[test]
fn opt_current_layout_generates_transformers_token_ids() {
    check_generation("opt_current");
}

#[test]
fn opt_legacy_layout_generates_transformers_token_ids() {
    check_generation("opt_legacy");
}

/// An OPT with `word_embed_proj_dim` ≠ `hidden_size` (`project_in`/`project_out`), run alone on
/// a left-padded batch of token ids.
#[test]
fn opt_with_projections_matches_transformers() {
    let dir = fixtures().join("opt_proj_lm");
    let cfg: OptConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let model = OptDecoder::new(&cfg, vb).unwrap();
    let r =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::U32).unwrap();
    let (_, logits) = DecoderState::prefill_ids(&model, &ids, mask.clone()).unwrap();
    assert_close(
        "opt_proj_lm: last-position logits",
        &logits,
        &r["logits"].i((.., 5)).unwrap(),
        TOL,
    );
    let histories: Vec<Vec<u32>> = ids.to_vec2::<u32>().unwrap();
    let gen = json["generation"].as_object().unwrap();
    for (case, c) in gen {
        let s = &c["settings"];
        let settings = GenerationSettings {
            num_beams: s["num_beams"].as_u64().unwrap() as usize,
            max_new_tokens: s["max_new_tokens"].as_u64().unwrap() as usize,
            min_new_tokens: 0,
            length_penalty: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos_token_id: cfg.eos_token_id,
            pad_token_id: cfg.pad_token_id,
        };
        let (mut state, logits) = DecoderState::prefill_ids(&model, &ids, mask.clone()).unwrap();
        let out: Vec<Vec<u32>> = if settings.num_beams == 1 {
            greedy(&mut state, logits, &histories, &settings).unwrap()
        } else {
            beam_search(&mut state, logits, &histories, &settings)
                .unwrap()
                .into_iter()
                .map(|(t, _)| t)
                .collect()
        };
        let want: Vec<Vec<u32>> = c["new_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["new_token_counts"].as_array().unwrap())
            .map(|(t, n)| ids_of(t)[..n.as_u64().unwrap() as usize].to_vec())
            .collect();
        assert_eq!(out, want, "opt_proj_lm/{case}");
        println!("PARITY opt_proj_lm: generate {case} token ids identical");
    }
}

fn quarry(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn caption_cli_json_gives_transformers_ids_and_reports_bad_input() {
    let f = open("opt_current");
    let model = fixtures().join("opt_current");
    let images = fixtures().join("images");
    let img0 = images.join("opt_current_exact_0.png");
    let bad = tempfile::NamedTempFile::with_suffix(".png").unwrap();
    std::fs::write(bad.path(), b"\x89PNG truncated").unwrap();
    let out = quarry(&[
        "caption",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--prompt",
        "a photo of",
        "--num-beams",
        "5",
        "--max-new-tokens",
        "10",
        "--min-new-tokens",
        "4",
        img0.to_str().unwrap(),
        bad.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "a bad image gives exit code 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(bad.path().to_str().unwrap()), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "the good image is still captioned");
    let case = &f.json["generation"]["beam5_prompt_min4_img0"];
    let want = ids_of(&case["new_tokens"][0]);
    assert_eq!(ids_of(&lines[0]["token_ids"]), want);
    assert_eq!(
        lines[0]["caption"].as_str().unwrap(),
        f.folder.decode(&want).unwrap()
    );
    assert_eq!(lines[0]["path"].as_str().unwrap(), img0.to_str().unwrap());
}

#[test]
fn wrong_folder_and_overlong_prompt_are_clear_errors() {
    let retrieval =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrieval/small_a");
    let e = CaptionFolder::open(&retrieval).unwrap_err().to_string();
    assert!(e.contains("is not a captioning model"), "{e}");
    let out = quarry(&["caption", "--model", retrieval.to_str().unwrap(), "x.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Blip2ForConditionalGeneration"));

    // The fixture's OPT has 64 positions; 6 image rows + this prompt do not fit.
    let f = open("opt_legacy");
    let long = "word ".repeat(80);
    let prompt = f.folder.encode_prompt(&long).unwrap();
    let e = f
        .model
        .generate(
            &f.pixels(&[0]),
            &[prompt],
            &settings_of(&f, &serde_json::json!({"max_new_tokens": 3})),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("exceeds the language model's 64 positions"),
        "{e}"
    );
    // Generation that would run past the positions stops with an error, not a panic.
    let e = f
        .model
        .generate(
            &f.pixels(&[0]),
            &[f.folder.encode_prompt("").unwrap()],
            &settings_of(
                &f,
                &serde_json::json!({"max_new_tokens": 200, "min_new_tokens": 200}),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("positions"), "{e}");
}

/// When the retrieval and captioning checkpoints share the ViT trunk (all but
/// `post_layernorm`), one pass serves both and gives exactly what two passes give.
#[test]
fn shared_vit_trunk_is_detected_and_gives_identical_tokens() {
    use quarry::model::shared_vision::ImageEncoders;
    use quarry::{LoadOptions, RetrievalFolder};

    // Build a retrieval folder whose trunk is opt_current's (same vision config: 56 px, 48 wide,
    // 2 layers), with its own post_layernorm, from the small_a fixture.
    let small_a =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrieval/small_a");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&small_a).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let caption_dir = fixtures().join("opt_current");
    let mut caption_weights = std::collections::HashMap::new();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        caption_weights
            .extend(candle_core::safetensors::load(caption_dir.join(shard), &Device::Cpu).unwrap());
    }
    let path = dir.path().join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for (name, t) in &caption_weights {
        if name.starts_with("vision_model.") && !name.starts_with("vision_model.post_layernorm") {
            assert_eq!(weights[name].dims(), t.dims(), "{name}");
            weights.insert(name.clone(), t.clone());
        }
    }
    candle_core::safetensors::save(&weights, &path).unwrap();

    let retrieval = RetrievalFolder::open(dir.path()).unwrap();
    let captioning = CaptionFolder::open(&caption_dir).unwrap();
    let original = RetrievalFolder::open(&small_a).unwrap();
    let shared = retrieval.vision_trunk_fingerprint().unwrap();
    assert_eq!(shared, captioning.vision_trunk_fingerprint().unwrap());
    assert_ne!(original.vision_trunk_fingerprint().unwrap(), shared);

    let retriever = retrieval.load(&LoadOptions::default()).unwrap();
    let captioner = captioning
        .load(&Device::Cpu, CaptionPrecision::default())
        .unwrap();
    let f = open("opt_current");
    let pixels = f.pixels(&[0, 1]);
    let one_pass = ImageEncoders::new(&retriever, Some(&captioner), true);
    let two_passes = ImageEncoders::new(&retriever, Some(&captioner), false);
    assert!(one_pass.shares_trunk() && !two_passes.shares_trunk());
    let a = one_pass.encode(&pixels).unwrap();
    let b = two_passes.encode(&pixels).unwrap();
    assert_eq!(
        crate::support::max_abs_diff(&a.retrieval, &b.retrieval),
        0.0
    );
    assert_eq!(
        crate::support::max_abs_diff(
            a.captioning.as_ref().unwrap(),
            b.captioning.as_ref().unwrap()
        ),
        0.0
    );
    // And the captioning tokens are what transformers' captioning ViT gives.
    assert_close(
        "shared trunk: captioning ViT output",
        a.captioning.as_ref().unwrap(),
        &f.t("vision_last_hidden_state").i(0..2).unwrap(),
        TOL,
    );
}
