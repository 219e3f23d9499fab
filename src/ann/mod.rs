//! Approximate nearest-neighbour search over multi-vector owners (hnsw_rs behind one small API).
//!
//! BLIP-2 describes an image by Q unit vectors (32 × 256 for `blip2-itm-vit-g`) and a text by one;
//! the ITC score of an image for a text query is the **max** over the image's vectors of the dot
//! product. One type, [`MultiVectorIndex`], serves every direction:
//!
//! * text → image: [`MultiVectorIndex::search`] with one query vector over an index of images
//!   (Q vectors per owner); score = max over the owner's vectors of `dot(query, v)`.
//! * image → text and image → image: [`MultiVectorIndex::search_set`] with the query image's Q
//!   vectors; score = max over **all** query × owner vector pairs, i.e. the best-matching pair.
//!   For image → text this is exactly BLIP-2's ITC (max over the image's query vectors against
//!   the text vector). For image → image BLIP-2 defines no score; max-pair is the natural
//!   extension: two images score high when some query token of one matches some query token of
//!   the other.
//!
//! How a search works: the HNSW graph (one point per vector, stored as f16) proposes candidate
//! points; they are grouped by owner and every candidate owner is re-scored **exactly** in f32
//! against all of its stored vectors, so every returned score is the true ITC value and the
//! ranking among candidates is exact. The graph is asked for more points until it has proposed
//! at least [`AnnParams::candidate_factor`] × k distinct owners, because one owner's many vectors
//! can fill the whole candidate list.
//!
//! hnsw_rs has no delete: [`MultiVectorIndex::remove`] tombstones an owner (its points are
//! filtered out during graph traversal and its vectors are freed); once tombstoned points pass
//! [`AnnParams::rebuild_tombstone_fraction`] of the graph, [`MultiVectorIndex::needs_rebuild`] says
//! so and [`MultiVectorIndex::compact`] (from the vectors kept here) or
//! [`MultiVectorIndex::rebuild`] (from the store) builds a fresh graph.
//!
//! Persistence ([`MultiVectorIndex::save`] / [`MultiVectorIndex::load`]) writes a complete,
//! checksummed copy into a fresh folder and swaps it in by rename, tagged with the id of the last
//! store batch it contains; the store replays later batches after a load. See `persist.rs`.

/// Dot products (f32 and f16); `pub(crate)` because the model's CPU kernels share the portable one.
pub(crate) mod distance;
mod index;
mod persist;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use index::MultiVectorIndex;

/// Tuning knobs of a [`MultiVectorIndex`]. Persisted in the index manifest; changing a default
/// only affects indexes built afterwards.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnnParams {
    /// HNSW `M`: links per point per layer (layer 0 keeps 2·M). More links: better recall, more
    /// memory (≈ 8 bytes per link plus a 32-byte link record) and slower inserts. At most 256.
    pub m: usize,
    /// Candidate list size while inserting. Higher builds a better graph, more slowly.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to k when k is larger, and doubled until
    /// enough distinct owners are found).
    pub ef_search: usize,
    /// The graph keeps searching until it has proposed this many × k distinct owners (or has
    /// visited every point); all of them are then scored exactly.
    pub candidate_factor: usize,
    /// Fraction of tombstoned points above which [`MultiVectorIndex::needs_rebuild`] is true.
    pub rebuild_tombstone_fraction: f32,
    /// Filtered searches whose filter admits at most this many owners skip the graph and score
    /// those owners exactly (a graph walk is poor at finding a handful of allowed points).
    pub exact_filter_owners: usize,
}

impl Default for AnnParams {
    /// The defaults at which `recall_at_10_against_brute_force` requires Recall@10 ≥ 0.95.
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 100,
            ef_search: 128,
            candidate_factor: 3,
            rebuild_tombstone_fraction: 0.2,
            exact_filter_owners: 2_000,
        }
    }
}

/// One search result: the owner (image or text id) and its exact max-dot score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnnHit {
    /// The id given to [`MultiVectorIndex::insert`].
    pub owner: u64,
    /// max over query × owner vector pairs of the dot product (BLIP-2 ITC for unit vectors).
    pub score: f32,
}

/// Everything that can go wrong in the ANN index.
#[derive(Debug, thiserror::Error)]
pub enum AnnError {
    /// Vectors passed to insert or search have the wrong shape.
    #[error("{what}: {len} values is not a non-empty multiple of the index dimension {dim}")]
    BadShape {
        /// Which argument.
        what: &'static str,
        /// Number of f32 values given.
        len: usize,
        /// The index dimension.
        dim: usize,
    },
    /// A vector contains NaN or infinity (a broken embedding must not poison the graph).
    #[error("{what}: vector values must be finite (owner {owner})")]
    NonFinite {
        /// Which argument.
        what: &'static str,
        /// The owner concerned (0 for queries).
        owner: u64,
    },
    /// Invalid parameters.
    #[error("invalid ANN parameters: {0}")]
    BadParams(String),
    /// Reading or writing the index folder failed.
    #[error("ANN index I/O on {path}: {source}")]
    Io {
        /// File or folder concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The saved index is damaged, incomplete or from another format; rebuild it from the store.
    #[error("ANN index at {path} is unusable ({reason}); rebuild it from the store")]
    Corrupt {
        /// The index folder.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}
