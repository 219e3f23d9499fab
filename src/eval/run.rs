//! The evaluation run: texts → ITC text vectors; images → ITC image vectors and cached ViT
//! features; the ITC matrix and its metrics; then the ITM re-scoring, streamed image by image
//! from the cache, and its metrics.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use super::cache::{CachePrecision, EntryShape, FeatureCache, ImageKey};
use super::caption::{pre_caption, LAVIS_MAX_WORDS};
use super::metrics::RecallMetrics;
use super::protocol::{ItcMatrix, ItmMatrices, ItmPlan};
use super::{Annotations, EvalError};
use crate::checkpoint::{LoadOptions, RetrievalFolder};
use crate::indexer::{preprocess_file, DecodeLimits};
use crate::itm_fusion::{self, FusionFit, ItmFusion};
use crate::tokenize::batch_from_ids;
use crate::Retriever;

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Candidates re-scored by ITM per image and per text (LAVIS: 128).
    pub k_test: usize,
    /// Stop after ITC (no ITM re-scoring).
    pub itc_only: bool,
    /// Images per ViT batch.
    pub image_batch: usize,
    /// Texts per text-encoder batch (LAVIS: 256).
    pub text_batch: usize,
    /// Texts per ITM batch (all against one image's cached keys/values).
    pub itm_batch: usize,
    /// `pre_caption`'s word limit (LAVIS: 50).
    pub max_words: usize,
    /// Where the embedding cache lives.
    pub cache_root: PathBuf,
    /// Precision the ViT features are cached (and so used by ITC and ITM) in.
    pub cache_precision: CachePrecision,
    /// How re-ranking weighs ITM against ITC; `None`: the model folder's
    /// ([`RetrievalFolder::fusion`], LAVIS's sum unless the folder says otherwise).
    pub fusion: Option<ItmFusion>,
    /// Also measure every weight of [`crate::itm_fusion::FIT_GRID`] and pick the best.
    pub fit_fusion: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            k_test: 128,
            itc_only: false,
            image_batch: 8,
            text_batch: 256,
            itm_batch: 32,
            max_words: LAVIS_MAX_WORDS,
            cache_root: super::default_cache_root(),
            cache_precision: CachePrecision::F16,
            fusion: None,
            fit_fusion: false,
        }
    }
}

impl EvalSettings {
    fn validate(&self) -> Result<(), EvalError> {
        for (name, v) in [
            ("k_test", self.k_test),
            ("image batch", self.image_batch),
            ("text batch", self.text_batch),
            ("ITM batch", self.itm_batch),
            ("max words", self.max_words),
        ] {
            if v == 0 {
                return Err(EvalError::Setting(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// The stages a progress display is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Hashing image files and looking them up in the cache.
    Hashing,
    /// Text vectors.
    Texts,
    /// ViT + image vectors (cache misses only; hits are counted at once).
    Images,
    /// ITM re-scoring, counted in pairs.
    Itm,
}

/// Receives progress; the library never prints.
pub trait EvalProgress {
    /// A stage starts with `total` units of work.
    fn stage(&mut self, stage: Stage, total: u64);
    /// `n` more units are done.
    fn advance(&mut self, n: u64);
    /// The current stage is finished.
    fn finish(&mut self);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl EvalProgress for NoProgress {
    fn stage(&mut self, _: Stage, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Precisions the numbers were computed in.
#[derive(Debug, Clone, Serialize)]
pub struct Precision {
    /// The ViT.
    pub vision: &'static str,
    /// The Q-Former and heads (always f32).
    pub qformer: &'static str,
    /// The ViT features as ITC and ITM see them (the cache precision).
    pub features: &'static str,
}

/// Wall-clock seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Up to the ITC-only metrics (texts, images, ITC matrix).
    pub itc: f64,
    /// Up to the ITC+ITM metrics (everything), when ITM ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itc_itm: Option<f64>,
}

/// Cache use of a run.
#[derive(Debug, Clone, Serialize)]
pub struct CacheUse {
    /// The cache folder of this model configuration.
    pub dir: PathBuf,
    /// Images found in the cache.
    pub hits: usize,
    /// Images run through the ViT and stored.
    pub misses: usize,
    /// Whether the text vectors came from the cache.
    pub texts_cached: bool,
}

/// The result of an evaluation: what it measured and how.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// ITC-only metrics (LAVIS's key names, percent).
    pub itc: RecallMetrics,
    /// ITC+ITM metrics, absent with `itc_only`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itm: Option<RecallMetrics>,
    /// The model folder.
    pub checkpoint: PathBuf,
    /// xxh3 fingerprint of the model folder's weights and settings (hex).
    pub checkpoint_fingerprint: String,
    /// Image side in pixels.
    pub image_size: usize,
    /// Candidates per image and per text for ITM.
    pub k_test: usize,
    /// Precisions.
    pub precision: Precision,
    /// Number of images.
    pub images: usize,
    /// Number of captions.
    pub texts: usize,
    /// ITM forward passes quarry ran (each needed pair once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itm_pairs: Option<usize>,
    /// ITM forward passes LAVIS runs for the same matrices (shared pairs twice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lavis_itm_pairs: Option<usize>,
    /// Seconds taken.
    pub seconds: Timings,
    /// Embedding cache use.
    pub cache: CacheUse,
    /// How the `itm` scores weighed ITM against ITC (absent with ITC only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub itm_fusion: Option<FusionReport>,
}

/// How the `itm` scores combined ITM and ITC, and what LAVIS's sum gives when that differs.
#[derive(Debug, Clone, Serialize)]
pub struct FusionReport {
    /// `w` in `w · ITM logit + ITC`.
    pub itm_logit_weight: f32,
    /// Where `w` came from: "lavis" (the folder has none), "model folder" or "settings".
    pub from: &'static str,
    /// LAVIS's `ITM logit + ITC` metrics, when `w` is not 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lavis: Option<RecallMetrics>,
    /// Every weight tried and the best, when a fit was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<FusionFit>,
}

/// A finished evaluation: the report and the score matrices behind it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Metrics and run details.
    pub report: EvalReport,
    /// LAVIS's `sims_matrix`.
    pub itc: ItcMatrix,
    /// LAVIS's `score_matrix_i2t` / `score_matrix_t2i`, when ITM ran.
    pub itm: Option<ItmMatrices>,
}

/// A retrieval model ready to be evaluated.
#[derive(Debug)]
pub struct Evaluator {
    folder: RetrievalFolder,
    model: Retriever,
    vision_dtype: DType,
    fingerprint: u64,
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

impl Evaluator {
    /// Loads the model of an opened folder and fingerprints it (the cache key: the low 64
    /// bits of [`RetrievalFolder::fingerprint`], the fingerprint stores record too).
    pub fn load(folder: RetrievalFolder, options: &LoadOptions) -> Result<Self, EvalError> {
        let fingerprint = folder.fingerprint()? as u64;
        let model = folder.load(options)?;
        Ok(Self {
            folder,
            model,
            vision_dtype: options.vision_dtype,
            fingerprint,
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &Retriever {
        &self.model
    }

    /// Runs LAVIS's protocol on `annotations`, with images under `image_root`.
    pub fn run(
        &self,
        annotations: &Annotations,
        image_root: &Path,
        settings: &EvalSettings,
        progress: &mut dyn EvalProgress,
    ) -> Result<Evaluation, EvalError> {
        settings.validate()?;
        let start = Instant::now();
        let paths = annotations.check_images(image_root)?;
        let config = self.model.config();
        let device = self.model.device();
        let shape = EntryShape {
            queries: config.num_query_tokens,
            embed_dim: config.image_text_hidden_size,
            tokens: config.vision_config.num_tokens(),
            hidden: config.vision_config.hidden_size,
        };
        let cache = FeatureCache::open(
            &settings.cache_root,
            self.fingerprint,
            config.vision_config.image_size,
            self.vision_dtype,
            settings.cache_precision,
            shape,
        )?;

        // Texts: pre_caption, tokens, vectors.
        let captions: Vec<String> = annotations
            .texts
            .iter()
            .map(|t| pre_caption(t, settings.max_words))
            .collect();
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let ids = self.folder.tokenizer.encode(&refs)?;
        let pad_id = config.qformer_config.pad_token_id as u32;
        let (text_embeds, texts_cached) = match cache.read_texts(&ids, shape.embed_dim)? {
            Some(v) => (v, true),
            None => {
                let v = self.embed_texts(&ids, pad_id, settings.text_batch, progress)?;
                cache.write_texts(&ids, shape.embed_dim, &v)?;
                (v, false)
            }
        };

        // Images: content keys, cache lookups, ViT for the misses.
        let keys = self.image_keys(&paths, progress)?;
        let (image_embeds, hits) =
            self.embed_images(&paths, &keys, &cache, settings.image_batch, progress)?;

        let itc = ItcMatrix::compute(
            &image_embeds,
            &text_embeds,
            shape.queries,
            shape.embed_dim,
            device,
        )?;
        let itc_metrics = itc.metrics(&annotations.img2txt, &annotations.txt2img);
        let itc_seconds = start.elapsed().as_secs_f64();

        let (itm, itm_metrics, pairs, lavis_pairs, fusion_report) = if settings.itc_only {
            (None, None, None, None, None)
        } else {
            let plan = ItmPlan::new(&itc, settings.k_test);
            let matrices =
                self.rescore(&plan, &itc, &keys, &cache, &ids, pad_id, settings, progress)?;
            let (fusion, from) = match settings.fusion {
                Some(f) => (f, "settings"),
                None if self.folder.fusion.is_lavis() => (ItmFusion::LAVIS, "lavis"),
                None => (self.folder.fusion, "model folder"),
            };
            let measure =
                |f: ItmFusion| matrices.metrics(f, &annotations.img2txt, &annotations.txt2img);
            let m = measure(fusion);
            let report = FusionReport {
                itm_logit_weight: fusion.itm_logit_weight,
                from,
                lavis: (!fusion.is_lavis()).then(|| measure(ItmFusion::LAVIS)),
                fit: settings.fit_fusion.then(|| itm_fusion::fit(measure)),
            };
            let lavis = plan.lavis_pairs(itc.images, itc.texts, settings.k_test);
            (
                Some(matrices),
                Some(m),
                Some(plan.pairs()),
                Some(lavis),
                Some(report),
            )
        };
        let total = start.elapsed().as_secs_f64();
        let report = EvalReport {
            itc: itc_metrics,
            itm: itm_metrics,
            checkpoint: self.folder.path().to_path_buf(),
            checkpoint_fingerprint: format!("{:016x}", self.fingerprint),
            image_size: config.vision_config.image_size,
            k_test: settings.k_test,
            precision: Precision {
                vision: dtype_name(self.vision_dtype),
                qformer: "f32",
                features: settings.cache_precision.name(),
            },
            images: paths.len(),
            texts: captions.len(),
            itm_pairs: pairs,
            lavis_itm_pairs: lavis_pairs,
            seconds: Timings {
                itc: itc_seconds,
                itc_itm: itm.as_ref().map(|_| total),
            },
            cache: CacheUse {
                dir: cache.dir().to_path_buf(),
                hits,
                misses: paths.len() - hits,
                texts_cached,
            },
            itm_fusion: fusion_report,
        };
        Ok(Evaluation { report, itc, itm })
    }

    /// Text vectors [n, dim], in text order; batches hold texts of similar length so that
    /// little is padded (padding does not change a text's vector).
    fn embed_texts(
        &self,
        ids: &[Vec<u32>],
        pad_id: u32,
        batch: usize,
        progress: &mut dyn EvalProgress,
    ) -> Result<Vec<f32>, EvalError> {
        let dim = self.model.config().image_text_hidden_size;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&t| ids[t].len());
        let mut out = vec![0f32; ids.len() * dim];
        progress.stage(super::Stage::Texts, ids.len() as u64);
        for chunk in order.chunks(batch) {
            let chunk_ids: Vec<Vec<u32>> = chunk.iter().map(|&t| ids[t].clone()).collect();
            let text = batch_from_ids(&chunk_ids, None, pad_id, self.model.device())?;
            let v = self
                .model
                .embed_texts(&text)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (j, &t) in chunk.iter().enumerate() {
                out[t * dim..(t + 1) * dim].copy_from_slice(&v[j * dim..(j + 1) * dim]);
            }
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        Ok(out)
    }

    fn image_keys(
        &self,
        paths: &[PathBuf],
        progress: &mut dyn EvalProgress,
    ) -> Result<Vec<ImageKey>, EvalError> {
        progress.stage(super::Stage::Hashing, paths.len() as u64);
        let mut keys = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(64) {
            let k: Vec<ImageKey> = chunk
                .par_iter()
                .map(|p| ImageKey::of_file(p))
                .collect::<Result<_, _>>()?;
            keys.extend(k);
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        Ok(keys)
    }

    /// ITC image vectors [n, queries, dim] of every image (cache hits read, misses computed
    /// and stored with their ViT features); returns them and the number of hits.
    fn embed_images(
        &self,
        paths: &[PathBuf],
        keys: &[ImageKey],
        cache: &FeatureCache,
        batch: usize,
        progress: &mut dyn EvalProgress,
    ) -> Result<(Vec<f32>, usize), EvalError> {
        let config = self.model.config();
        let qd = config.num_query_tokens * config.image_text_hidden_size;
        let mut embeds = vec![0f32; paths.len() * qd];
        let mut misses = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match cache.read_embeddings(*key)? {
                Some(v) => embeds[i * qd..(i + 1) * qd].copy_from_slice(&v),
                None => misses.push(i),
            }
        }
        let hits = paths.len() - misses.len();
        let spec = &self.folder.preprocess;
        let s = spec.size as usize;
        progress.stage(super::Stage::Images, misses.len() as u64);
        for chunk in misses.chunks(batch) {
            let pixels: Vec<Vec<f32>> = chunk
                .par_iter()
                .map(|&i| preprocess_file(&paths[i], spec, DecodeLimits::default()))
                .collect::<Result<_, _>>()?;
            let pixels =
                Tensor::from_vec(pixels.concat(), (chunk.len(), 3, s, s), self.model.device())?;
            // ITC and ITM both see the features as the cache keeps them.
            let features = cache
                .precision()
                .round(&self.model.image_tokens(&pixels)?)?;
            let vectors = self
                .model
                .image_embeddings(&features)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let features = features.flatten_all()?.to_vec1::<f32>()?;
            let per_image = features.len() / chunk.len();
            for (j, &i) in chunk.iter().enumerate() {
                let v = &vectors[j * qd..(j + 1) * qd];
                embeds[i * qd..(i + 1) * qd].copy_from_slice(v);
                cache.write(keys[i], v, &features[j * per_image..(j + 1) * per_image])?;
            }
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        Ok((embeds, hits))
    }

    /// Runs the ITM plan: per image, its cached features → cross-attention keys/values once →
    /// every planned text in batches.
    #[allow(clippy::too_many_arguments)]
    fn rescore(
        &self,
        plan: &ItmPlan,
        itc: &ItcMatrix,
        keys: &[ImageKey],
        cache: &FeatureCache,
        ids: &[Vec<u32>],
        pad_id: u32,
        settings: &EvalSettings,
        progress: &mut dyn EvalProgress,
    ) -> Result<ItmMatrices, EvalError> {
        let device = self.model.device();
        let mut matrices = ItmMatrices::new(itc.images, itc.texts);
        progress.stage(super::Stage::Itm, plan.pairs() as u64);
        for (i, pairs) in plan.per_image.iter().enumerate() {
            if pairs.is_empty() {
                continue;
            }
            let memory = self
                .model
                .image_memory(&cache.read_features(keys[i], device)?)?;
            let mut pairs = pairs.clone();
            pairs.sort_by_key(|p| ids[p.text as usize].len());
            for chunk in pairs.chunks(settings.itm_batch) {
                let chunk_ids: Vec<Vec<u32>> =
                    chunk.iter().map(|p| ids[p.text as usize].clone()).collect();
                let text = batch_from_ids(&chunk_ids, None, pad_id, device)?;
                let logits = self.model.itm_one_image(&memory, &text)?.logit;
                for (p, logit) in chunk.iter().zip(logits) {
                    matrices.record(i, *p, logit, itc.get(i, p.text as usize));
                }
                progress.advance(chunk.len() as u64);
            }
        }
        progress.finish();
        Ok(matrices)
    }
}
