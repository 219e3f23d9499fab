//! The on-disk embedding cache of an evaluation: per image, its ITC vectors and its ViT
//! features; per caption list, the text vectors.
//!
//! Why on disk: the ViT features of COCO's 5 000 test images at 364 px are 5 000 × 677 × 1408
//! values — 19 GB in f32, more than RAM on a typical machine — and ITM needs them again after
//! ITC has chosen the candidates. They are kept here in f16 (9.5 GB; LAVIS runs its ViT in
//! fp16 too) and streamed back one image at a time. A rerun, or a run with another `k_test`,
//! reuses them and skips the ViT, which is almost all of the cost.
//!
//! Layout: `<root>/<model fingerprint>-<size>px-vit-<dtype>-<precision>/<content hash>.qfeat`.
//! An entry is keyed by the image's *content* (xxh3-128 of the file bytes), so renamed or
//! copied images hit, and by everything that changes the features: the model's weights and
//! configuration, the image size, the ViT precision and the stored precision. Entries are
//! written to a temporary name and renamed, so a crash never leaves a half-written entry
//! under a real name; an entry that fails its header or size check is recomputed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::f16;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use super::EvalError;

const MAGIC: &[u8; 8] = b"QRYFEAT1";
const TEXT_MAGIC: &[u8; 8] = b"QRYTEXT1";
const HEADER_LEN: usize = 64;

/// The precision ViT features are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePrecision {
    /// Half precision: half the disk and I/O; what LAVIS's fp16 ViT hands to the Q-Former.
    F16,
    /// Full precision, for bit-for-bit comparisons with an f32 reference.
    F32,
}

impl CachePrecision {
    fn tag(self) -> u32 {
        match self {
            CachePrecision::F16 => 16,
            CachePrecision::F32 => 32,
        }
    }

    fn bytes(self) -> usize {
        match self {
            CachePrecision::F16 => 2,
            CachePrecision::F32 => 4,
        }
    }

    /// Short name (`f16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            CachePrecision::F16 => "f16",
            CachePrecision::F32 => "f32",
        }
    }

    /// Rounds f32 ViT features to this precision and back, so that what is computed now equals
    /// what a later run reads from the cache.
    pub fn round(self, features: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            CachePrecision::F16 => features.to_dtype(DType::F16)?.to_dtype(DType::F32),
            CachePrecision::F32 => features.to_dtype(DType::F32),
        }
    }
}

/// Content hash of an image file: the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey(pub u128);

impl ImageKey {
    /// xxh3-128 of the file's bytes.
    pub fn of_file(path: &Path) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path).map_err(|source| EvalError::ImageRead {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self(xxh3_128(&bytes)))
    }
}

/// Shapes of one cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryShape {
    /// Query vectors per image.
    pub queries: usize,
    /// ITC embedding width.
    pub embed_dim: usize,
    /// ViT tokens per image.
    pub tokens: usize,
    /// ViT hidden size.
    pub hidden: usize,
}

/// A cache directory for one model, image size and precision.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
    precision: CachePrecision,
    model_fingerprint: u64,
    shape: EntryShape,
}

fn cache_io(path: &Path, source: std::io::Error) -> EvalError {
    EvalError::Cache {
        path: path.to_path_buf(),
        source,
    }
}

impl FeatureCache {
    /// Opens (creating) the cache folder under `root` for this model configuration.
    pub fn open(
        root: &Path,
        model_fingerprint: u64,
        image_size: usize,
        vision_dtype: DType,
        precision: CachePrecision,
        shape: EntryShape,
    ) -> Result<Self, EvalError> {
        let dir = root.join(format!(
            "{model_fingerprint:016x}-{image_size}px-vit-{}-{}",
            vision_dtype.as_str(),
            precision.name()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| cache_io(&dir, e))?;
        Ok(Self {
            dir,
            precision,
            model_fingerprint,
            shape,
        })
    }

    /// The folder entries are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored precision of ViT features.
    pub fn precision(&self) -> CachePrecision {
        self.precision
    }

    fn entry_path(&self, key: ImageKey) -> PathBuf {
        self.dir.join(format!("{:032x}.qfeat", key.0))
    }

    fn header(&self, key: ImageKey) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        let s = &self.shape;
        for (i, v) in [
            self.precision.tag(),
            s.queries as u32,
            s.embed_dim as u32,
            s.tokens as u32,
            s.hidden as u32,
        ]
        .iter()
        .enumerate()
        {
            h[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        h[28..36].copy_from_slice(&self.model_fingerprint.to_le_bytes());
        h[36..52].copy_from_slice(&key.0.to_le_bytes());
        h
    }

    fn entry_len(&self) -> u64 {
        let s = &self.shape;
        (HEADER_LEN + 4 * s.queries * s.embed_dim + self.precision.bytes() * s.tokens * s.hidden)
            as u64
    }

    /// Opens a valid entry positioned after its header, or `None` when it is absent or does
    /// not match (wrong header or size: a stale or damaged entry, recomputed by the caller).
    fn open_entry(&self, key: ImageKey) -> Result<Option<File>, EvalError> {
        let path = self.entry_path(key);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_io(&path, e)),
        };
        let len = file.metadata().map_err(|e| cache_io(&path, e))?.len();
        let mut header = [0u8; HEADER_LEN];
        if len != self.entry_len() || file.read_exact(&mut header).is_err() {
            return Ok(None);
        }
        Ok((header == self.header(key)).then_some(file))
    }

    /// The ITC vectors ([queries × embed_dim], row-major) of a cached image, if present.
    pub fn read_embeddings(&self, key: ImageKey) -> Result<Option<Vec<f32>>, EvalError> {
        let Some(mut file) = self.open_entry(key)? else {
            return Ok(None);
        };
        let n = self.shape.queries * self.shape.embed_dim;
        let mut bytes = vec![0u8; 4 * n];
        file.read_exact(&mut bytes)
            .map_err(|e| cache_io(&self.entry_path(key), e))?;
        Ok(Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    /// The ViT features of a cached image as an f32 tensor [1, tokens, hidden] on `device`.
    pub fn read_features(&self, key: ImageKey, device: &Device) -> Result<Tensor, EvalError> {
        let path = self.entry_path(key);
        let Some(mut file) = self.open_entry(key)? else {
            return Err(EvalError::CacheEntry {
                path,
                reason: "missing or damaged after it was written in this run".into(),
            });
        };
        let s = &self.shape;
        let skip = (HEADER_LEN + 4 * s.queries * s.embed_dim) as u64;
        file.seek(SeekFrom::Start(skip))
            .map_err(|e| cache_io(&path, e))?;
        let n = s.tokens * s.hidden;
        let mut bytes = vec![0u8; self.precision.bytes() * n];
        file.read_exact(&mut bytes)
            .map_err(|e| cache_io(&path, e))?;
        let shape = (1, s.tokens, s.hidden);
        let tensor = match self.precision {
            CachePrecision::F16 => {
                let v: Vec<f16> = bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Tensor::from_vec(v, shape, device)?.to_dtype(DType::F32)?
            }
            CachePrecision::F32 => {
                let v: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
        };
        Ok(tensor)
    }

    /// Stores one image: ITC vectors [queries, embed_dim] and ViT features [tokens, hidden]
    /// (f32 values, already rounded with [`CachePrecision::round`]).
    pub fn write(
        &self,
        key: ImageKey,
        embeddings: &[f32],
        features: &[f32],
    ) -> Result<(), EvalError> {
        let s = &self.shape;
        let path = self.entry_path(key);
        if embeddings.len() != s.queries * s.embed_dim || features.len() != s.tokens * s.hidden {
            return Err(EvalError::CacheEntry {
                path,
                reason: format!(
                    "got {} embedding and {} feature values for shape {s:?}",
                    embeddings.len(),
                    features.len()
                ),
            });
        }
        let mut buf = Vec::with_capacity(self.entry_len() as usize);
        buf.extend_from_slice(&self.header(key));
        for v in embeddings {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        match self.precision {
            CachePrecision::F16 => {
                for v in features {
                    buf.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            CachePrecision::F32 => {
                for v in features {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        write_atomically(&path, &buf)
    }

    /// Cached text vectors [n, dim] for exactly these token id lists, if present.
    pub fn read_texts(&self, ids: &[Vec<u32>], dim: usize) -> Result<Option<Vec<f32>>, EvalError> {
        let path = self.text_path(ids);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_io(&path, e)),
        };
        let expected = 16 + 4 * ids.len() * dim;
        if bytes.len() != expected
            || &bytes[..8] != TEXT_MAGIC
            || bytes[8..12] != (ids.len() as u32).to_le_bytes()
            || bytes[12..16] != (dim as u32).to_le_bytes()
        {
            return Ok(None);
        }
        Ok(Some(
            bytes[16..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    /// Stores text vectors [n, dim] for these token id lists.
    pub fn write_texts(
        &self,
        ids: &[Vec<u32>],
        dim: usize,
        vectors: &[f32],
    ) -> Result<(), EvalError> {
        let mut buf = Vec::with_capacity(16 + 4 * vectors.len());
        buf.extend_from_slice(TEXT_MAGIC);
        buf.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(dim as u32).to_le_bytes());
        for v in vectors {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        write_atomically(&self.text_path(ids), &buf)
    }

    fn text_path(&self, ids: &[Vec<u32>]) -> PathBuf {
        let mut h = Xxh3::new();
        for t in ids {
            h.update(&(t.len() as u32).to_le_bytes());
            for id in t {
                h.update(&id.to_le_bytes());
            }
        }
        self.dir.join(format!("texts-{:032x}.qtext", h.digest128()))
    }
}

/// Writes to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        cache_io(path, e)
    })
}

/// The default cache root: `eval` in quarry's cache folder ([`crate::cache_dir::cache_dir`]:
/// `$QUARRY_CACHE_DIR`, `$XDG_CACHE_HOME/quarry`, `~/.cache/quarry` or the temporary folder).
pub fn default_cache_root() -> PathBuf {
    crate::cache_dir::cache_dir().join("eval")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> EntryShape {
        EntryShape {
            queries: 2,
            embed_dim: 3,
            tokens: 4,
            hidden: 5,
        }
    }

    #[test]
    fn entries_round_trip_and_damaged_ones_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        for precision in [CachePrecision::F16, CachePrecision::F32] {
            let cache =
                FeatureCache::open(dir.path(), 7, 56, DType::F32, precision, shape()).unwrap();
            let key = ImageKey(42);
            assert!(cache.read_embeddings(key).unwrap().is_none());
            let emb: Vec<f32> = (0..6).map(|i| i as f32 * 0.25).collect();
            let feat: Vec<f32> = (0..20).map(|i| i as f32 * 0.5 - 3.0).collect();
            cache.write(key, &emb, &feat).unwrap();
            assert_eq!(cache.read_embeddings(key).unwrap().unwrap(), emb);
            let back = cache.read_features(key, &Device::Cpu).unwrap();
            assert_eq!(back.dims(), &[1, 4, 5]);
            // These values are exact in f16 too.
            assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), feat);
            // Truncate the entry: it must read as absent, not as garbage.
            let path = cache.entry_path(key);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            assert!(cache.read_embeddings(key).unwrap().is_none());
            assert!(cache.read_features(key, &Device::Cpu).is_err());
        }
    }

    #[test]
    fn a_different_model_uses_a_different_folder() {
        let dir = tempfile::tempdir().unwrap();
        let a = FeatureCache::open(dir.path(), 1, 56, DType::F32, CachePrecision::F16, shape())
            .unwrap();
        let b = FeatureCache::open(dir.path(), 2, 56, DType::F32, CachePrecision::F16, shape())
            .unwrap();
        assert_ne!(a.dir(), b.dir());
        a.write(ImageKey(1), &[0.0; 6], &[0.0; 20]).unwrap();
        assert!(b.read_embeddings(ImageKey(1)).unwrap().is_none());
    }

    #[test]
    fn text_vectors_are_keyed_by_their_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::open(dir.path(), 1, 56, DType::F32, CachePrecision::F16, shape())
            .unwrap();
        let ids = vec![vec![101, 7, 102], vec![101, 102]];
        cache.write_texts(&ids, 2, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(
            cache.read_texts(&ids, 2).unwrap().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert!(cache
            .read_texts(&[vec![101, 8, 102], vec![101, 102]], 2)
            .unwrap()
            .is_none());
    }
}
