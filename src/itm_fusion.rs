//! How a re-ranked candidate's score combines its two heads: `w · ITM logit + ITC cosine`.
//!
//! LAVIS (and so the BLIP-2 paper's numbers) adds the two with `w = 1`. A plain sum lets each
//! head count in proportion to how widely its values spread over the candidates, so it only
//! weighs the heads by their merit when the spreads match their merit. For the real
//! checkpoints the ITM head is the better ranker and may lead. The demo model's is not: over
//! ITC's top 16 its logits spread ~13 times wider than the cosines (median range 5.1 against
//! 0.39 on validation scenes) while ranking worse on their own (text → image R@1 61 against
//! ITC's 69), so with `w = 1` ITM decides and recall falls; with `w = 0.1` the two together
//! beat ITC (72), which is what re-ranking is for.
//!
//! The weight is a property of the weights, so a model folder may carry it in
//! [`FUSION_FILE`], fitted on held-out data by `quarry eval --fit-itm-weight`; a folder without
//! one (every Hugging Face checkpoint) uses LAVIS's `w = 1`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::eval::RecallMetrics;

/// The file in a retrieval model folder that holds its ITM weight.
pub const FUSION_FILE: &str = "itm_fusion.json";

/// The weights [`fit`] tries: LAVIS's 1 and the decades around it, 0 (ITC alone) included so a
/// fit can say that ITM adds nothing.
pub const FIT_GRID: [f32; 11] = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];

/// The weight of the ITM logit against the ITC cosine in a re-ranking score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItmFusion {
    /// `w` in `w · ITM logit + ITC cosine`.
    pub itm_logit_weight: f32,
}

impl Default for ItmFusion {
    fn default() -> Self {
        Self::LAVIS
    }
}

/// Why a fusion file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The fusion file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not the expected JSON.
    #[error("{path}: {source} (expected {{\"itm_logit_weight\": W, ...}})")]
    Parse {
        /// The fusion file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The weight is negative or not a number.
    #[error("ITM logit weight {0} must be a finite number ≥ 0")]
    Weight(f32),
    /// A fusion file holds such a weight.
    #[error("{path}: itm_logit_weight {weight} must be a finite number ≥ 0")]
    FileWeight {
        /// The fusion file.
        path: PathBuf,
        /// The weight it holds.
        weight: f32,
    },
}

/// What `quarry eval --fit-itm-weight` writes: the weight and how it was chosen, so a folder's
/// weight can be traced to its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FittedFusion {
    /// The chosen weight (the only field read back).
    pub itm_logit_weight: f32,
    /// What was maximised.
    pub criterion: String,
    /// The annotation file it was fitted on.
    pub fitted_on: String,
    /// Candidates re-scored per image and per text.
    pub k_test: usize,
    /// The criterion at every weight tried.
    pub grid: Vec<FitPoint>,
}

/// One weight of a fit and the recall it gave.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FitPoint {
    /// The weight.
    pub itm_logit_weight: f32,
    /// Mean of the six recalls (LAVIS's `r_mean`), the criterion.
    pub r_mean: f64,
    /// Text → image R@1.
    pub img_r1: f64,
    /// Image → text R@1.
    pub txt_r1: f64,
}

impl ItmFusion {
    /// LAVIS's sum, `ITM logit + ITC`.
    pub const LAVIS: Self = Self {
        itm_logit_weight: 1.0,
    };

    /// A fusion with weight `w`, refused unless finite and ≥ 0.
    pub fn new(itm_logit_weight: f32) -> Result<Self, FusionError> {
        if itm_logit_weight.is_finite() && itm_logit_weight >= 0.0 {
            Ok(Self { itm_logit_weight })
        } else {
            Err(FusionError::Weight(itm_logit_weight))
        }
    }

    /// The re-ranking score of a candidate.
    pub fn score(&self, itm_logit: f32, itc: f32) -> f32 {
        self.itm_logit_weight * itm_logit + itc
    }

    /// Whether this is LAVIS's sum.
    pub fn is_lavis(&self) -> bool {
        *self == Self::LAVIS
    }

    /// The fusion of a model folder: its [`FUSION_FILE`] when there is one, else `None`.
    pub fn read_folder(folder: &Path) -> Result<Option<Self>, FusionError> {
        let path = folder.join(FUSION_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(FusionError::Io { path, source }),
        };
        let read: Self = serde_json::from_str(&text).map_err(|source| FusionError::Parse {
            path: path.clone(),
            source,
        })?;
        Self::new(read.itm_logit_weight)
            .map(Some)
            .map_err(|_| FusionError::FileWeight {
                path,
                weight: read.itm_logit_weight,
            })
    }
}

/// What [`fit`] maximises.
pub const FIT_CRITERION: &str = "r_mean (mean of TR@1/5/10 and IR@1/5/10)";

/// The result of [`fit`]: the best weight and every weight tried.
#[derive(Debug, Clone, Serialize)]
pub struct FusionFit {
    /// The weight with the best `r_mean`.
    pub best: ItmFusion,
    /// Every weight tried.
    pub grid: Vec<FitPoint>,
}

/// The weight of [`FIT_GRID`] whose recall `measure` finds best by `r_mean`; on a tie the one
/// nearest LAVIS's 1 (so a fit moves off LAVIS only for a measured gain).
pub fn fit(mut measure: impl FnMut(ItmFusion) -> RecallMetrics) -> FusionFit {
    let grid: Vec<FitPoint> = FIT_GRID
        .iter()
        .map(|&w| {
            let m = measure(ItmFusion {
                itm_logit_weight: w,
            });
            FitPoint {
                itm_logit_weight: w,
                r_mean: m.r_mean,
                img_r1: m.img_r1,
                txt_r1: m.txt_r1,
            }
        })
        .collect();
    let distance = |p: &FitPoint| p.itm_logit_weight.ln().abs();
    let best = grid
        .iter()
        .max_by(|a, b| {
            a.r_mean
                .total_cmp(&b.r_mean)
                .then(distance(b).total_cmp(&distance(a)))
        })
        .expect("the grid is not empty");
    FusionFit {
        best: ItmFusion {
            itm_logit_weight: best.itm_logit_weight,
        },
        grid,
    }
}

impl FusionFit {
    /// The file that records this fit, made on `fitted_on` with `k_test` candidates.
    pub fn file(&self, fitted_on: String, k_test: usize) -> FittedFusion {
        FittedFusion {
            itm_logit_weight: self.best.itm_logit_weight,
            criterion: FIT_CRITERION.into(),
            fitted_on,
            k_test,
            grid: self.grid.clone(),
        }
    }
}

impl FittedFusion {
    /// Writes the file (pretty JSON), replacing it atomically so a folder never holds half of
    /// one.
    pub fn write(&self, path: &Path) -> Result<(), FusionError> {
        crate::json_file::write_pretty(path, self).map_err(|source| FusionError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(w: f32, r_mean: f64) -> FitPoint {
        FitPoint {
            itm_logit_weight: w,
            r_mean,
            img_r1: 0.0,
            txt_r1: 0.0,
        }
    }

    fn recall(r_mean: f64) -> RecallMetrics {
        RecallMetrics {
            txt_r1: 0.0,
            txt_r5: 0.0,
            txt_r10: 0.0,
            txt_r_mean: 0.0,
            img_r1: 0.0,
            img_r5: 0.0,
            img_r10: 0.0,
            img_r_mean: 0.0,
            r_mean,
        }
    }

    #[test]
    fn the_score_weighs_the_logit_only() {
        let f = ItmFusion::new(0.1).unwrap();
        assert!((f.score(5.0, 0.3) - 0.8).abs() < 1e-6);
        assert_eq!(ItmFusion::LAVIS.score(5.0, 0.3), 5.3);
        assert!(ItmFusion::new(-0.1).is_err());
        assert!(ItmFusion::new(f32::NAN).is_err());
    }

    #[test]
    fn the_fit_takes_the_best_r_mean_and_stays_at_lavis_on_a_tie() {
        let fitted = fit(|f| {
            recall(if (0.05..=0.2).contains(&f.itm_logit_weight) {
                80.0
            } else {
                70.0
            })
        });
        assert_eq!(fitted.grid.len(), FIT_GRID.len());
        // 0.05, 0.1 and 0.2 tie; 0.2 is nearest 1.
        assert_eq!(fitted.best.itm_logit_weight, 0.2);
        assert!(fit(|_| recall(70.0)).best.is_lavis());
    }

    #[test]
    fn a_folder_without_the_file_has_none_and_a_written_fit_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ItmFusion::read_folder(dir.path()).unwrap(), None);
        let fitted = FittedFusion {
            itm_logit_weight: 0.1,
            criterion: "r_mean".into(),
            fitted_on: "val/annotations.json".into(),
            k_test: 16,
            grid: vec![point(0.1, 80.0)],
        };
        fitted.write(&dir.path().join(FUSION_FILE)).unwrap();
        assert_eq!(
            ItmFusion::read_folder(dir.path()).unwrap(),
            Some(ItmFusion::new(0.1).unwrap())
        );
        fs::write(dir.path().join(FUSION_FILE), r#"{"itm_logit_weight": -1}"#).unwrap();
        assert!(matches!(
            ItmFusion::read_folder(dir.path()),
            Err(FusionError::FileWeight { .. })
        ));
        fs::write(dir.path().join(FUSION_FILE), "{").unwrap();
        assert!(matches!(
            ItmFusion::read_folder(dir.path()),
            Err(FusionError::Parse { .. })
        ));
    }
}
