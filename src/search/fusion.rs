//! How the served text → image search combines its signals: ITC, BM25 and ITM.
//!
//! Every score is in ITC's unit, the cosine, so that what each signal may change is visible:
//! - *first stage*: `ITC + β · BM25 / best BM25 of the query`. A word match can lift an image
//!   by at most `β` cosine; an image whose ITC leads by more than `β` stays ahead whatever the
//!   words say. This is a convex combination of normalised scores (Bruch, Gai & Ingber, ACM
//!   TOIS 2023), with ITC left unscaled because its scale is fixed by the model.
//! - *re-ranked*: the top `rerank` first-stage candidates get `+ w · ITM class-1 logit` (the
//!   logit LAVIS adds to ITC; `w = 1` is LAVIS's sum, see [`crate::itm_fusion`]).
//!
//! Equal-weight reciprocal-rank fusion, which quarry served before, throws the score gaps
//! away: with a captioner that writes nearly the same caption for every image, BM25's
//! arbitrary first place counted as much as ITC's confident one and text → image R@1 of the
//! demo fell from 73.8 (ITC alone) to 12.8 %.
//!
//! How much BM25 is worth depends on who wrote the words: a captioner that ignores the image
//! adds noise, human captions nearly decide the answer. So `β` and `w` are fitted on
//! held-out annotated data for one retrieval model *and one caption source* (`quarry
//! eval-search --fit`), and kept in the retrieval model's folder ([`SEARCH_FUSION_FILE`]),
//! one entry per caption source. Without a fit the defaults are safe: `β` =
//! [`UNFITTED_BM25_WEIGHT`] lets words break near-ties only, and `w` is the folder's
//! [`crate::itm_fusion`] weight (LAVIS's 1 without one).
//!
//! The same file holds the ITM head's probability calibration ([`ItmCalibration`], Platt
//! scaling of its log-odds): the relevance cutoff (`min_match`) and the probability users see
//! are calibrated, so "at least 70 %" means about that.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::itm_fusion::ItmFusion;
use crate::store::ModelIdentity;

/// The file in a retrieval model folder that holds its fitted search fusion.
pub const SEARCH_FUSION_FILE: &str = "search_fusion.json";

/// Version of [`SearchFusionFile`]'s layout.
pub const SEARCH_FUSION_VERSION: u32 = 1;

/// `β` without a fit: the most cosine a word match adds. Small enough that only near-ties
/// move (the demo's ITC winner leads the second image by a median of ~0.03), large enough that
/// a file or folder name breaks a tie between images ITC cannot tell apart.
pub const UNFITTED_BM25_WEIGHT: f32 = 0.01;

/// The `β` values a fit tries (cosine units).
pub const BM25_WEIGHT_GRID: [f32; 13] = [
    0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The `w` values a fit tries (per unit of ITM logit).
pub const ITM_WEIGHT_GRID: [f32; 10] = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0];

/// The caption source of a store without captions.
pub const NO_CAPTIONS: &str = "none";

/// Platt scaling of the ITM head: `p = σ(scale · (logit₁ − logit₀) + bias)`. The identity
/// (`scale` 1, `bias` 0) is the head's own softmax.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItmCalibration {
    /// Multiplies the log-odds.
    pub scale: f32,
    /// Added to the scaled log-odds.
    pub bias: f32,
}

impl ItmCalibration {
    /// The head's own probability.
    pub const IDENTITY: Self = Self {
        scale: 1.0,
        bias: 0.0,
    };

    /// The calibrated match probability of a pair with these ITM log-odds.
    pub fn probability(&self, log_odds: f32) -> f32 {
        sigmoid(self.scale * log_odds + self.bias)
    }

    /// Whether this is the head's own probability.
    pub fn is_identity(&self) -> bool {
        *self == Self::IDENTITY
    }
}

impl Default for ItmCalibration {
    fn default() -> Self {
        Self::IDENTITY
    }
}

/// `1 / (1 + e^-x)`, without overflow for large |x|.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// How one search combines its signals (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchFusion {
    /// `β`: cosine added by the query's best BM25 match.
    pub bm25_weight: f32,
    /// `w`: weight of the ITM class-1 logit in a re-ranked score.
    pub itm_logit_weight: f32,
    /// The ITM probability users see and `min_match` cuts on.
    pub calibration: ItmCalibration,
    /// The caption source the weights are for (`none`, `imported`, or a captioner).
    pub caption_source: String,
    /// Whether `β` and `w` come from a fit for this caption source (else the safe defaults).
    pub fitted: bool,
    /// The re-ranking depth the fit chose (the shallowest that recalls as well as deeper
    /// ones); the server's default depth when its `--rerank` is not given.
    pub rerank: Option<usize>,
}

impl SearchFusion {
    /// The unfitted defaults for a caption source, with the ITM weight of `itm`.
    pub fn unfitted(caption_source: impl Into<String>, itm: ItmFusion) -> Self {
        Self {
            bm25_weight: UNFITTED_BM25_WEIGHT,
            itm_logit_weight: itm.itm_logit_weight,
            calibration: ItmCalibration::IDENTITY,
            caption_source: caption_source.into(),
            fitted: false,
            rerank: None,
        }
    }

    /// ITC alone: no words, no ITM in the order.
    pub fn itc_only() -> Self {
        Self {
            bm25_weight: 0.0,
            itm_logit_weight: 0.0,
            calibration: ItmCalibration::IDENTITY,
            caption_source: NO_CAPTIONS.into(),
            fitted: false,
            rerank: None,
        }
    }

    /// First-stage score: `itc + β · bm25_share`, where `bm25_share` is the image's BM25 over
    /// the query's best (0 without a word match).
    pub fn first_stage(&self, itc: f32, bm25_share: f32) -> f32 {
        itc + self.bm25_weight * bm25_share
    }

    /// Re-ranked score: the first-stage score plus `w · ITM logit`.
    pub fn reranked(&self, first_stage: f32, itm_logit: f32) -> f32 {
        first_stage + self.itm_logit_weight * itm_logit
    }

    /// The fusion a store should be searched with: the folder's fit for the store's caption
    /// source when there is one, else the unfitted defaults; the calibration from the folder
    /// either way.
    pub fn for_store(folder: &Path, store: &ModelIdentity) -> Result<Self, FusionFileError> {
        let source = caption_source(store);
        let itm = ItmFusion::read_folder(folder)
            .map_err(FusionFileError::Itm)?
            .unwrap_or_default();
        let mut fusion = Self::unfitted(source.clone(), itm);
        if let Some(file) = SearchFusionFile::read_folder(folder)? {
            if let Some(c) = file.itm_calibration {
                fusion.calibration = c.calibration;
            }
            if let Some(fit) = file.fits.iter().find(|f| f.caption_source == source) {
                fusion.bm25_weight = fit.bm25_weight;
                fusion.itm_logit_weight = fit.itm_logit_weight;
                fusion.fitted = true;
                fusion.rerank = Some(fit.rerank);
            }
        }
        Ok(fusion)
    }
}

/// The caption source of a store: [`NO_CAPTIONS`], or `captioner:<fingerprint>` for the
/// captioner that wrote its captions. Captions of different captioners are worth different
/// amounts to a search, so fits are kept per source.
pub fn caption_source(store: &ModelIdentity) -> String {
    match &store.captioner {
        None => NO_CAPTIONS.into(),
        Some(c) => format!("captioner:{}", c.fingerprint),
    }
}

/// Why a search fusion file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FusionFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a search fusion file of this version.
    #[error("{path}: {reason} (rewrite it with quarry eval-search --fit)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The folder's ITM fusion file is unreadable.
    #[error(transparent)]
    Itm(crate::itm_fusion::FusionError),
}

/// What `quarry eval-search --fit` writes into a retrieval model folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchFusionFile {
    /// [`SEARCH_FUSION_VERSION`].
    pub version: u32,
    /// The ITM calibration, when fitted.
    pub itm_calibration: Option<CalibrationFit>,
    /// One fit per caption source.
    pub fits: Vec<FusionFit>,
}

/// A fitted calibration and what it was fitted on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationFit {
    /// The calibration.
    #[serde(flatten)]
    pub calibration: ItmCalibration,
    /// The annotation file of the fit.
    pub fitted_on: String,
    /// Query–image pairs it was fitted on (the re-ranked candidates of every query).
    pub pairs: usize,
    /// Expected calibration error (10 bins) of the head's own probability on those pairs.
    pub ece_before: f64,
    /// The same after calibration.
    pub ece_after: f64,
}

/// The fitted weights for one caption source, and how they were chosen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusionFit {
    /// See [`caption_source`].
    pub caption_source: String,
    /// `β`.
    pub bm25_weight: f32,
    /// `w`.
    pub itm_logit_weight: f32,
    /// The re-ranking depth chosen.
    pub rerank: usize,
    /// What was maximised.
    pub criterion: String,
    /// The annotation file of the fit.
    pub fitted_on: String,
    /// Queries it was fitted on.
    pub queries: usize,
    /// Text → image R@1 of the chosen weights on the fit's queries.
    pub r1: f64,
    /// The same for ITC alone, for comparison.
    pub itc_r1: f64,
}

impl SearchFusionFile {
    /// An empty file.
    pub fn new() -> Self {
        Self {
            version: SEARCH_FUSION_VERSION,
            itm_calibration: None,
            fits: Vec::new(),
        }
    }

    /// The folder's file, or `None` when it has none.
    pub fn read_folder(folder: &Path) -> Result<Option<Self>, FusionFileError> {
        Self::read(&folder.join(SEARCH_FUSION_FILE))
    }

    /// The file at `path`, or `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, FusionFileError> {
        let path = path.to_path_buf();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(FusionFileError::Io { path, source }),
        };
        let invalid = |reason: String| FusionFileError::Invalid {
            path: path.clone(),
            reason,
        };
        let file: Self = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if file.version != SEARCH_FUSION_VERSION {
            return Err(invalid(format!(
                "version {} (this quarry reads {SEARCH_FUSION_VERSION})",
                file.version
            )));
        }
        let finite = |x: f32| x.is_finite() && x >= 0.0;
        for f in &file.fits {
            if !finite(f.bm25_weight) || !finite(f.itm_logit_weight) {
                return Err(invalid(format!(
                    "the weights for {} must be finite and ≥ 0",
                    f.caption_source
                )));
            }
        }
        if let Some(c) = &file.itm_calibration {
            let c = c.calibration;
            if !(c.scale.is_finite() && c.scale > 0.0 && c.bias.is_finite()) {
                return Err(invalid(
                    "the calibration needs a finite scale > 0 and a finite bias".into(),
                ));
            }
        }
        Ok(Some(file))
    }

    /// Replaces (or adds) the fit of `fit.caption_source`.
    pub fn set_fit(&mut self, fit: FusionFit) {
        self.fits.retain(|f| f.caption_source != fit.caption_source);
        self.fits.push(fit);
        self.fits
            .sort_by(|a, b| a.caption_source.cmp(&b.caption_source));
    }

    /// Writes the file (pretty JSON) atomically.
    pub fn write(&self, path: &Path) -> Result<(), FusionFileError> {
        crate::json_file::write_pretty(path, self).map_err(|source| FusionFileError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Default for SearchFusionFile {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_match_moves_an_image_by_at_most_beta() {
        let f = SearchFusion::unfitted(NO_CAPTIONS, ItmFusion::LAVIS);
        // ITC leads by more than β: the full word match of the second cannot overturn it.
        let winner = f.first_stage(0.50, 0.0);
        let challenger = f.first_stage(0.50 - UNFITTED_BM25_WEIGHT - 1e-4, 1.0);
        assert!(winner > challenger);
        // Within β it breaks the near-tie.
        assert!(f.first_stage(0.495, 1.0) > f.first_stage(0.5, 0.0));
        assert_eq!(f.reranked(0.5, 2.0), 2.5);
        assert_eq!(SearchFusion::itc_only().first_stage(0.3, 1.0), 0.3);
    }

    #[test]
    fn calibration_is_a_sigmoid_of_scaled_log_odds() {
        assert!((ItmCalibration::IDENTITY.probability(0.0) - 0.5).abs() < 1e-7);
        let c = ItmCalibration {
            scale: 0.5,
            bias: -1.0,
        };
        assert!((c.probability(2.0) - 0.5).abs() < 1e-7);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(100.0) <= 1.0);
        assert!((sigmoid(1.0) - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn a_folder_fit_applies_to_its_caption_source_only() {
        use crate::store::{ModelFingerprint, ModelIdentity};
        let dir = tempfile::tempdir().unwrap();
        let fp = |f: &str| ModelFingerprint {
            name: f.into(),
            fingerprint: f.into(),
            embed_dim: 4,
            queries: 2,
            image_size: 8,
        };
        let with = ModelIdentity {
            retrieval: fp("r"),
            captioner: Some(fp("c")),
        };
        let without = ModelIdentity {
            retrieval: fp("r"),
            captioner: None,
        };
        // No file: the safe defaults.
        let none = SearchFusion::for_store(dir.path(), &with).unwrap();
        assert_eq!(none.bm25_weight, UNFITTED_BM25_WEIGHT);
        assert!(!none.fitted && none.calibration.is_identity());
        let mut file = SearchFusionFile::new();
        file.set_fit(FusionFit {
            caption_source: "captioner:c".into(),
            bm25_weight: 0.002,
            itm_logit_weight: 0.05,
            rerank: 16,
            criterion: "r1".into(),
            fitted_on: "val.json".into(),
            queries: 10,
            r1: 80.0,
            itc_r1: 70.0,
        });
        file.itm_calibration = Some(CalibrationFit {
            calibration: ItmCalibration {
                scale: 0.7,
                bias: -0.2,
            },
            fitted_on: "val.json".into(),
            pairs: 100,
            ece_before: 0.2,
            ece_after: 0.05,
        });
        file.write(&dir.path().join(SEARCH_FUSION_FILE)).unwrap();
        let fitted = SearchFusion::for_store(dir.path(), &with).unwrap();
        assert!(fitted.fitted);
        assert_eq!((fitted.bm25_weight, fitted.itm_logit_weight), (0.002, 0.05));
        assert_eq!(fitted.calibration.scale, 0.7);
        // Another caption source: unfitted weights, the same calibration.
        let other = SearchFusion::for_store(dir.path(), &without).unwrap();
        assert!(!other.fitted);
        assert_eq!(other.bm25_weight, UNFITTED_BM25_WEIGHT);
        assert_eq!(other.calibration.scale, 0.7);
        // A bad file is refused by name.
        fs::write(
            dir.path().join(SEARCH_FUSION_FILE),
            r#"{"version": 9, "itm_calibration": null, "fits": []}"#,
        )
        .unwrap();
        let err = SearchFusion::for_store(dir.path(), &with).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }
}
