//! The query path: text → images, image → texts and image → images over a [`Library`], with
//! the scores that explain each ranking. No HTTP here; the server and tests call it directly.
//!
//! Text → image, stage by stage (each timed, see [`Timing`]):
//! 1. *encode*: the text's ITC unit vector (Q-Former text mode, projected).
//! 2. *ann*: the HNSW candidates, scored exactly by the max over each image's query vectors.
//! 3. *bm25*: word hits over captions, file and folder names (images only).
//! 4. *fusion*: every candidate of either list scored `ITC + β · BM25 / best BM25` (see
//!    [`fusion`]: `β` is fitted per model and caption source, and small without a fit, so
//!    that words break near-ties but never overturn a confident ITC winner). Candidates found
//!    by BM25 only also get their exact ITC score so that every hit can be compared.
//! 5. *itm*: the top `rerank` first-stage candidates go through the ITM head with the cached
//!    ViT output of each image (recomputed from the original file when the cache is off or
//!    lacks the image) and are ordered by `first stage + w · ITM logit`; the candidates beyond
//!    `rerank` follow in first-stage order without a match probability.
//!
//! Filters (folder prefix, date range, file type) restrict both candidate lists before their
//! top entries are taken, so a narrow filter still fills `k`. `min_match` drops every hit
//! whose (calibrated) ITM probability is below it, including the hits that were not re-ranked.

// SearchError carries the library and model errors by value; searches return once per request, so the size costs nothing measurable and boxing would only obscure matching.
#![allow(clippy::result_large_err)]

pub mod fusion;
#[cfg(test)]
pub(crate) mod test_store;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use self::fusion::{
    caption_source, ItmCalibration, SearchFusion, SearchFusionFile, SEARCH_FUSION_FILE,
};
use crate::ann::AnnError;
use crate::indexer::{decode_bytes, to_pixels, DecodeLimits, PreprocessError, PreprocessSpec};
use crate::library::{Library, LibraryError};
use crate::model::Retriever;
use crate::store::{ImageRecord, StoreError, TextSource};
use crate::text::{TextIndexError, TextKind};
use crate::tokenize::TextTokenizer;

/// Why a search cannot be answered. `is_user_error` separates the caller's mistakes (4xx in
/// the server) from failures of the store or model.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query has no words.
    #[error("the query is empty: type at least one word")]
    EmptyQuery,
    /// The query is longer than the limit.
    #[error("the query has {chars} characters; at most {max} are accepted")]
    QueryTooLong {
        /// Characters given.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// `k` is outside `1..=max`.
    #[error("k = {k} is out of range: ask for 1 to {max} results")]
    KOutOfRange {
        /// The k asked for.
        k: u64,
        /// The limit.
        max: usize,
    },
    /// A parameter is invalid (named in the message).
    #[error("{0}")]
    BadParameter(String),
    /// No image with this id.
    #[error("no image with id {0} in this store")]
    UnknownImage(u64),
    /// The uploaded bytes are not a decodable image.
    #[error("the uploaded file is not a usable image: {0}")]
    BadImage(PreprocessError),
    /// The library failed.
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// A vector search failed.
    #[error("vector search: {0}")]
    Ann(#[from] AnnError),
    /// The word search failed.
    #[error("word search: {0}")]
    Text(#[from] TextIndexError),
    /// The model failed.
    #[error("model: {0}")]
    Model(#[from] crate::Error),
    /// An indexed image's original file could not be read to recompute its ViT output.
    #[error("cannot recompute image {id}'s features from its file: {source}")]
    Original {
        /// The image.
        id: u64,
        /// Why.
        source: PreprocessError,
    },
}

impl From<StoreError> for SearchError {
    fn from(e: StoreError) -> Self {
        SearchError::Library(LibraryError::Store(e))
    }
}

impl From<candle_core::Error> for SearchError {
    fn from(e: candle_core::Error) -> Self {
        SearchError::Model(crate::Error::Candle(e))
    }
}

impl SearchError {
    /// Whether the caller can fix it by changing the request.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            SearchError::EmptyQuery
                | SearchError::QueryTooLong { .. }
                | SearchError::KOutOfRange { .. }
                | SearchError::BadParameter(_)
                | SearchError::UnknownImage(_)
                | SearchError::BadImage(_)
        )
    }
}

/// Limits and fusion constants, fixed for a server's life.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchSettings {
    /// Most results per request.
    pub max_k: usize,
    /// Longest query, in characters.
    pub max_query_chars: usize,
    /// Most candidates re-ranked with ITM per request.
    pub max_rerank: usize,
    /// Candidates re-ranked with ITM when the request does not say.
    pub rerank_default: usize,
    /// How ITC, BM25 and ITM combine (per model and caption source, see [`SearchFusion`]).
    pub fusion: SearchFusion,
    /// Images per ITM forward pass (bounds memory: each pair holds a ViT output's keys).
    pub itm_batch: usize,
}

impl SearchSettings {
    /// The defaults for a device: re-rank 16 on CPU (about 1 s at ViT-g) and 128 on a GPU;
    /// the unfitted fusion of a store without captions (callers that know the model folder
    /// and the store set [`SearchSettings::fusion`] with [`SearchFusion::for_store`]).
    pub fn for_device(device: &Device) -> Self {
        Self {
            max_k: 200,
            max_query_chars: 1000,
            max_rerank: 512,
            rerank_default: if device.is_cpu() { 16 } else { 128 },
            fusion: SearchFusion::unfitted(
                fusion::NO_CAPTIONS,
                crate::itm_fusion::ItmFusion::LAVIS,
            ),
            itm_batch: if device.is_cpu() { 8 } else { 64 },
        }
    }
}

/// Restrictions on which images may be returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Only images whose path starts with this folder (component-wise).
    pub folder: Option<PathBuf>,
    /// Only images dated at or after this time (seconds since the epoch, see
    /// [`ImageRecord::date_seconds`]).
    pub from_s: Option<i64>,
    /// Only images dated before this time (exclusive).
    pub to_s: Option<i64>,
    /// Only images of this format (`jpeg`, `png`, ...).
    pub format: Option<String>,
}

impl Filters {
    /// Whether no filter is set.
    pub fn is_empty(&self) -> bool {
        self == &Filters::default()
    }

    /// Whether `record` passes every filter.
    pub fn allows(&self, record: &ImageRecord) -> bool {
        if let Some(folder) = &self.folder {
            if !record.path.starts_with(folder) {
                return false;
            }
        }
        let date = record.date_seconds();
        if self.from_s.is_some_and(|from| date < from) || self.to_s.is_some_and(|to| date >= to) {
            return false;
        }
        if let Some(format) = &self.format {
            if !record.format.eq_ignore_ascii_case(format) {
                return false;
            }
        }
        true
    }
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Best first (see the module docs).
    #[default]
    Relevance,
    /// The relevant set (after cutoffs, top `k` by relevance), newest first by
    /// [`ImageRecord::date_seconds`] (capture time, else file modification time); images
    /// with no date at all (neither, recorded as 0) last.
    Date,
}

/// A text → image request.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    /// What the user typed.
    pub text: String,
    /// Results wanted.
    pub k: usize,
    /// Candidates to re-rank with ITM (`None`: the default; 0: ITC + BM25 only).
    pub rerank: Option<usize>,
    /// Drop hits whose ITM match probability is below this (hits without one too).
    pub min_match: Option<f32>,
    /// Restrictions.
    pub filters: Filters,
    /// Order.
    pub sort: SortOrder,
}

impl TextQuery {
    /// A query for `text` with defaults otherwise.
    pub fn new(text: impl Into<String>, k: usize) -> Self {
        Self {
            text: text.into(),
            k,
            rerank: None,
            min_match: None,
            filters: Filters::default(),
            sort: SortOrder::Relevance,
        }
    }
}

/// Why an image ranked where it did (see [`SearchFusion`] for how the scores combine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HitScores {
    /// ITC: max over the image's query vectors of the dot with the text vector.
    pub itc: f32,
    /// Rank in the vector list (1 = best), when the image was a vector candidate.
    pub itc_rank: Option<usize>,
    /// BM25 score, when the words matched.
    pub bm25: Option<f32>,
    /// Rank in the word list (1 = best).
    pub bm25_rank: Option<usize>,
    /// BM25 over the query's best BM25 (0 without a word match).
    pub bm25_share: f32,
    /// First-stage score: `itc + β · bm25_share`.
    pub fused: f32,
    /// ITM match probability (calibrated), when re-ranked.
    pub itm: Option<f32>,
    /// ITM class-1 logit, when re-ranked.
    pub itm_logit: Option<f32>,
    /// What ordered the hit: `fused + w · itm_logit` when re-ranked, else `fused`.
    pub score: f32,
}

/// What the ITM head says of one image–text pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItmOutput {
    /// Class-1 logit (what LAVIS adds to ITC).
    pub logit: f32,
    /// `logit₁ − logit₀`, the log-odds of a match (what calibration scales).
    pub log_odds: f32,
}

impl ItmOutput {
    /// The outputs of a batch, in order.
    pub fn from_scores(scores: crate::model::ItmScores) -> impl Iterator<Item = ItmOutput> {
        scores
            .logit
            .into_iter()
            .zip(scores.log_odds)
            .map(|(logit, log_odds)| ItmOutput { logit, log_odds })
    }
}

/// The candidates of one text query before ordering (see [`Searcher::text_candidates`]).
#[derive(Debug, Clone)]
pub struct Candidates {
    /// Every candidate, in no particular order; only ITC and BM25 scores are set.
    pub hits: Vec<ImageHit>,
    /// Time of the stages so far.
    pub timing: Timing,
}

/// One image found by a text.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageHit {
    /// The image.
    pub record: ImageRecord,
    /// Its scores.
    pub scores: HitScores,
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timing {
    /// Text or image encoding.
    pub encode: f64,
    /// Vector search (and exact ITC of word-only candidates).
    pub ann: f64,
    /// Word search.
    pub bm25: f64,
    /// Fusion, filters and ordering.
    pub fusion: f64,
    /// ITM re-ranking (feature loading or ViT recomputation included).
    pub itm: f64,
    /// The whole request.
    pub total: f64,
}

/// The answer to a [`TextQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageResults {
    /// Best first (or by date when asked).
    pub hits: Vec<ImageHit>,
    /// Candidates that went through ITM.
    pub reranked: usize,
    /// Time per stage.
    pub timing: Timing,
}

/// One text found by an image.
#[derive(Debug, Clone, PartialEq)]
pub struct TextHit {
    /// The text id.
    pub id: u64,
    /// The text.
    pub text: String,
    /// Caption of an image, or added by a user.
    pub source: TextSource,
    /// ITC: max over the image's query vectors of the dot with the text vector.
    pub itc: f32,
    /// ITM match probability (calibrated), when re-ranked.
    pub itm: Option<f32>,
    /// What ordered it: `ITC + w · ITM logit` when re-ranked, else ITC.
    pub score: f32,
}

/// The answer to an image → text request.
#[derive(Debug, Clone, PartialEq)]
pub struct TextResults {
    /// Best first: the re-ranked by their score, ties by ITC; then by ITC.
    pub hits: Vec<TextHit>,
    /// Candidates that went through ITM.
    pub reranked: usize,
    /// Time per stage.
    pub timing: Timing,
}

/// One image found by an image.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarHit {
    /// The image.
    pub record: ImageRecord,
    /// See [`Searcher::similar_images`].
    pub similarity: f32,
}

/// The answer to an image → image request.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarResults {
    /// Most similar first.
    pub hits: Vec<SimilarHit>,
    /// Time per stage.
    pub timing: Timing,
}

/// An image given by the user (uploaded), encoded once for both image searches.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// The ViT output [1, T, W] (ITM memory).
    tokens: Tensor,
    /// The ITC vectors, `Q × D` row-major.
    vectors: Vec<f32>,
    /// Time the encoding took, ms.
    encode_ms: f64,
}

/// The model side of searching: the retrieval model, its tokenizer and preprocessing, and the
/// settings. Cheap to share across threads (`&Searcher`).
#[derive(Debug)]
pub struct Searcher<'m> {
    retriever: &'m Retriever,
    tokenizer: &'m TextTokenizer,
    preprocess: &'m PreprocessSpec,
    settings: SearchSettings,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Max over query vectors × owner vectors of their dot products (`dim` values each).
pub fn max_dot(queries: &[f32], vectors: &[f32], dim: usize) -> f32 {
    let mut best = f32::NEG_INFINITY;
    for q in queries.chunks_exact(dim) {
        for v in vectors.chunks_exact(dim) {
            let d: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
            best = best.max(d);
        }
    }
    best
}

impl<'m> Searcher<'m> {
    /// A searcher over a loaded model.
    pub fn new(
        retriever: &'m Retriever,
        tokenizer: &'m TextTokenizer,
        preprocess: &'m PreprocessSpec,
        settings: SearchSettings,
    ) -> Self {
        Self {
            retriever,
            tokenizer,
            preprocess,
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &SearchSettings {
        &self.settings
    }

    /// Checks `k` against the limit.
    pub fn check_k(&self, k: u64) -> Result<usize, SearchError> {
        if k == 0 || k > self.settings.max_k as u64 {
            return Err(SearchError::KOutOfRange {
                k,
                max: self.settings.max_k,
            });
        }
        Ok(k as usize)
    }

    fn check_text(&self, text: &str) -> Result<(), SearchError> {
        let chars = text.chars().count();
        if chars > self.settings.max_query_chars {
            return Err(SearchError::QueryTooLong {
                chars,
                max: self.settings.max_query_chars,
            });
        }
        if text.trim().is_empty() {
            return Err(SearchError::EmptyQuery);
        }
        Ok(())
    }

    /// The ITC vector of one text.
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, SearchError> {
        let batch = self
            .tokenizer
            .batch(&[text], None, self.retriever.device())?;
        Ok(self
            .retriever
            .embed_texts(&batch)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Decodes and encodes an uploaded image (`name` only appears in errors).
    pub fn encode_image_bytes(
        &self,
        bytes: &[u8],
        name: &str,
    ) -> Result<EncodedImage, SearchError> {
        let started = Instant::now();
        let rgb = decode_bytes(bytes, Path::new(name), DecodeLimits::default())
            .map_err(SearchError::BadImage)?;
        let tokens = self.vit(&to_pixels(&rgb, self.preprocess))?;
        let vectors = self
            .retriever
            .image_embeddings(&tokens)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(EncodedImage {
            tokens,
            vectors,
            encode_ms: ms(started),
        })
    }

    /// An indexed image as an image query: its stored vectors and its ViT output (cached, or
    /// recomputed from its file).
    pub fn encode_indexed(&self, library: &Library, id: u64) -> Result<EncodedImage, SearchError> {
        let started = Instant::now();
        let record = library
            .store()
            .image(id)?
            .ok_or(SearchError::UnknownImage(id))?;
        let vectors = library
            .store()
            .vectors(id)?
            .ok_or(SearchError::UnknownImage(id))?;
        let tokens = self.image_tokens(library, &record)?;
        Ok(EncodedImage {
            tokens,
            vectors,
            encode_ms: ms(started),
        })
    }

    fn vit(&self, pixels: &[f32]) -> Result<Tensor, SearchError> {
        let s = self.preprocess.size as usize;
        let t = Tensor::from_vec(pixels.to_vec(), (1, 3, s, s), self.retriever.device())?;
        Ok(self.retriever.image_tokens(&t)?.to_dtype(DType::F32)?)
    }

    /// The ViT output [1, T, W] of an indexed image: from the feature cache, else recomputed
    /// from its original file.
    pub fn image_tokens(
        &self,
        library: &Library,
        record: &ImageRecord,
    ) -> Result<Tensor, SearchError> {
        let device = self.retriever.device();
        if let Some(f) = library.store().features(record.id)? {
            let data: Vec<f32> = f.data.iter().map(|v| v.to_f32()).collect();
            return Ok(Tensor::from_vec(data, (1, f.tokens, f.width), device)?);
        }
        let rgb = crate::indexer::decode_file(&record.path, DecodeLimits::default()).map_err(
            |source| SearchError::Original {
                id: record.id,
                source,
            },
        )?;
        self.vit(&to_pixels(&rgb, self.preprocess))
    }

    /// The set of images passing `filters`, or `None` when no filter is set.
    fn allowed(
        &self,
        library: &Library,
        filters: &Filters,
    ) -> Result<Option<HashSet<u64>>, SearchError> {
        if filters.is_empty() {
            return Ok(None);
        }
        let mut set = HashSet::new();
        for record in library.store().images() {
            let record = record?;
            if filters.allows(&record) {
                set.insert(record.id);
            }
        }
        Ok(Some(set))
    }

    /// Text → image search (see the module docs): [`Self::text_candidates`], then
    /// [`Self::order`] with this searcher's fusion and the ITM head on the store's images,
    /// then the cutoffs.
    pub fn search_text(
        &self,
        library: &Library,
        query: &TextQuery,
    ) -> Result<ImageResults, SearchError> {
        let started = Instant::now();
        let rerank = self.check_rerank(query)?;
        let Candidates {
            mut hits,
            mut timing,
        } = self.text_candidates(library, query)?;
        let t = Instant::now();
        let reranked = self.order(&mut hits, &self.settings.fusion, rerank, |chunk| {
            self.itm_images(library, &query.text, chunk)
        })?;
        timing.itm = ms(t);
        let t = Instant::now();
        finish(&mut hits, query);
        timing.fusion += ms(t);
        timing.total = ms(started);
        Ok(ImageResults {
            hits,
            reranked,
            timing,
        })
    }

    /// The number of candidates `query` re-ranks, checked against the limits (with
    /// `min_match`).
    pub fn check_rerank(&self, query: &TextQuery) -> Result<usize, SearchError> {
        let rerank = query.rerank.unwrap_or(self.settings.rerank_default);
        if rerank > self.settings.max_rerank {
            return Err(SearchError::BadParameter(format!(
                "rerank = {rerank} is out of range: re-rank 0 to {} candidates",
                self.settings.max_rerank
            )));
        }
        if let Some(m) = query.min_match {
            if !(0.0..=1.0).contains(&m) {
                return Err(SearchError::BadParameter(format!(
                    "min_match = {m} is out of range: give a match probability from 0 to 1"
                )));
            }
        }
        Ok(rerank)
    }

    /// Stages 1–3 of a text query: every image the vector search or the word search found
    /// (after the filters), with its exact ITC, its BM25 score and both ranks, in no order.
    /// Enough candidates are gathered to fill `k` and the re-ranking pool.
    pub fn text_candidates(
        &self,
        library: &Library,
        query: &TextQuery,
    ) -> Result<Candidates, SearchError> {
        self.check_text(&query.text)?;
        let k = self.check_k(query.k as u64)?;
        let rerank = self.check_rerank(query)?;
        let mut timing = Timing::default();

        let t = Instant::now();
        let vector = self.embed_text(&query.text)?;
        timing.encode = ms(t);

        let t = Instant::now();
        let allowed = self.allowed(library, &query.filters)?;
        let pool = candidate_pool(k, rerank);
        let ann = match &allowed {
            None => library.image_index().search(&vector, pool)?,
            Some(set) => library
                .image_index()
                .search_filtered(&vector, pool, |id| set.contains(&id))?,
        };
        timing.ann = ms(t);

        let t = Instant::now();
        let words = library.words();
        let bm25: Vec<(u64, f32)> = match &allowed {
            None => words.search(&query.text, pool, &[TextKind::Image])?,
            // Filter before taking the top: ask for every matching image, keep the allowed.
            Some(_) => words.search(
                &query.text,
                words.num_docs().max(1) as usize,
                &[TextKind::Image],
            )?,
        }
        .into_iter()
        .map(|h| (h.id, h.score))
        .filter(|(id, _)| allowed.as_ref().is_none_or(|s| s.contains(id)))
        .take(pool)
        .collect();
        timing.bm25 = ms(t);

        let t = Instant::now();
        let best_bm25 = bm25.first().map_or(0.0, |b| b.1);
        let mut by_id: HashMap<u64, HitScores> = HashMap::new();
        for (i, h) in ann.iter().enumerate() {
            by_id.entry(h.owner).or_insert(HitScores {
                itc: h.score,
                itc_rank: Some(i + 1),
                ..HitScores::default()
            });
        }
        let dim = library.image_index().dim();
        for (i, &(id, score)) in bm25.iter().enumerate() {
            let scores = match by_id.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    // A word-only candidate gets its exact ITC so every hit can be compared.
                    let Some(v) = library.store().vectors(id)? else {
                        continue; // removed since the indexes were read
                    };
                    e.insert(HitScores {
                        itc: max_dot(&vector, &v, dim),
                        ..HitScores::default()
                    })
                }
            };
            if scores.bm25_rank.is_none() {
                scores.bm25 = Some(score);
                scores.bm25_rank = Some(i + 1);
                scores.bm25_share = if best_bm25 > 0.0 {
                    score / best_bm25
                } else {
                    0.0
                };
            }
        }
        let mut hits = Vec::with_capacity(by_id.len());
        for (id, scores) in by_id {
            let Some(record) = library.store().image(id)? else {
                continue; // removed since the indexes were read
            };
            hits.push(ImageHit { record, scores });
        }
        timing.fusion = ms(t);
        Ok(Candidates { hits, timing })
    }

    /// Stages 4–5: orders `hits` by `fusion`'s first-stage score, then re-scores the first
    /// `rerank` with ITM (`itm` gives the head's outputs for a slice of hits, in order) and
    /// orders those by their re-ranked score. Re-ranked hits come first; ties go to the
    /// higher ITC, then the lower id. Returns how many were re-ranked.
    pub fn order(
        &self,
        hits: &mut [ImageHit],
        fusion: &SearchFusion,
        rerank: usize,
        mut itm: impl FnMut(&[ImageHit]) -> Result<Vec<ItmOutput>, SearchError>,
    ) -> Result<usize, SearchError> {
        for h in hits.iter_mut() {
            let s = &mut h.scores;
            s.fused = fusion.first_stage(s.itc, s.bm25_share);
            s.score = s.fused;
            s.itm = None;
            s.itm_logit = None;
        }
        hits.sort_by(by_score);
        let reranked = rerank.min(hits.len());
        if reranked > 0 {
            let outputs = itm(&hits[..reranked])?;
            for (hit, out) in hits.iter_mut().zip(outputs) {
                let s = &mut hit.scores;
                s.itm = Some(fusion.calibration.probability(out.log_odds));
                s.itm_logit = Some(out.logit);
                s.score = fusion.reranked(s.fused, out.logit);
            }
            hits[..reranked].sort_by(by_score);
        }
        Ok(reranked)
    }

    /// The ITM head's outputs for `text` against each hit's image, in order.
    pub(crate) fn itm_images(
        &self,
        library: &Library,
        text: &str,
        hits: &[ImageHit],
    ) -> Result<Vec<ItmOutput>, SearchError> {
        let mut out = Vec::with_capacity(hits.len());
        for chunk in hits.chunks(self.settings.itm_batch.max(1)) {
            let tokens = chunk
                .iter()
                .map(|h| self.image_tokens(library, &h.record))
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(self.itm_tokens(&tokens, text)?);
        }
        Ok(out)
    }

    /// The ITM head's outputs for `text` against images given by their ViT outputs
    /// (`[1, T, W]` each), in batches of [`SearchSettings::itm_batch`].
    pub fn itm_tokens(&self, tokens: &[Tensor], text: &str) -> Result<Vec<ItmOutput>, SearchError> {
        let device = self.retriever.device();
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(self.settings.itm_batch.max(1)) {
            let batch_tokens = Tensor::cat(chunk, 0)?;
            let texts = vec![text; chunk.len()];
            let batch = self.tokenizer.batch(&texts, None, device)?;
            let memory = self.retriever.image_memory(&batch_tokens)?;
            out.extend(ItmOutput::from_scores(self.retriever.itm(&memory, &batch)?));
        }
        Ok(out)
    }

    /// Image → text: the image's query vectors against the text index (captions and user
    /// texts), the best `rerank` re-ranked by ITM against the image's own ViT output.
    pub fn image_to_text(
        &self,
        library: &Library,
        image: &EncodedImage,
        k: usize,
        rerank: Option<usize>,
    ) -> Result<TextResults, SearchError> {
        let started = Instant::now();
        let k = self.check_k(k as u64)?;
        let rerank = rerank
            .unwrap_or(self.settings.rerank_default)
            .min(self.settings.max_rerank);
        let mut timing = Timing {
            encode: image.encode_ms,
            ..Timing::default()
        };
        let t = Instant::now();
        let found = library
            .text_index()
            .search_set(&image.vectors, k.max(rerank))?;
        timing.ann = ms(t);
        let mut hits = Vec::with_capacity(found.len());
        for h in found {
            if let Some(text) = library.store().text(h.owner)? {
                hits.push(TextHit {
                    id: text.id,
                    text: text.text,
                    source: text.source,
                    itc: h.score,
                    itm: None,
                    score: h.score,
                });
            }
        }
        let t = Instant::now();
        let reranked = rerank.min(hits.len());
        if reranked > 0 {
            let memory = self.retriever.image_memory(&image.tokens)?;
            let mut outputs = Vec::with_capacity(reranked);
            for chunk in hits[..reranked].chunks(self.settings.itm_batch.max(1) * 4) {
                let texts: Vec<&str> = chunk.iter().map(|h| h.text.as_str()).collect();
                let batch = self
                    .tokenizer
                    .batch(&texts, None, self.retriever.device())?;
                outputs.extend(ItmOutput::from_scores(
                    self.retriever.itm_one_image(&memory, &batch)?,
                ));
            }
            let fusion = &self.settings.fusion;
            for (hit, out) in hits.iter_mut().zip(outputs) {
                hit.itm = Some(fusion.calibration.probability(out.log_odds));
                hit.score = fusion.reranked(hit.itc, out.logit);
            }
            hits[..reranked].sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then(b.itc.total_cmp(&a.itc))
                    .then(a.id.cmp(&b.id))
            });
        }
        timing.itm = ms(t);
        hits.truncate(k);
        timing.total = ms(started);
        Ok(TextResults {
            hits,
            reranked,
            timing,
        })
    }

    /// Image → image for an uploaded image. The similarity of two images is the max over
    /// their 32 × 32 pairs of ITC query vectors of the dot product: the same max-sim the ITC
    /// score uses between an image and a text, so "similar" means "some aspect of one image
    /// (one query vector) is represented almost identically in the other". A mean over pairs
    /// would blur the query vectors' specialisation; max keeps it and is what the image index
    /// already answers exactly ([`crate::ann::MultiVectorIndex::search_set`]).
    pub fn similar_to_upload(
        &self,
        library: &Library,
        image: &EncodedImage,
        k: usize,
    ) -> Result<SimilarResults, SearchError> {
        self.similar(library, &image.vectors, None, k, image.encode_ms)
    }

    /// Image → image for an indexed image (itself excluded); see [`Self::similar_to_upload`].
    pub fn similar_images(
        &self,
        library: &Library,
        id: u64,
        k: usize,
    ) -> Result<SimilarResults, SearchError> {
        let t = Instant::now();
        if library.store().image(id)?.is_none() {
            return Err(SearchError::UnknownImage(id));
        }
        let vectors = library
            .store()
            .vectors(id)?
            .ok_or(SearchError::UnknownImage(id))?;
        self.similar(library, &vectors, Some(id), k, ms(t))
    }

    fn similar(
        &self,
        library: &Library,
        vectors: &[f32],
        exclude: Option<u64>,
        k: usize,
        encode_ms: f64,
    ) -> Result<SimilarResults, SearchError> {
        let started = Instant::now();
        let k = self.check_k(k as u64)?;
        let t = Instant::now();
        let found = match exclude {
            None => library.image_index().search_set(vectors, k)?,
            Some(me) => library
                .image_index()
                .search_set_filtered(vectors, k, |id| id != me)?,
        };
        let ann = ms(t);
        let mut hits = Vec::with_capacity(found.len());
        for h in found {
            if let Some(record) = library.store().image(h.owner)? {
                hits.push(SimilarHit {
                    record,
                    similarity: h.score,
                });
            }
        }
        Ok(SimilarResults {
            hits,
            timing: Timing {
                encode: encode_ms,
                ann,
                total: ms(started) + encode_ms,
                ..Timing::default()
            },
        })
    }
}

/// Candidates each list gives a query for `k` results and `rerank` re-ranked: enough to fill
/// `k` after the cutoffs, and the ITM pool.
pub fn candidate_pool(k: usize, rerank: usize) -> usize {
    (k.max(rerank) * 2).max(32)
}

/// Best first: re-ranked (or first-stage) score, then ITC, then the lower id.
fn by_score(a: &ImageHit, b: &ImageHit) -> std::cmp::Ordering {
    b.scores
        .score
        .total_cmp(&a.scores.score)
        .then(b.scores.itc.total_cmp(&a.scores.itc))
        .then(a.record.id.cmp(&b.record.id))
}

/// The cutoffs after ordering: `min_match`, `k`, and the date order when asked.
fn finish(hits: &mut Vec<ImageHit>, query: &TextQuery) {
    if let Some(min) = query.min_match {
        hits.retain(|h| h.scores.itm.is_some_and(|p| p >= min));
    }
    hits.truncate(query.k);
    if query.sort == SortOrder::Date {
        sort_by_date(hits, |h| &h.record);
    }
}

/// Newest first by [`ImageRecord::date_seconds`]; images without any date (0) last; ties by id.
fn sort_by_date<T>(items: &mut [T], record: impl Fn(&T) -> &ImageRecord) {
    items.sort_by(|a, b| {
        let (ra, rb) = (record(a), record(b));
        let (da, db) = (ra.date_seconds(), rb.date_seconds());
        (da == 0)
            .cmp(&(db == 0))
            .then(db.cmp(&da))
            .then(ra.id.cmp(&rb.id))
    });
}
