//! The only code that reads a model folder.
//!
//! A folder is taken exactly as downloaded from the Hugging Face hub
//! (`Salesforce/blip2-itm-vit-g`, `Salesforce/blip2-itm-vit-g-coco`):
//! - `config.json` (see [`crate::model::config`]);
//! - `model.safetensors`, or `model.safetensors.index.json` with its shards;
//! - `tokenizer.json`, or `vocab.txt` (then `[DEC]` is added as BLIP-2 does);
//! - `preprocessor_config.json` (image size, mean, std).
//!
//! Weights are memory-mapped. Each tensor is copied once, into the precision and device it runs
//! in, and its pages are then released from the mapping, so loading the 4.7 GB f32 checkpoint
//! never holds it in memory twice. Every problem is reported with the file, tensor or shape at
//! fault.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use memmap2::Mmap;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::indexer::PreprocessSpec;
use crate::itm_fusion::ItmFusion;
use crate::model::captioner::{CaptionPrecision, Captioner};
use crate::model::opt::OptConfig;
use crate::model::{Blip2Config, Retriever};
use crate::tokenize::{TextTokenizer, DEFAULT_MAX_TEXT_TOKENS};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the model runs.
    pub device: Device,
    /// Precision of the ViT: f32 (default), or f16/bf16 as the original ran it.
    pub vision_dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            vision_dtype: DType::F32,
        }
    }
}

/// A retrieval model folder (`Blip2ForImageTextRetrieval`), opened and checked but with the
/// weights not yet loaded.
#[derive(Debug)]
pub struct RetrievalFolder {
    folder: PathBuf,
    /// The parsed `config.json`.
    pub config: Blip2Config,
    /// Image preprocessing from `preprocessor_config.json`.
    pub preprocess: PreprocessSpec,
    /// The Q-Former tokenizer.
    pub tokenizer: TextTokenizer,
    /// How re-ranking weighs ITM against ITC: the folder's `itm_fusion.json`, else LAVIS's.
    pub fusion: ItmFusion,
    tensors: TensorFiles,
}

impl RetrievalFolder {
    /// Opens a model folder: reads the configuration, preprocessing and tokenizer, maps the
    /// weight files and checks that their headers parse.
    pub fn open(folder: impl AsRef<Path>) -> Result<Self> {
        let (folder, config) = open_config(
            folder.as_ref(),
            "Blip2ForImageTextRetrieval",
            "an image-text retrieval model",
            "Salesforce/blip2-itm-vit-g",
        )?;
        if !config.qformer_config.use_qformer_text_input {
            return Err(folder_err(
                &folder,
                "config.json: qformer_config.use_qformer_text_input is false, so this Q-Former \
                 cannot encode text"
                    .into(),
            ));
        }
        let preprocess = read_preprocessor(&folder, config.vision_config.image_size)?;
        let max_text = DEFAULT_MAX_TEXT_TOKENS.min(config.qformer_config.max_position_embeddings);
        let tokenizer = TextTokenizer::new(
            read_tokenizer(&folder)?,
            max_text,
            config.qformer_config.pad_token_id as u32,
        )?;
        if tokenizer.vocab_size() > config.qformer_config.vocab_size {
            return Err(folder_err(
                &folder,
                format!(
                    "the tokenizer has {} tokens but qformer_config.vocab_size is {}",
                    tokenizer.vocab_size(),
                    config.qformer_config.vocab_size
                ),
            ));
        }
        let fusion = ItmFusion::read_folder(&folder)
            .map_err(|e| folder_err(&folder, e.to_string()))?
            .unwrap_or_default();
        let tensors = TensorFiles::open(&folder)?;
        Ok(Self {
            folder,
            config,
            preprocess,
            tokenizer,
            fusion,
            tensors,
        })
    }

    /// The folder this was opened from.
    pub fn path(&self) -> &Path {
        &self.folder
    }

    /// Loads the weights and builds the model.
    pub fn load(&self, options: &LoadOptions) -> Result<Retriever> {
        self.tensors.build(&options.device, |vb| {
            Retriever::new(&self.config, vb, options.vision_dtype)
        })
    }

    /// Fingerprint of the frozen ViT trunk (every `vision_model.*` tensor but
    /// `post_layernorm`): equal fingerprints mean one ViT pass can serve two checkpoints.
    pub fn vision_trunk_fingerprint(&self) -> Result<u64> {
        self.tensors.vision_trunk_fingerprint()
    }

    /// Fingerprint of everything that decides this model's embeddings: every weight,
    /// `config.json`, the preprocessing and the tokenizer file. A store records it so that
    /// vectors from two models are never mixed, and `quarry eval` keys its cache with it.
    /// Reads every weight once (about 1 s per 5 GB from the page cache).
    pub fn fingerprint(&self) -> Result<u128> {
        let config = read_text(&self.folder, "config.json")?.into_bytes();
        let preprocess = format!("{:?}", self.preprocess);
        let tokenizer = ["tokenizer.json", "vocab.txt"]
            .iter()
            .find(|name| self.folder.join(name).is_file())
            .map(|name| read_text(&self.folder, name).map(String::into_bytes))
            .transpose()?
            .unwrap_or_default();
        self.tensors
            .weights_fingerprint(&[&config, preprocess.as_bytes(), &tokenizer])
    }
}

/// A captioning model folder (`Blip2ForConditionalGeneration` with OPT), opened and checked
/// but with the weights not yet loaded.
#[derive(Debug)]
pub struct CaptionFolder {
    folder: PathBuf,
    /// The parsed `config.json`.
    pub config: Blip2Config,
    /// Its `text_config`.
    pub opt: OptConfig,
    /// Image preprocessing from `preprocessor_config.json`.
    pub preprocess: PreprocessSpec,
    tokenizer: tokenizers::Tokenizer,
    tensors: TensorFiles,
}

impl CaptionFolder {
    /// Opens a captioning model folder (`Salesforce/blip2-opt-2.7b` and its relatives, either
    /// hub layout).
    pub fn open(folder: impl AsRef<Path>) -> Result<Self> {
        let (folder, config) = open_config(
            folder.as_ref(),
            "Blip2ForConditionalGeneration",
            "a captioning model",
            "Salesforce/blip2-opt-2.7b",
        )?;
        let text = config.text_config.clone().ok_or_else(|| {
            folder_err(
                &folder,
                "config.json has no text_config (the language model)".into(),
            )
        })?;
        if let Some(kind) = text.get("model_type").and_then(|v| v.as_str()) {
            if kind != "opt" {
                return Err(folder_err(
                    &folder,
                    format!("config.json: text_config.model_type {kind:?} is not supported (only \"opt\")"),
                ));
            }
        }
        let opt: OptConfig = serde_json::from_value(text)
            .map_err(|e| folder_err(&folder, format!("config.json: text_config: {e}")))?;
        opt.validate()
            .map_err(|e| folder_err(&folder, format!("config.json: {e}")))?;
        let preprocess = read_preprocessor(&folder, config.vision_config.image_size)?;
        let json = folder.join("tokenizer.json");
        if !json.is_file() {
            return Err(folder_err(&folder, "tokenizer.json is missing".into()));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| folder_err(&folder, format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| folder_err(&folder, format!("tokenizer.json: {e}")))?;
        let tensors = TensorFiles::open(&folder)?;
        Ok(Self {
            folder,
            config,
            opt,
            preprocess,
            tokenizer,
            tensors,
        })
    }

    /// The folder this was opened from.
    pub fn path(&self) -> &Path {
        &self.folder
    }

    /// Loads the weights and builds the model.
    pub fn load(&self, device: &Device, precision: CaptionPrecision) -> Result<Captioner> {
        self.tensors.build(device, |vb| {
            Captioner::new(&self.config, &self.opt, vb, precision)
        })
    }

    /// A prompt's token ids as the model reads them: `</s>` then the prompt's tokens.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.first() != Some(&self.opt.bos_token_id) {
            ids.insert(0, self.opt.bos_token_id);
        }
        if let Some(image) = self.config.image_token_index {
            if ids.contains(&image) {
                return Err(Error::Tokenizer(format!(
                    "the prompt contains the image placeholder token (id {image}); remove \"<image>\" from it"
                )));
            }
        }
        Ok(ids)
    }

    /// Text of generated ids, special tokens skipped and surrounding whitespace trimmed (as
    /// LAVIS returns captions).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(text.trim().to_string())
    }

    /// Fingerprint of the frozen ViT trunk; see [`RetrievalFolder::vision_trunk_fingerprint`].
    pub fn vision_trunk_fingerprint(&self) -> Result<u64> {
        self.tensors.vision_trunk_fingerprint()
    }

    /// Fingerprint of everything that decides this model's captions given the generation
    /// settings: every weight, `config.json` and the preprocessing (see
    /// [`RetrievalFolder::fingerprint`]).
    pub fn fingerprint(&self) -> Result<u128> {
        let config = read_text(&self.folder, "config.json")?.into_bytes();
        let preprocess = format!("{:?}", self.preprocess);
        self.tensors
            .weights_fingerprint(&[&config, preprocess.as_bytes()])
    }
}

fn folder_err(folder: &Path, message: String) -> Error {
    Error::ModelFolder {
        folder: folder.to_path_buf(),
        message,
    }
}

/// Checks that `folder` is a directory whose `config.json` parses and names `architecture`
/// (configs without `architectures` are accepted).
fn open_config(
    folder: &Path,
    architecture: &str,
    kind: &str,
    example: &str,
) -> Result<(PathBuf, Blip2Config)> {
    let folder = folder.to_path_buf();
    if !folder.is_dir() {
        return Err(folder_err(&folder, "is not a directory".into()));
    }
    let config = read_config(&folder)?;
    if !config.architectures.is_empty() && !config.architectures.iter().any(|a| a == architecture) {
        return Err(folder_err(
            &folder,
            format!(
                "config.json: architectures {:?} is not {kind} (expected {architecture}, e.g. {example})",
                config.architectures
            ),
        ));
    }
    Ok((folder, config))
}

fn read_text(folder: &Path, name: &str) -> Result<String> {
    let path = folder.join(name);
    std::fs::read_to_string(&path).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            "is missing".to_string()
        } else {
            format!("cannot be read: {e}")
        };
        folder_err(folder, format!("{name} {what}"))
    })
}

fn read_config(folder: &Path) -> Result<Blip2Config> {
    let text = read_text(folder, "config.json")?;
    Blip2Config::from_json(&text).map_err(|e| folder_err(folder, e.to_string()))
}

/// The keys of `preprocessor_config.json` quarry uses.
#[derive(Debug, Deserialize)]
struct PreprocessorConfig {
    #[serde(default)]
    size: Option<SizeField>,
    #[serde(default)]
    image_mean: Option<[f32; 3]>,
    #[serde(default)]
    image_std: Option<[f32; 3]>,
    #[serde(default)]
    rescale_factor: Option<f64>,
    #[serde(default)]
    resample: Option<u32>,
    #[serde(default)]
    do_center_crop: Option<bool>,
}

/// `size` is `{"height": h, "width": w}` in current files, a bare number in old ones.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeField {
    HeightWidth { height: u32, width: u32 },
    Shortest { shortest_edge: u32 },
    Square(u32),
}

/// OpenAI CLIP's normalisation, which every BLIP-2 checkpoint uses (written as the hub files
/// spell it).
#[allow(clippy::excessive_precision)]
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The preprocessing of a model folder (`preprocessor_config.json`), checked against the
/// configuration's image size. Public for training, which reads folders without weights.
pub fn read_preprocessor_spec(folder: &Path, image_size: usize) -> Result<PreprocessSpec> {
    read_preprocessor(folder, image_size)
}

/// The Q-Former tokenizer of a model folder, set up as [`RetrievalFolder::open`] does.
pub fn retrieval_tokenizer(folder: &Path, config: &Blip2Config) -> Result<TextTokenizer> {
    let max_text = DEFAULT_MAX_TEXT_TOKENS.min(config.qformer_config.max_position_embeddings);
    TextTokenizer::new(
        read_tokenizer(folder)?,
        max_text,
        config.qformer_config.pad_token_id as u32,
    )
}

fn read_preprocessor(folder: &Path, image_size: usize) -> Result<PreprocessSpec> {
    const NAME: &str = "preprocessor_config.json";
    let text = read_text(folder, NAME)?;
    let p: PreprocessorConfig =
        serde_json::from_str(&text).map_err(|e| folder_err(folder, format!("{NAME}: {e}")))?;
    let bad = |m: String| Err(folder_err(folder, format!("{NAME}: {m}")));
    let size = match p.size {
        None => image_size as u32,
        Some(SizeField::HeightWidth { height, width }) if height == width => height,
        Some(SizeField::HeightWidth { height, width }) => {
            return bad(format!(
                "size {height}x{width} is not square; BLIP-2 resizes to a square"
            ))
        }
        Some(SizeField::Shortest { shortest_edge }) => shortest_edge,
        Some(SizeField::Square(s)) => s,
    };
    if size as usize != image_size {
        return bad(format!(
            "size {size} differs from vision_config.image_size {image_size} in config.json"
        ));
    }
    if let Some(r) = p.resample {
        if r != 3 {
            return bad(format!(
                "resample {r} is not 3 (bicubic), the only filter quarry implements"
            ));
        }
    }
    if p.do_center_crop == Some(true) {
        return bad("do_center_crop is true; BLIP-2 resizes without cropping".into());
    }
    let spec = PreprocessSpec {
        size,
        mean: p.image_mean.unwrap_or(CLIP_MEAN),
        std: p.image_std.unwrap_or(CLIP_STD),
        rescale_factor: p.rescale_factor.unwrap_or(1.0 / 255.0),
    };
    spec.validate()
        .map_err(|e| folder_err(folder, format!("{NAME}: {e}")))?;
    Ok(spec)
}

fn read_tokenizer(folder: &Path) -> Result<tokenizers::Tokenizer> {
    let json = folder.join("tokenizer.json");
    if json.is_file() {
        return tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| folder_err(folder, format!("tokenizer.json: {e}")));
    }
    let vocab = folder.join("vocab.txt");
    if vocab.is_file() {
        return TextTokenizer::from_vocab(&vocab)
            .map_err(|e| folder_err(folder, format!("vocab.txt: {e}")));
    }
    Err(folder_err(
        folder,
        "has neither tokenizer.json nor vocab.txt".into(),
    ))
}

/// One memory-mapped safetensors file and its parsed header.
#[derive(Debug)]
struct MappedFile {
    name: String,
    mmap: Mmap,
    data_start: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl MappedFile {
    /// The byte range of a tensor in the mapping, and the bytes; an error if the header points
    /// past the end of the file.
    fn tensor_bytes(
        &self,
        folder: &Path,
        name: &str,
        info: &safetensors::tensor::TensorInfo,
    ) -> Result<(std::ops::Range<usize>, &[u8])> {
        let (begin, end) = info.data_offsets;
        let range = self.data_start + begin..self.data_start + end;
        let bytes = self.mmap.get(range.clone()).ok_or_else(|| {
            folder_err(
                folder,
                format!(
                    "{}: tensor `{name}` lies beyond the end of the file",
                    self.name
                ),
            )
        })?;
        Ok((range, bytes))
    }

    fn open(folder: &Path, name: &str) -> Result<Self> {
        let path = folder.join(name);
        let file = File::open(&path)
            .map_err(|e| folder_err(folder, format!("{name} cannot be opened: {e}")))?;
        // SAFETY: the mapping is read-only and private to this process. A file truncated or
        // rewritten by another program while quarry runs is outside what any mmap-based loader
        // can defend against; the model folder is treated as immutable, as the hub cache is.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| folder_err(folder, format!("{name} cannot be mapped: {e}")))?;
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
                folder_err(
                    folder,
                    format!("{name} is not a valid safetensors file: {e:?}"),
                )
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            name: name.to_string(),
            mmap,
            data_start: 8 + header_len,
            tensors,
        })
    }
}

/// The weight files of a folder and which file holds which tensor.
#[derive(Debug)]
struct TensorFiles {
    folder: PathBuf,
    files: Vec<MappedFile>,
    location: HashMap<String, usize>,
}

/// `model.safetensors.index.json`.
#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl TensorFiles {
    /// Builds a model from these tensors; a typed loading error (missing tensor, wrong shape)
    /// takes precedence over candle's message.
    fn build<T>(&self, device: &Device, f: impl FnOnce(VarBuilder) -> Result<T>) -> Result<T> {
        let backend = TensorBackend {
            files: self,
            first_error: Mutex::new(None),
        };
        let vb = VarBuilder::from_backend(Box::new(&backend), DType::F32, device.clone());
        let built = f(vb);
        let recorded = backend
            .first_error
            .lock()
            .map(|mut e| e.take())
            .unwrap_or(None);
        match (built, recorded) {
            (Ok(model), _) => Ok(model),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e),
        }
    }

    /// xxh3 over the names, dtypes, shapes and bytes of the ViT trunk tensors, in name order.
    fn vision_trunk_fingerprint(&self) -> Result<u64> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let hashed = self.hash_tensors(&mut hasher, |n| {
            n.starts_with("vision_model.") && !n.starts_with("vision_model.post_layernorm")
        })?;
        if hashed == 0 {
            return Err(folder_err(
                &self.folder,
                "has no vision_model.* tensors".into(),
            ));
        }
        Ok(hasher.digest())
    }

    /// Feeds the names, dtypes, shapes and bytes of the selected tensors, in name order, to
    /// `hasher`, releasing each tensor's pages after reading them; returns how many.
    fn hash_tensors(
        &self,
        hasher: &mut xxhash_rust::xxh3::Xxh3,
        include: impl Fn(&str) -> bool,
    ) -> Result<usize> {
        let mut names: Vec<&String> = self.location.keys().filter(|n| include(n)).collect();
        names.sort();
        let count = names.len();
        for name in names {
            let file = &self.files[self.location[name]];
            let info = &file.tensors[name];
            hasher.update(name.as_bytes());
            hasher.update(format!("{:?}{:?}", info.dtype, info.shape).as_bytes());
            let (range, bytes) = file.tensor_bytes(&self.folder, name, info)?;
            hasher.update(bytes);
            release_pages(&file.mmap, range.start, range.len());
        }
        Ok(count)
    }

    /// A 128-bit fingerprint of every tensor plus `extra` (configuration that changes outputs).
    fn weights_fingerprint(&self, extra: &[&[u8]]) -> Result<u128> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for part in extra {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        self.hash_tensors(&mut hasher, |_| true)?;
        Ok(hasher.digest128())
    }

    fn open(folder: &Path) -> Result<Self> {
        const SINGLE: &str = "model.safetensors";
        const INDEX: &str = "model.safetensors.index.json";
        let mut files = Vec::new();
        let mut location = HashMap::new();
        if folder.join(SINGLE).is_file() {
            let f = MappedFile::open(folder, SINGLE)?;
            location.extend(f.tensors.keys().map(|k| (k.clone(), 0)));
            files.push(f);
        } else if folder.join(INDEX).is_file() {
            let index: ShardIndex = serde_json::from_str(&read_text(folder, INDEX)?)
                .map_err(|e| folder_err(folder, format!("{INDEX}: {e}")))?;
            let mut shard_names: Vec<&String> = index.weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            for name in shard_names {
                if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                    return Err(folder_err(
                        folder,
                        format!("{INDEX} names a shard outside the folder: {name}"),
                    ));
                }
                files.push(MappedFile::open(folder, name)?);
            }
            for (tensor, shard) in &index.weight_map {
                let i = files
                    .iter()
                    .position(|f| &f.name == shard)
                    .expect("opened above");
                if !files[i].tensors.contains_key(tensor) {
                    return Err(folder_err(
                        folder,
                        format!("{INDEX} places tensor `{tensor}` in {shard}, which does not contain it"),
                    ));
                }
                location.insert(tensor.clone(), i);
            }
        } else if folder.join("pytorch_model.bin").is_file() {
            return Err(folder_err(
                folder,
                "has only pytorch_model.bin; quarry reads safetensors (download model.safetensors \
                 from the same hub repository)"
                    .into(),
            ));
        } else {
            return Err(folder_err(
                folder,
                format!("has neither {SINGLE} nor {INDEX}"),
            ));
        }
        Ok(Self {
            folder: folder.to_path_buf(),
            files,
            location,
        })
    }

    /// Copies one tensor out of its mapping into `dtype` on `device`, then drops the mapped
    /// pages.
    fn load(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let missing = || Error::MissingTensor {
            folder: self.folder.clone(),
            tensor: name.to_string(),
        };
        let file = &self.files[*self.location.get(name).ok_or_else(missing)?];
        let info = file.tensors.get(name).ok_or_else(missing)?;
        if let Some(expected) = expected {
            if expected.dims() != info.shape.as_slice() {
                return Err(Error::TensorShape {
                    folder: self.folder.clone(),
                    file: file.name.clone(),
                    tensor: name.to_string(),
                    expected: expected.dims().to_vec(),
                    found: info.shape.clone(),
                });
            }
        }
        let stored = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => {
                return Err(folder_err(
                    &self.folder,
                    format!(
                        "{}: tensor `{name}` has dtype {other:?}; expected a float type",
                        file.name
                    ),
                ))
            }
        };
        let (range, bytes) = file.tensor_bytes(&self.folder, name, info)?;
        let tensor = Tensor::from_raw_buffer(bytes, stored, &info.shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?;
        release_pages(&file.mmap, range.start, range.len());
        Ok(tensor)
    }
}

/// Drops the resident pages of a mapped range once its bytes have been copied or hashed.
fn release_pages(mmap: &Mmap, offset: usize, len: usize) {
    // SAFETY: callers have finished reading this range and keep no reference into it;
    // DONTNEED on a read-only file mapping only drops resident pages, which the kernel reads
    // from the file again should they be touched later.
    unsafe {
        let _ = mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
}

/// The `VarBuilder` backend over [`TensorFiles`]. candle's error type cannot carry ours, so
/// the first typed error is kept aside and returned by [`RetrievalFolder::load`].
struct TensorBackend<'a> {
    files: &'a TensorFiles,
    first_error: Mutex<Option<Error>>,
}

impl TensorBackend<'_> {
    fn record(&self, e: Error) -> candle_core::Error {
        let message = e.to_string();
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert(e);
        }
        candle_core::Error::Msg(message)
    }
}

impl SimpleBackend for &TensorBackend<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.files
            .load(name, Some(&s), dtype, dev)
            .map_err(|e| self.record(e))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.files
            .load(name, None, dtype, dev)
            .map_err(|e| self.record(e))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.location.contains_key(name)
    }
}
