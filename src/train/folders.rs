//! Reading the starting point of a run and writing its results as Hugging Face model folders.
//!
//! A run starts from a model folder: `config.json` and `preprocessor_config.json` say what to
//! build, the tokenizer files are carried over, and `model.safetensors` (when present) gives
//! initial values; a folder without weights starts from the seeded initialisation. What a run
//! writes is a folder of the same layout, so `quarry` and transformers load it unchanged.
//! Every file is written to a temporary name, synced, then renamed: an interrupted write never
//! leaves a truncated checkpoint behind.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::TrainError;
use crate::model::vision::fused_bias;

/// Tokenizer and processor files carried from the starting folder to the result, when present.
pub const CARRIED_FILES: [&str; 7] = [
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
    "generation_config.json",
];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The parsed `config.json` of a folder, kept as JSON so that keys quarry does not use survive
/// into the result.
pub fn read_config(folder: &Path) -> Result<serde_json::Value, TrainError> {
    let path = folder.join("config.json");
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Input(format!("{}: not valid JSON: {e}", path.display())))
}

/// Every tensor of a folder's weights (`model.safetensors`, or the shards named by
/// `model.safetensors.index.json`), as f32 on `device`, with `prefix` put before each name.
/// A folder without weights gives an empty map.
pub fn read_tensors(
    folder: &Path,
    prefix: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let single = folder.join("model.safetensors");
    let index = folder.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let bytes = fs::read(&index).map_err(io_err(&index))?;
        let parsed: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::Input(format!("{}: {e}", index.display())))?;
        let mut shards: Vec<String> = parsed["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| folder.join(s)).collect()
    } else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for file in files {
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| TrainError::Input(format!("{}: {e}", file.display())))?;
        for (name, t) in tensors {
            out.insert(format!("{prefix}{name}"), t.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("partial");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes tensors as a safetensors file (with transformers' `format: pt` metadata and any
/// `metadata` given), atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    metadata: HashMap<String, String>,
) -> Result<(), TrainError> {
    let converted = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                t.to_dtype(dtype)?.to_device(&Device::Cpu)?.contiguous()?,
            ))
        })
        .collect::<Result<Vec<(String, Tensor)>, candle_core::Error>>()?;
    let mut meta = metadata;
    meta.insert("format".into(), "pt".into());

    let bytes =
        safetensors::tensor::serialize(converted.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
            .map_err(|e| TrainError::Input(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// EVA's attention has q and v biases and no k bias; quarry trains them as `q_bias`/`v_bias`
/// (so the k part stays zero by construction), while transformers (4.57) stores one fused
/// `qkv.bias`. Writes the fused tensor `[q, 0, v]` in their place, so transformers loads the
/// result without re-initialising anything; quarry reads either form.
pub fn fuse_qkv_biases(
    tensors: &BTreeMap<String, Tensor>,
) -> candle_core::Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        if let Some(prefix) = name.strip_suffix("q_bias") {
            let v = tensors.get(&format!("{prefix}v_bias")).ok_or_else(|| {
                candle_core::Error::Msg(format!("`{name}` has no matching v_bias"))
            })?;
            out.insert(format!("{prefix}qkv.bias"), fused_bias(t, v)?);
        } else if !name.ends_with("v_bias") {
            out.insert(name.clone(), t.clone());
        }
    }
    Ok(out)
}

/// The name transformers writes for a dtype in `config.json`.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Writes a model folder: `config.json` (with `architectures` and the weights' dtype set),
/// `model.safetensors`, and the files of [`CARRIED_FILES`] copied from `carry_from`.
pub fn write_model_folder(
    dir: &Path,
    mut config: serde_json::Value,
    architecture: &str,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    carry_from: &[&Path],
) -> Result<(), TrainError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tensors = fuse_qkv_biases(tensors)?;
    write_safetensors(
        &dir.join("model.safetensors"),
        &tensors,
        dtype,
        HashMap::new(),
    )?;
    for name in CARRIED_FILES {
        if let Some(src) = carry_from
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        {
            let bytes = fs::read(&src).map_err(io_err(&src))?;
            write_atomic(&dir.join(name), &bytes)?;
        }
    }
    if let Some(obj) = config.as_object_mut() {
        obj.insert("architectures".into(), serde_json::json!([architecture]));
        obj.insert("torch_dtype".into(), serde_json::json!(dtype_name(dtype)));
        obj.remove("dtype");
    }
    let json = serde_json::to_vec_pretty(&config).expect("config serialises");
    write_atomic(&dir.join("config.json"), &json)
}
