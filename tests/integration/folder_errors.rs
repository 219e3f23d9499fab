//! A wrong or incomplete model folder is refused with an error naming the file, tensor or shape.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use quarry::{Error, LoadOptions, RetrievalFolder};

use crate::support::retrieval_fixtures;

/// Copies the small_a fixture into a temporary folder that a test may then break.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(retrieval_fixtures().join("small_a")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn load_error(dir: &Path) -> Error {
    match RetrievalFolder::open(dir) {
        Err(e) => e,
        Ok(folder) => folder
            .load(&LoadOptions::default())
            .expect_err("loading should fail"),
    }
}

#[test]
fn missing_folder_and_missing_files_are_named() {
    let e = load_error(Path::new("/nonexistent/model"));
    assert!(e.to_string().contains("is not a directory"), "{e}");
    for file in ["config.json", "preprocessor_config.json"] {
        let dir = copy_fixture();
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let e = load_error(dir.path());
        assert!(e.to_string().contains(&format!("{file} is missing")), "{e}");
        assert!(e.is_user_error());
    }
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.to_string()
            .contains("neither model.safetensors nor model.safetensors.index.json"),
        "{e}"
    );
    std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
    let e = load_error(dir.path());
    assert!(e.to_string().contains("only pytorch_model.bin"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |t| {
        t.remove("qformer.encoder.layer.2.crossattention.attention.key.weight")
            .unwrap();
    });
    let e = load_error(dir.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("`qformer.encoder.layer.2.crossattention.attention.key.weight` is missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_tensor_file_and_both_shapes() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "itm_head.weight".into(),
            Tensor::zeros((3, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_error(dir.path());
    let text = e.to_string();
    assert!(
        text.contains("`itm_head.weight` in model.safetensors has shape [3, 32]"),
        "{text}"
    );
    assert!(text.contains("implies [2, 32]"), "{text}");
}

#[test]
fn corrupt_weights_and_wrong_model_kind_are_explained() {
    let dir = copy_fixture();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.to_string()
            .contains("model.safetensors is not a valid safetensors file"),
        "{e}"
    );

    let dir = copy_fixture();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let config = config.replace(
        "Blip2ForImageTextRetrieval",
        "Blip2ForConditionalGeneration",
    );
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.to_string()
            .contains("is not an image-text retrieval model"),
        "{e}"
    );

    let dir = copy_fixture();
    let pre = std::fs::read_to_string(dir.path().join("preprocessor_config.json")).unwrap();
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        pre.replace("56", "224"),
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.to_string()
            .contains("differs from vision_config.image_size 56"),
        "{e}"
    );

    let dir = copy_fixture();
    std::fs::write(dir.path().join("config.json"), "{\"vision_config\": [").unwrap();
    let e = load_error(dir.path());
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn vocab_txt_alone_tokenizes_like_tokenizer_json() {
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    std::fs::copy(
        retrieval_fixtures().join("small_a/vocab.txt"),
        dir.path().join("vocab.txt"),
    )
    .ok();
    let from_vocab = RetrievalFolder::open(dir.path()).unwrap();
    let from_json = RetrievalFolder::open(retrieval_fixtures().join("small_a")).unwrap();
    let texts = [
        "Two CATS laying on a pink blanket!!",
        "café crème, naïve façade — 東京",
        "[DEC] token",
    ];
    assert_eq!(
        from_vocab.tokenizer.encode(&texts).unwrap(),
        from_json.tokenizer.encode(&texts).unwrap()
    );
    assert_eq!(from_vocab.tokenizer.vocab_size(), 30523);
}
