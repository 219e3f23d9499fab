//! Helpers shared by the integration tests: fixture paths, reference tensors, comparisons.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// `fixtures/retrieval` in the repository.
pub fn retrieval_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrieval")
}

/// The small fixture retrieval model's folder, as a command-line argument.
pub fn small_model() -> String {
    retrieval_fixtures()
        .join("small_a")
        .to_string_lossy()
        .into_owned()
}

/// `count` synthetic 72-px scenes of `seed` in `dir/images` (and `dir/annotations.json`).
pub fn scenes(dir: &Path, count: usize, seed: u64) {
    quarry::synth::generate(
        dir,
        quarry::synth::SynthOptions {
            count,
            seed,
            size: 72,
        },
    )
    .unwrap();
}

/// The reference outputs transformers wrote for a fixture model.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = retrieval_fixtures().join(name);
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap_or_else(|e| panic!("{name}/reference.safetensors: {e}"));
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Self { tensors, json }
    }

    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("reference.json has no list {key}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(candle_core::DType::F32).unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute value, to show that a compared output is not trivially small.
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts `max |a − b| ≤ tol` and prints the row of the parity table.
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tol: f32) -> f32 {
    let d = max_abs_diff(ours, reference);
    println!(
        "PARITY {what:<48} max|diff| {d:.3e}  (max|ref| {:.3e}, tol {tol:.0e})",
        max_abs(reference)
    );
    assert!(d <= tol, "{what}: max abs difference {d} exceeds {tol}");
    d
}
