//! Number-for-number checks against transformers 4.57 (PyTorch, f32) on the random-weight
//! fixture checkpoints written by `tools/make_retrieval_fixtures.py`.
//!
//! Tolerance: 1e-4 max absolute difference for every model output in f32, on inputs already at
//! the model size (the references are around 1–10 in magnitude, printed with each row).
//! Preprocessing of images that need resizing is compared separately, with its own bound.

use candle_core::{DType, Device, IndexOp, Tensor};
use quarry::indexer::{decode_file, to_pixels, DecodeLimits};
use quarry::model::itc_scores;
use quarry::tokenize::batch_from_ids;
use quarry::{LoadOptions, RetrievalFolder, Retriever};

use crate::support::{assert_close, max_abs_diff, retrieval_fixtures, Reference};

const TOL: f32 = 1e-4;

fn open(name: &str) -> (RetrievalFolder, Retriever) {
    let folder = RetrievalFolder::open(retrieval_fixtures().join(name)).unwrap();
    let model = folder.load(&LoadOptions::default()).unwrap();
    (folder, model)
}

fn pixels_of(folder: &RetrievalFolder, files: &[String]) -> Tensor {
    let spec = &folder.preprocess;
    let s = spec.size as usize;
    let mut data = Vec::new();
    for f in files {
        let img = decode_file(
            &retrieval_fixtures().join("images").join(f),
            DecodeLimits::default(),
        )
        .unwrap();
        data.extend(to_pixels(&img, spec));
    }
    Tensor::from_vec(data, (files.len(), 3, s, s), &Device::Cpu).unwrap()
}

/// Runs every compared output of one fixture model; `reference` may belong to another folder
/// holding the same weights in another layout.
fn check_model(name: &str, reference: &str) {
    let (folder, model) = open(name);
    let r = Reference::load(reference);
    let tag = |what: &str| format!("{name}: {what}");

    // Preprocessing of images already at the model size: rescale + normalise only.
    let pixels = pixels_of(&folder, &r.strings("exact_images"));
    assert_close(
        &tag("pixels (exact size)"),
        &pixels,
        r.tensor("pixel_values_exact"),
        1e-6,
    );

    // Image side, each stage from the previous stage of ours.
    let reference_pixels = r.tensor("pixel_values_exact");
    let tokens = model.image_tokens(reference_pixels).unwrap();
    assert_close(
        &tag("ViT last_hidden_state"),
        &tokens,
        r.tensor("vision_last_hidden_state"),
        TOL,
    );
    let queries = model.image_query_output(&tokens).unwrap();
    assert_close(
        &tag("Q-Former image mode"),
        &queries,
        r.tensor("qformer_image_last_hidden_state"),
        TOL,
    );
    let image_embeds = model.project_queries(&queries).unwrap();
    assert_close(
        &tag("image embeds (unit, Q per image)"),
        &image_embeds,
        r.tensor("image_embeds"),
        TOL,
    );

    // Text side: token ids first, then the Q-Former in text mode.
    let texts = r.strings("texts");
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = folder.tokenizer.encode(&text_refs).unwrap();
    let expected_ids: Vec<Vec<u32>> = r.json["input_ids_unpadded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    assert_eq!(
        ids, expected_ids,
        "token ids differ from transformers' BertTokenizerFast"
    );
    let batch = folder
        .tokenizer
        .batch(&text_refs, Some(35), &Device::Cpu)
        .unwrap();
    let ref_ids = r.tensor("text_input_ids").to_dtype(DType::U32).unwrap();
    assert_eq!(
        max_abs_diff(&batch.input_ids, &ref_ids),
        0.0,
        "padded ids differ"
    );
    let ref_mask = r
        .tensor("text_attention_mask")
        .to_dtype(DType::U32)
        .unwrap();
    assert_eq!(
        max_abs_diff(&batch.attention_mask, &ref_mask),
        0.0,
        "masks differ"
    );
    let hidden = model.text_hidden(&batch).unwrap();
    // Padded rows are computed but meaningless; compare where the mask is 1.
    let mask = batch
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let masked = |t: &Tensor| t.broadcast_mul(&mask).unwrap();
    assert_close(
        &tag("Q-Former text mode (unpadded rows)"),
        &masked(&hidden),
        &masked(r.tensor("qformer_text_last_hidden_state")),
        TOL,
    );
    let text_embeds = model.embed_texts(&batch).unwrap();
    assert_close(
        &tag("text embeds ([CLS] projection)"),
        &text_embeds,
        r.tensor("text_embeds"),
        TOL,
    );

    // Scores.
    let itc = itc_scores(&image_embeds, &text_embeds).unwrap();
    assert_close(&tag("ITC (max over queries)"), &itc, r.tensor("itc"), TOL);
    let n_img = tokens.dim(0).unwrap();
    let n_txt = texts.len();
    let mut logits = Vec::new();
    let mut probs = Vec::new();
    let mut class1 = Vec::new();
    for i in 0..n_img {
        let memory = model.image_memory(&tokens.i(i..i + 1).unwrap()).unwrap();
        let l = model
            .itm_logits(&memory.repeat_each(n_txt).unwrap(), &batch)
            .unwrap();
        logits.push(l);
        let s = model.itm_one_image(&memory, &batch).unwrap();
        probs.extend(s.probability);
        class1.extend(s.logit);
    }
    let logits = Tensor::stack(&logits, 0).unwrap();
    assert_close(
        &tag("ITM logits (query-averaged)"),
        &logits,
        r.tensor("itm_logits"),
        TOL,
    );
    let probs = Tensor::from_vec(probs, (n_img, n_txt), &Device::Cpu).unwrap();
    assert_close(
        &tag("ITM match probability"),
        &probs,
        r.tensor("itm_prob"),
        TOL,
    );
    let class1 = Tensor::from_vec(class1, (n_img, n_txt), &Device::Cpu).unwrap();
    assert_close(
        &tag("ITM class-1 logit"),
        &class1,
        r.tensor("itm_logit_class1"),
        TOL,
    );

    // Joint mode hidden states for one pair.
    let pair = &r.json["joint_pair"];
    let (pi, pt) = (
        pair["image"].as_u64().unwrap() as usize,
        pair["text"].as_u64().unwrap() as usize,
    );
    let memory = model.image_memory(&tokens.i(pi..pi + 1).unwrap()).unwrap();
    let one = batch_from_ids(&[ids[pt].clone()], Some(35), 0, &Device::Cpu).unwrap();
    let joint = model.joint_hidden(&memory, &one).unwrap();
    let nq = model.config().num_query_tokens;
    let keep = nq + ids[pt].len();
    let reference_joint = r.tensor("qformer_joint_last_hidden_state");
    assert_close(
        &tag("Q-Former joint mode (queries + text)"),
        &joint.narrow(1, 0, keep).unwrap(),
        &reference_joint.narrow(1, 0, keep).unwrap(),
        TOL,
    );
}

#[test]
fn small_a_matches_transformers() {
    check_model("small_a", "small_a");
}

#[test]
fn small_b_sharded_old_config_keys_matches_transformers() {
    check_model("small_b", "small_b");
}

#[test]
fn lavis_q_v_bias_layout_loads_to_the_same_numbers() {
    check_model("small_a_lavis_bias", "small_a");
}

/// Images that need resizing go through our decoder and Pillow port instead of PIL; this bounds
/// what that adds. PNG decoding is lossless, so PNG inputs must give PIL's exact bytes (pixel
/// difference 0 up to the f32 normalisation); JPEG decoders may differ by a few levels.
#[test]
fn resized_images_preprocessing_difference_is_bounded() {
    for name in ["small_a", "small_b"] {
        let (folder, model) = open(name);
        let r = Reference::load(name);
        let files = r.strings("resized_images");
        let ours = pixels_of(&folder, &files);
        let reference = r.tensor("pixel_values_resized");
        // One byte level, normalised: 1 / 255 / min(std) ≈ 0.0152.
        let one_level = 1.0 / 255.0 / 0.261_302_6;
        for (i, f) in files.iter().enumerate() {
            let d = max_abs_diff(&ours.i(i).unwrap(), &reference.i(i).unwrap());
            let levels = d / one_level;
            println!("PARITY {name}: pixels of {f:<13} (resized)           max|diff| {d:.3e} = {levels:.2} byte levels");
            if f.ends_with(".png") {
                assert!(
                    d <= 1e-6,
                    "{f}: PNG resize must match Pillow exactly, got {d}"
                );
            } else {
                assert!(levels <= 3.01, "{f}: JPEG pixels differ by {levels} levels");
            }
        }
        let embeds = model.embed_images(&ours).unwrap();
        let reference_embeds = r.tensor("image_embeds_resized");
        let d = max_abs_diff(&embeds, reference_embeds);
        println!("PARITY {name}: image embeds from resized files (end to end) max|diff| {d:.3e}");
        assert!(d <= 0.05, "{name}: end-to-end embeds differ by {d}");
    }
}

#[test]
fn batched_images_and_padded_texts_equal_one_at_a_time() {
    let (folder, model) = open("small_b");
    let r = Reference::load("small_b");
    let pixels = r.tensor("pixel_values_exact");
    let together = model.embed_images(pixels).unwrap();
    for i in 0..pixels.dim(0).unwrap() {
        let alone = model.embed_images(&pixels.i(i..i + 1).unwrap()).unwrap();
        assert!(max_abs_diff(&alone, &together.i(i..i + 1).unwrap()) <= 1e-5);
    }
    let texts = r.strings("texts");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let longest = model
        .embed_texts(&folder.tokenizer.batch(&refs, None, &Device::Cpu).unwrap())
        .unwrap();
    let padded = model
        .embed_texts(
            &folder
                .tokenizer
                .batch(&refs, Some(35), &Device::Cpu)
                .unwrap(),
        )
        .unwrap();
    assert!(max_abs_diff(&longest, &padded) <= 1e-5);
    for (i, t) in refs.iter().enumerate() {
        let alone = model
            .embed_texts(&folder.tokenizer.batch(&[t], None, &Device::Cpu).unwrap())
            .unwrap();
        let d = max_abs_diff(&alone, &longest.i(i..i + 1).unwrap());
        assert!(d <= 1e-5, "text {i}: {d}");
    }
}

#[test]
fn half_precision_vision_stays_close_to_f32() {
    let folder = RetrievalFolder::open(retrieval_fixtures().join("small_a")).unwrap();
    let r = Reference::load("small_a");
    for dtype in [DType::F16, DType::BF16] {
        let model = folder
            .load(&LoadOptions {
                device: Device::Cpu,
                vision_dtype: dtype,
            })
            .unwrap();
        let embeds = model.embed_images(r.tensor("pixel_values_exact")).unwrap();
        let d = max_abs_diff(&embeds, r.tensor("image_embeds"));
        println!(
            "PARITY small_a: image embeds with the ViT in {dtype:?}          max|diff| {d:.3e}"
        );
        // Unit vectors: a difference of 0.05 is still a cosine above 0.998.
        assert!(d > 0.0 && d <= 0.05, "{dtype:?}: {d}");
    }
}
