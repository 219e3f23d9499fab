//! The query path: text → images, image → texts and image → images over a [`Library`], with
//! the scores that explain each ranking. No HTTP here; the server and tests call it directly.
//!
//! Text → image, stage by stage (each timed, see [`Timing`]):
//! 1. *encode*: the text's ITC unit vector (Q-Former text mode, projected).
//! 2. *ann*: the HNSW candidates, scored exactly by the max over each image's query vectors.
//! 3. *bm25*: word hits over captions, file and folder names (images only).
//! 4. *fusion*: weighted reciprocal-rank fusion, `Σ w / (c + rank)` over the two lists, with
//!    ranks from 1 and `c` = [`SearchSettings::rrf_constant`] (60 as in Cormack et al. 2009: it
//!    keeps one list's first place from dominating the other's). Candidates found by BM25 only
//!    also get their exact ITC score so that every hit can be compared.
//! 5. *itm*: the top `rerank` fused candidates go through the ITM head with the cached ViT
//!    output of each image (recomputed from the original file when the cache is off or lacks
//!    the image), then are ordered by match probability, ties by ITC; the candidates beyond
//!    `rerank` follow in fused order without a match probability.
//!
//! Filters (folder prefix, date range, file type) restrict both candidate lists before their
//! top entries are taken, so a narrow filter still fills `k`. `min_match` drops every hit
//! whose ITM probability is below it, including the hits that were not re-ranked.

// SearchError carries the library and model errors by value; searches return once per request, so the size costs nothing measurable and boxing would only obscure matching.
#![allow(clippy::result_large_err)]

mod fusion;
#[cfg(test)]
pub(crate) mod test_store;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use self::fusion::{fuse, FusedCandidate, RankedList};
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
    /// The RRF constant `c` in `w / (c + rank)`.
    pub rrf_constant: f32,
    /// Weight of the ITC (vector) list in the fusion.
    pub itc_weight: f32,
    /// Weight of the BM25 (word) list in the fusion.
    pub bm25_weight: f32,
    /// Images per ITM forward pass (bounds memory: each pair holds a ViT output's keys).
    pub itm_batch: usize,
}

impl SearchSettings {
    /// The defaults for a device: re-rank 16 on CPU (about 1 s at ViT-g) and 128 on a GPU.
    pub fn for_device(device: &Device) -> Self {
        Self {
            max_k: 200,
            max_query_chars: 1000,
            max_rerank: 512,
            rerank_default: if device.is_cpu() { 16 } else { 128 },
            rrf_constant: 60.0,
            itc_weight: 1.0,
            bm25_weight: 1.0,
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

/// Why an image ranked where it did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HitScores {
    /// ITC: max over the image's query vectors of the dot with the text vector.
    pub itc: f32,
    /// Rank in the vector list (1 = best), when the image was a vector candidate.
    pub itc_rank: Option<usize>,
    /// BM25 score, when the words matched.
    pub bm25: Option<f32>,
    /// Rank in the word list (1 = best).
    pub bm25_rank: Option<usize>,
    /// Reciprocal-rank fusion score.
    pub fused: f32,
    /// ITM match probability, when re-ranked.
    pub itm: Option<f32>,
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
    /// ITM match probability, when re-ranked.
    pub itm: Option<f32>,
}

/// The answer to an image → text request.
#[derive(Debug, Clone, PartialEq)]
pub struct TextResults {
    /// Best first: by ITM probability among the re-ranked, ties by ITC; then by ITC.
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

    /// Text → image search (see the module docs).
    pub fn search_text(
        &self,
        library: &Library,
        query: &TextQuery,
    ) -> Result<ImageResults, SearchError> {
        let started = Instant::now();
        self.check_text(&query.text)?;
        let k = self.check_k(query.k as u64)?;
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
        let mut timing = Timing::default();

        let t = Instant::now();
        let vector = self.embed_text(&query.text)?;
        timing.encode = ms(t);

        let t = Instant::now();
        let allowed = self.allowed(library, &query.filters)?;
        // Enough candidates to fill k after the cutoffs, and the ITM pool.
        let pool = (k.max(rerank) * 2).max(32);
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
        let itc_list: Vec<(u64, f32)> = ann.iter().map(|h| (h.owner, h.score)).collect();
        let fused = fuse(
            &[
                RankedList {
                    items: &itc_list,
                    weight: self.settings.itc_weight,
                },
                RankedList {
                    items: &bm25,
                    weight: self.settings.bm25_weight,
                },
            ],
            self.settings.rrf_constant,
        );
        let dim = library.image_index().dim();
        let mut candidates = Vec::with_capacity(fused.len());
        for c in fused {
            let Some(record) = library.store().image(c.id)? else {
                continue; // removed since the indexes were read
            };
            let itc = match c.scores[0] {
                Some(s) => s,
                None => match library.store().vectors(c.id)? {
                    Some(v) => max_dot(&vector, &v, dim),
                    None => continue,
                },
            };
            candidates.push(ImageHit {
                record,
                scores: HitScores {
                    itc,
                    itc_rank: c.ranks[0],
                    bm25: c.scores[1],
                    bm25_rank: c.ranks[1],
                    fused: c.fused,
                    itm: None,
                },
            });
        }
        timing.fusion = ms(t);

        let t = Instant::now();
        let reranked = rerank.min(candidates.len());
        if reranked > 0 {
            let probabilities = self.itm_images(library, &query.text, &candidates[..reranked])?;
            for (hit, p) in candidates.iter_mut().zip(probabilities) {
                hit.scores.itm = Some(p);
            }
            candidates[..reranked].sort_by(|a, b| {
                let (pa, pb) = (a.scores.itm.unwrap_or(0.0), b.scores.itm.unwrap_or(0.0));
                pb.total_cmp(&pa)
                    .then(b.scores.itc.total_cmp(&a.scores.itc))
                    .then(a.record.id.cmp(&b.record.id))
            });
        }
        timing.itm = ms(t);

        let t = Instant::now();
        if let Some(min) = query.min_match {
            candidates.retain(|h| h.scores.itm.is_some_and(|p| p >= min));
        }
        candidates.truncate(k);
        if query.sort == SortOrder::Date {
            sort_by_date(&mut candidates, |h| &h.record);
        }
        timing.fusion += ms(t);
        timing.total = ms(started);
        Ok(ImageResults {
            hits: candidates,
            reranked,
            timing,
        })
    }

    /// ITM match probabilities of `text` against each hit's image, in order.
    fn itm_images(
        &self,
        library: &Library,
        text: &str,
        hits: &[ImageHit],
    ) -> Result<Vec<f32>, SearchError> {
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

    /// ITM match probabilities of `text` against images given by their ViT outputs
    /// (`[1, T, W]` each), in batches of [`SearchSettings::itm_batch`].
    pub fn itm_tokens(&self, tokens: &[Tensor], text: &str) -> Result<Vec<f32>, SearchError> {
        let device = self.retriever.device();
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(self.settings.itm_batch.max(1)) {
            let batch_tokens = Tensor::cat(chunk, 0)?;
            let texts = vec![text; chunk.len()];
            let batch = self.tokenizer.batch(&texts, None, device)?;
            let memory = self.retriever.image_memory(&batch_tokens)?;
            out.extend(self.retriever.itm(&memory, &batch)?.probability);
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
                });
            }
        }
        let t = Instant::now();
        let reranked = rerank.min(hits.len());
        if reranked > 0 {
            let memory = self.retriever.image_memory(&image.tokens)?;
            let mut probabilities = Vec::with_capacity(reranked);
            for chunk in hits[..reranked].chunks(self.settings.itm_batch.max(1) * 4) {
                let texts: Vec<&str> = chunk.iter().map(|h| h.text.as_str()).collect();
                let batch = self
                    .tokenizer
                    .batch(&texts, None, self.retriever.device())?;
                probabilities.extend(self.retriever.itm_one_image(&memory, &batch)?.probability);
            }
            for (hit, p) in hits.iter_mut().zip(probabilities) {
                hit.itm = Some(p);
            }
            hits[..reranked].sort_by(|a, b| {
                b.itm
                    .unwrap_or(0.0)
                    .total_cmp(&a.itm.unwrap_or(0.0))
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
