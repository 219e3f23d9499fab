//! The search as users get it: every caption of an annotation file sent through the same
//! query path and settings the server uses ([`Searcher::search_text`]), and where the right
//! image lands.
//!
//! `quarry eval` measures the model (LAVIS's protocol over a score matrix); this measures the
//! product. They differ in everything around the model: the ANN candidates, the word search
//! over captions and file names, the fusion, the re-ranking depth and the cutoffs. The first
//! version of quarry served R@1 12.8 % on the demo where the model alone gave 73.8 %, and
//! nothing had measured it.
//!
//! Besides the served order, the same candidates are ordered as ITC alone, BM25 alone, the
//! first stage without ITM, and with each re-ranking depth asked for, so a report says what
//! each signal is worth; the served row itself always comes from the real
//! [`Searcher::search_text`]. With `fit`, the fusion weights and the ITM calibration are
//! chosen here ([`fit_fusion`], [`fit_calibration`]) on validation data.

// SearchError carries the library and model errors by value, as in the search module: the
// evaluation returns once per query, so the size costs nothing measurable.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Annotations, EvalError};
use crate::library::Library;
use crate::search::fusion::{
    CalibrationFit, FusionFit, ItmCalibration, BM25_WEIGHT_GRID, ITM_WEIGHT_GRID,
};
use crate::search::{
    candidate_pool, ImageHit, ItmOutput, SearchError, SearchFusion, Searcher, TextQuery,
};

/// Results per query: enough for R@10.
const K: usize = 10;

/// The relevance cutoffs README reports precision and recall for.
pub const CUTOFFS: [f32; 3] = [0.5, 0.7, 0.9];

/// What the fit maximises.
pub const FIT_CRITERION: &str =
    "text→image R@1 of the served order; ties: mean R@1/5/10, then the smaller weights";

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServedEvalOptions {
    /// The folder the annotation paths are relative to.
    pub image_root: PathBuf,
    /// Re-ranking depths to report beside the served default.
    pub rerank_depths: Vec<usize>,
    /// Fit the fusion and the calibration (validation data only).
    pub fit: bool,
}

/// Recall@1/5/10 in percent over some queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recall {
    /// R@1.
    pub r1: f64,
    /// R@5.
    pub r5: f64,
    /// R@10.
    pub r10: f64,
    /// Queries counted.
    pub queries: usize,
}

impl Recall {
    /// From each query's 1-based rank of its answer (`None`: not among the results).
    pub fn from_ranks(ranks: &[Option<usize>]) -> Self {
        let at = |k: usize| {
            if ranks.is_empty() {
                return 0.0;
            }
            100.0 * ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64
                / ranks.len() as f64
        };
        Self {
            r1: at(1),
            r5: at(5),
            r10: at(10),
            queries: ranks.len(),
        }
    }

    /// Mean of the three.
    pub fn mean(&self) -> f64 {
        (self.r1 + self.r5 + self.r10) / 3.0
    }
}

/// One way of ordering the candidates and its recall.
#[derive(Debug, Clone, Serialize)]
pub struct OrderRecall {
    /// What ordered them.
    pub order: String,
    /// Text → image recall.
    pub recall: Recall,
}

/// Median and 95th percentile of one stage, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    /// The stage (see [`crate::search::Timing`]).
    pub stage: String,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

/// One bin of a reliability curve.
#[derive(Debug, Clone, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge of the predicted probability.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// Pairs in the bin.
    pub pairs: usize,
    /// Mean predicted probability.
    pub mean_probability: f64,
    /// Share of the pairs that are true matches.
    pub match_rate: f64,
}

/// What a `min_match` cutoff buys: among the re-ranked hits of every query.
#[derive(Debug, Clone, Serialize)]
pub struct CutoffQuality {
    /// The cutoff.
    pub min_match: f32,
    /// Share of the hits kept that the query describes (annotated with that caption).
    pub precision: f64,
    /// Share of the queries for which some hit it describes is kept.
    pub recall: f64,
    /// Hits kept per query, on average.
    pub kept_per_query: f64,
}

/// How well the ITM probability users see predicts a true match, over the re-ranked
/// candidates of every query (the pairs `min_match` cuts). A pair is a match when the image is
/// annotated with the query's caption: in a library, a caption is often true of more images
/// than the one it was written for (synthetic scenes repeat: "a red circle in the top"), and a
/// cutoff should keep them all, so calibration against "the one image" alone would push the
/// probabilities down as the library grows.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    /// Pairs measured.
    pub pairs: usize,
    /// True matches among them.
    pub matches: usize,
    /// Expected calibration error over 10 equal-width bins.
    pub ece: f64,
    /// The reliability curve (non-empty bins).
    pub curve: Vec<ReliabilityBin>,
    /// Precision and recall of [`CUTOFFS`].
    pub cutoffs: Vec<CutoffQuality>,
}

/// What a fit chose.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// The fusion weights for the store's caption source.
    pub fusion: FusionFit,
    /// The calibration.
    pub calibration: CalibrationFit,
    /// The calibration report before (head's own probability) and after.
    pub before: CalibrationReport,
    /// After calibration.
    pub after: CalibrationReport,
    /// R@1 at every grid point: `(depth, β, w, R@1, mean R@1/5/10)`.
    pub grid: Vec<(usize, f32, f32, f64, f64)>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ServedReport {
    /// Captions sent as queries (those whose image is in the store).
    pub queries: usize,
    /// Annotated images found in the store.
    pub images_matched: usize,
    /// Annotated images the store lacks (their captions are not sent).
    pub images_missing: usize,
    /// The fusion the server uses on this store.
    pub fusion: SearchFusion,
    /// The served re-ranking depth.
    pub rerank_default: usize,
    /// Text → image recall per order; the first row is the served default.
    pub text_to_image: Vec<OrderRecall>,
    /// Image → text recall through the served image → text path, when the store holds texts
    /// equal to annotation captions.
    pub image_to_text: Option<Recall>,
    /// Per-stage latency of the served text queries.
    pub latency_ms: Vec<StageLatency>,
    /// The calibration of the served ITM probability.
    pub calibration: Option<CalibrationReport>,
    /// The fit, when asked.
    pub fit: Option<FitReport>,
}

/// One query's candidates, with the ITM outputs computed so far (orders share them).
struct QueryData {
    text: String,
    image: u64,
    /// Images whose annotations hold this very caption (its own image among them): the
    /// images it is true of, for calibration. Recall counts only `image`, as LAVIS does.
    relevant: HashSet<u64>,
    hits: Vec<ImageHit>,
    itm: HashMap<u64, ItmOutput>,
}

/// Everything one evaluation needs.
struct Run<'a, 'm> {
    searcher: &'a Searcher<'m>,
    library: &'a Library,
}

impl Run<'_, '_> {
    /// The 1-based rank of the query's image when its candidates are ordered by `fusion`
    /// with `rerank` re-ranked (ITM outputs cached per query).
    fn rank(
        &self,
        q: &mut QueryData,
        fusion: &SearchFusion,
        rerank: usize,
    ) -> Result<Option<usize>, SearchError> {
        let mut hits = q.hits.clone();
        let cache = &mut q.itm;
        let text = q.text.as_str();
        self.searcher.order(&mut hits, fusion, rerank, |chunk| {
            let missing: Vec<ImageHit> = chunk
                .iter()
                .filter(|h| !cache.contains_key(&h.record.id))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let outputs = self.searcher.itm_images(self.library, text, &missing)?;
                for (h, o) in missing.iter().zip(outputs) {
                    cache.insert(h.record.id, o);
                }
            }
            Ok(chunk.iter().map(|h| cache[&h.record.id]).collect())
        })?;
        Ok(hits
            .iter()
            .position(|h| h.record.id == q.image)
            .map(|p| p + 1))
    }

    /// Text → image recall when every query's candidates are ordered by `fusion`.
    fn recall(
        &self,
        queries: &mut [QueryData],
        fusion: &SearchFusion,
        rerank: usize,
    ) -> Result<Recall, EvalError> {
        let mut ranks = Vec::with_capacity(queries.len());
        for q in queries.iter_mut() {
            ranks.push(self.rank(q, fusion, rerank).map_err(search_error)?);
        }
        Ok(Recall::from_ranks(&ranks))
    }

    /// `(ITM log-odds, is the query's image)` of the re-ranked candidates under `fusion`.
    fn reranked_pairs(
        &self,
        queries: &mut [QueryData],
        fusion: &SearchFusion,
        rerank: usize,
    ) -> Result<Vec<Vec<(f32, bool)>>, SearchError> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries.iter_mut() {
            self.rank(q, fusion, rerank)?;
            let mut hits = q.hits.clone();
            let cache = &q.itm;
            self.searcher.order(&mut hits, fusion, rerank, |chunk| {
                Ok(chunk.iter().map(|h| cache[&h.record.id]).collect())
            })?;
            out.push(
                hits.iter()
                    .take(rerank)
                    .map(|h| {
                        (
                            cache[&h.record.id].log_odds,
                            q.relevant.contains(&h.record.id),
                        )
                    })
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// Store ids of the annotated images (by canonical path), `None` where the store lacks one.
fn match_images(
    library: &Library,
    annotations: &Annotations,
    root: &Path,
) -> Result<Vec<Option<u64>>, EvalError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut by_path = HashMap::new();
    for record in library.store().images() {
        let record = record.map_err(|e| EvalError::Search(Box::new(e.into())))?;
        by_path.insert(canonical(&record.path), record.id);
    }
    Ok(annotations
        .images
        .iter()
        .map(|rel| by_path.get(&canonical(&root.join(rel))).copied())
        .collect())
}

fn search_error(e: SearchError) -> EvalError {
    EvalError::Search(Box::new(e))
}

/// Runs the evaluation (see the module docs). `progress(done, total)` after each query.
pub fn evaluate_served(
    searcher: &Searcher<'_>,
    library: &Library,
    annotations: &Annotations,
    options: &ServedEvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ServedReport, EvalError> {
    let ids = match_images(library, annotations, &options.image_root)?;
    let images_matched = ids.iter().filter(|i| i.is_some()).count();
    if images_matched == 0 {
        return Err(EvalError::Setting(format!(
            "none of the {} annotated images is in the store; the annotation paths must be \
             relative to --images ({}) and the images indexed into the store",
            ids.len(),
            options.image_root.display()
        )));
    }
    let settings = searcher.settings();
    let fusion = settings.fusion.clone();
    let default_depth = settings.rerank_default;
    let mut depths: Vec<usize> = options.rerank_depths.clone();
    depths.retain(|&d| d <= settings.max_rerank);
    depths.sort_unstable();
    depths.dedup();

    let run = Run { searcher, library };
    let texts: Vec<(usize, u64)> = annotations
        .txt2img
        .iter()
        .enumerate()
        .filter_map(|(t, &i)| ids[i].map(|id| (t, id)))
        .collect();
    let mut queries = Vec::with_capacity(texts.len());
    let mut served_ranks = Vec::with_capacity(texts.len());
    let mut timings = Vec::with_capacity(texts.len());
    let norm = |s: &str| s.trim().to_lowercase();
    let mut described: HashMap<String, HashSet<u64>> = HashMap::new();
    for &(t, image) in &texts {
        described
            .entry(norm(&annotations.texts[t]))
            .or_default()
            .insert(image);
    }
    for (n, &(t, image)) in texts.iter().enumerate() {
        let text = annotations.texts[t].clone();
        let served = searcher
            .search_text(library, &TextQuery::new(text.clone(), K))
            .map_err(search_error)?;
        served_ranks.push(
            served
                .hits
                .iter()
                .position(|h| h.record.id == image)
                .map(|p| p + 1),
        );
        timings.push(served.timing);
        let mut query = TextQuery::new(text.clone(), K);
        query.rerank = Some(default_depth);
        let hits = searcher
            .text_candidates(library, &query)
            .map_err(search_error)?
            .hits;
        queries.push(QueryData {
            text,
            image,
            relevant: described[&norm(&annotations.texts[t])].clone(),
            hits,
            itm: HashMap::new(),
        });
        progress(n + 1, texts.len());
    }

    let mut rows = vec![OrderRecall {
        order: format!("served default ({})", describe(&fusion, default_depth)),
        recall: Recall::from_ranks(&served_ranks),
    }];
    let bm25_ranks: Vec<Option<usize>> = queries.iter().map(bm25_rank).collect();
    rows.push(OrderRecall {
        order: "ITC alone".into(),
        recall: run.recall(&mut queries, &SearchFusion::itc_only(), 0)?,
    });
    rows.push(OrderRecall {
        order: "BM25 alone".into(),
        recall: Recall::from_ranks(&bm25_ranks),
    });
    rows.push(OrderRecall {
        order: format!("fusion without ITM ({})", describe(&fusion, 0)),
        recall: run.recall(&mut queries, &fusion, 0)?,
    });
    for &d in depths.iter().filter(|&&d| d > 0) {
        let recall = if candidate_pool(K, d) == candidate_pool(K, default_depth) {
            run.recall(&mut queries, &fusion, d)?
        } else {
            // A deeper pool, gathered as the server would for this depth (ITM outputs kept).
            let mut ranks = Vec::with_capacity(queries.len());
            for q in queries.iter_mut() {
                let mut query = TextQuery::new(q.text.clone(), K);
                query.rerank = Some(d);
                let deeper = searcher
                    .text_candidates(library, &query)
                    .map_err(search_error)?
                    .hits;
                let served_pool = std::mem::replace(&mut q.hits, deeper);
                let rank = run.rank(q, &fusion, d);
                q.hits = served_pool;
                ranks.push(rank.map_err(search_error)?);
            }
            Recall::from_ranks(&ranks)
        };
        rows.push(OrderRecall {
            order: format!("re-ranked {d} ({})", describe(&fusion, d)),
            recall,
        });
    }

    let calibration = if default_depth > 0 {
        let pairs = run
            .reranked_pairs(&mut queries, &fusion, default_depth)
            .map_err(search_error)?;
        Some(calibration_report(&pairs, &fusion.calibration))
    } else {
        None
    };

    let fit = if options.fit {
        Some(fit_all(&run, &mut queries, &fusion, settings.max_rerank)?)
    } else {
        None
    };

    let image_to_text = image_to_text(searcher, library, annotations, &ids)?;
    Ok(ServedReport {
        queries: queries.len(),
        images_matched,
        images_missing: ids.len() - images_matched,
        fusion,
        rerank_default: default_depth,
        text_to_image: rows,
        image_to_text,
        latency_ms: latency(&timings),
        calibration,
        fit,
    })
}

fn describe(fusion: &SearchFusion, depth: usize) -> String {
    let mut s = format!("β {}", fusion.bm25_weight);
    if depth > 0 {
        s += &format!(", w {}, top {depth} re-ranked", fusion.itm_logit_weight);
    } else {
        s += ", no re-ranking";
    }
    s
}

/// The rank of the query's image among the candidates with a word match, by BM25.
fn bm25_rank(q: &QueryData) -> Option<usize> {
    let mut by_words: Vec<&ImageHit> = q.hits.iter().filter(|h| h.scores.bm25.is_some()).collect();
    by_words.sort_by_key(|h| h.scores.bm25_rank);
    by_words
        .iter()
        .position(|h| h.record.id == q.image)
        .map(|p| p + 1)
}

/// Fits `β` and `w` on the grid, then the calibration on the pairs the fitted order re-ranks.
fn fit_all(
    run: &Run<'_, '_>,
    queries: &mut [QueryData],
    served: &SearchFusion,
    max_depth: usize,
) -> Result<FitReport, EvalError> {
    let mut grid = Vec::new();
    let mut best_per_depth = Vec::new();
    for &depth in FIT_DEPTHS.iter().filter(|&&d| d <= max_depth) {
        let mut at_depth = Vec::new();
        for &beta in &BM25_WEIGHT_GRID {
            for &w in &ITM_WEIGHT_GRID {
                let fusion = SearchFusion {
                    bm25_weight: beta,
                    itm_logit_weight: w,
                    ..served.clone()
                };
                let r = run.recall(queries, &fusion, depth)?;
                at_depth.push((beta, w, r.r1, r.mean()));
            }
        }
        best_per_depth.push((depth, best_grid_point(&at_depth)));
        grid.extend(
            at_depth
                .into_iter()
                .map(|(b, w, r1, m)| (depth, b, w, r1, m)),
        );
    }
    let (depth, (beta, w, r1, _)) = shallowest_near_best(&best_per_depth);
    let itc = run.recall(queries, &SearchFusion::itc_only(), 0)?;
    let fitted = SearchFusion {
        bm25_weight: beta,
        itm_logit_weight: w,
        calibration: ItmCalibration::IDENTITY,
        ..served.clone()
    };
    let pairs = run
        .reranked_pairs(queries, &fitted, depth)
        .map_err(search_error)?;
    let flat: Vec<(f32, bool)> = pairs.iter().flatten().copied().collect();
    let calibration = fit_calibration(&flat);
    let before = calibration_report(&pairs, &ItmCalibration::IDENTITY);
    let after = calibration_report(&pairs, &calibration);
    Ok(FitReport {
        fusion: FusionFit {
            caption_source: served.caption_source.clone(),
            bm25_weight: beta,
            itm_logit_weight: w,
            rerank: depth,
            criterion: FIT_CRITERION.into(),
            fitted_on: String::new(),
            queries: queries.len(),
            r1,
            itc_r1: itc.r1,
        },
        calibration: CalibrationFit {
            calibration,
            fitted_on: String::new(),
            pairs: flat.len(),
            ece_before: before.ece,
            ece_after: after.ece,
        },
        before,
        after,
        grid,
    })
}

/// One point of a fit at one depth: `(β, w, R@1, mean R@1/5/10)`.
pub type WeightsRecall = (f32, f32, f64, f64);

/// The re-ranking depths a fit tries: ITM costs the same for every candidate, so the fit takes
/// the shallowest depth that recalls as well as the deepest (within [`DEPTH_TOLERANCE`]). All
/// share the candidate pool of 32 a query for 10 results gathers (see
/// [`candidate_pool`]), so each is ordered exactly as the server would.
pub const FIT_DEPTHS: [usize; 3] = [4, 8, 16];

/// R@1 points a shallower depth may lose to a deeper one and still be chosen: a few queries
/// in a thousand, what one more or one fewer lucky tie-break moves.
pub const DEPTH_TOLERANCE: f64 = 0.3;

/// The shallowest depth whose best R@1 is within [`DEPTH_TOLERANCE`] of the best of all.
fn shallowest_near_best(best: &[(usize, WeightsRecall)]) -> (usize, WeightsRecall) {
    let top = best
        .iter()
        .map(|b| b.1 .2)
        .fold(f64::NEG_INFINITY, f64::max);
    *best
        .iter()
        .find(|b| b.1 .2 >= top - DEPTH_TOLERANCE)
        .expect("a fit tries at least one depth")
}

/// The best point of a fit grid: highest R@1, then mean recall, then the smaller `β`, then
/// the smaller `w` (grid order), so a weight grows only for a measured gain.
pub fn best_grid_point(grid: &[WeightsRecall]) -> WeightsRecall {
    let mut best = grid[0];
    for &p in &grid[1..] {
        let better = p.2 > best.2 + 1e-9 || ((p.2 - best.2).abs() <= 1e-9 && p.3 > best.3 + 1e-9);
        if better {
            best = p;
        }
    }
    best
}

/// Platt scaling: the `scale` and `bias` that minimise the log loss of
/// `σ(scale · log_odds + bias)` against the labels (Newton's method, each step halved until
/// the loss falls, so it converges from the identity whatever the data). Falls back to the
/// identity when the pairs hold only one class or the fit is degenerate.
pub fn fit_calibration(pairs: &[(f32, bool)]) -> ItmCalibration {
    let positives = pairs.iter().filter(|p| p.1).count();
    if positives == 0 || positives == pairs.len() {
        return ItmCalibration::IDENTITY;
    }
    let data: Vec<(f64, f64)> = pairs
        .iter()
        .map(|&(x, y)| (x as f64, if y { 1.0 } else { 0.0 }))
        .collect();
    // Σ log(1 + e^z) − y·z, stable for large |z|.
    let loss = |a: f64, b: f64| -> f64 {
        data.iter()
            .map(|&(x, y)| {
                let z = a * x + b;
                z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z
            })
            .sum()
    };
    let (mut a, mut b) = (1.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(x, y) in &data {
            let z = a * x + b;
            let p = if z >= 0.0 {
                1.0 / (1.0 + (-z).exp())
            } else {
                z.exp() / (1.0 + z.exp())
            };
            let r = p - y;
            let v = (p * (1.0 - p)).max(1e-12);
            ga += r * x;
            gb += r;
            haa += v * x * x;
            hab += v * x;
            hbb += v;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        let before = loss(a, b);
        let mut t = 1.0;
        while loss(a - t * da, b - t * db) > before && t > 1e-6 {
            t /= 2.0;
        }
        a -= t * da;
        b -= t * db;
        if (t * da).abs() < 1e-9 && (t * db).abs() < 1e-9 {
            break;
        }
    }
    if a.is_finite() && b.is_finite() && a > 0.0 {
        ItmCalibration {
            scale: a as f32,
            bias: b as f32,
        }
    } else {
        ItmCalibration::IDENTITY
    }
}

/// Reliability, ECE and the cutoffs' precision and recall over per-query re-ranked pairs.
pub fn calibration_report(
    per_query: &[Vec<(f32, bool)>],
    calibration: &ItmCalibration,
) -> CalibrationReport {
    const BINS: usize = 10;
    let mut sums = [(0usize, 0.0f64, 0usize); BINS];
    let (mut pairs, mut matches) = (0, 0);
    for &(x, y) in per_query.iter().flatten() {
        let p = calibration.probability(x) as f64;
        let bin = ((p * BINS as f64) as usize).min(BINS - 1);
        sums[bin].0 += 1;
        sums[bin].1 += p;
        sums[bin].2 += usize::from(y);
        pairs += 1;
        matches += usize::from(y);
    }
    let mut ece = 0.0;
    let mut curve = Vec::new();
    for (i, &(n, sum_p, pos)) in sums.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let mean_probability = sum_p / n as f64;
        let match_rate = pos as f64 / n as f64;
        ece += n as f64 / pairs.max(1) as f64 * (mean_probability - match_rate).abs();
        curve.push(ReliabilityBin {
            from: i as f64 / BINS as f64,
            to: (i + 1) as f64 / BINS as f64,
            pairs: n,
            mean_probability,
            match_rate,
        });
    }
    let cutoffs = CUTOFFS
        .iter()
        .map(|&min| {
            let (mut kept, mut right, mut found) = (0usize, 0usize, 0usize);
            for q in per_query {
                let mut any = false;
                for &(x, y) in q {
                    if calibration.probability(x) >= min {
                        kept += 1;
                        right += usize::from(y);
                        any |= y;
                    }
                }
                found += usize::from(any);
            }
            CutoffQuality {
                min_match: min,
                precision: if kept == 0 {
                    0.0
                } else {
                    right as f64 / kept as f64
                },
                recall: found as f64 / per_query.len().max(1) as f64,
                kept_per_query: kept as f64 / per_query.len().max(1) as f64,
            }
        })
        .collect();
    CalibrationReport {
        pairs,
        matches,
        ece,
        curve,
        cutoffs,
    }
}

/// Image → text through the served path: each annotated image of the store, encoded from the
/// store, against the store's texts; its answers are the store texts equal (ignoring case and
/// surrounding space) to one of its captions. `None` when no store text is an annotation
/// caption.
fn image_to_text(
    searcher: &Searcher<'_>,
    library: &Library,
    annotations: &Annotations,
    ids: &[Option<u64>],
) -> Result<Option<Recall>, EvalError> {
    let norm = |s: &str| s.trim().to_lowercase();
    let mut by_text: HashMap<String, Vec<u64>> = HashMap::new();
    for t in library.store().texts() {
        let t = t.map_err(|e| EvalError::Search(Box::new(e.into())))?;
        by_text.entry(norm(&t.text)).or_default().push(t.id);
    }
    let mut ranks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        let answers: HashSet<u64> = annotations.img2txt[i]
            .iter()
            .filter_map(|&t| by_text.get(&norm(&annotations.texts[t])))
            .flatten()
            .copied()
            .collect();
        if answers.is_empty() {
            continue;
        }
        let image = searcher
            .encode_indexed(library, *id)
            .map_err(search_error)?;
        let found = searcher
            .image_to_text(library, &image, K, None)
            .map_err(search_error)?;
        ranks.push(
            found
                .hits
                .iter()
                .position(|h| answers.contains(&h.id))
                .map(|p| p + 1),
        );
    }
    Ok((!ranks.is_empty()).then(|| Recall::from_ranks(&ranks)))
}

/// p50 and p95 of each stage.
fn latency(timings: &[crate::search::Timing]) -> Vec<StageLatency> {
    type Stage = (&'static str, fn(&crate::search::Timing) -> f64);
    let stages: [Stage; 6] = [
        ("encode", |t| t.encode),
        ("ann", |t| t.ann),
        ("bm25", |t| t.bm25),
        ("fusion", |t| t.fusion),
        ("itm", |t| t.itm),
        ("total", |t| t.total),
    ];
    stages
        .iter()
        .map(|(name, get)| {
            let mut v: Vec<f64> = timings.iter().map(get).collect();
            v.sort_by(f64::total_cmp);
            StageLatency {
                stage: (*name).into(),
                p50: percentile(&v, 0.50),
                p95: percentile(&v, 0.95),
            }
        })
        .collect()
}

/// The nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::fusion::sigmoid;

    #[test]
    fn recall_counts_ranks_within_k() {
        let r = Recall::from_ranks(&[Some(1), Some(3), Some(7), None]);
        assert_eq!((r.r1, r.r5, r.r10, r.queries), (25.0, 50.0, 75.0, 4));
    }

    #[test]
    fn platt_scaling_recovers_a_known_calibration() {
        // Labels drawn so that the true match probability is σ(0.5 x − 1): a deterministic
        // quasi-random draw over a grid of log-odds.
        let mut pairs = Vec::new();
        for i in 0..4000 {
            let x = -8.0 + 16.0 * (i as f32 / 4000.0);
            let p = sigmoid(0.5 * x - 1.0);
            let u = ((i as f64 * 0.618_033_988_75) % 1.0) as f32;
            pairs.push((x, u < p));
        }
        let c = fit_calibration(&pairs);
        assert!((c.scale - 0.5).abs() < 0.08, "{c:?}");
        assert!((c.bias + 1.0).abs() < 0.15, "{c:?}");
        let before = calibration_report(&[pairs.clone()], &ItmCalibration::IDENTITY);
        let after = calibration_report(&[pairs], &c);
        assert!(
            after.ece < before.ece && after.ece < 0.03,
            "{} {}",
            before.ece,
            after.ece
        );
        assert!(fit_calibration(&[(1.0, true), (2.0, true)]).is_identity());
    }

    #[test]
    fn the_best_grid_point_prefers_recall_then_smaller_weights() {
        let grid = [
            (0.0, 0.0, 70.0, 80.0),
            (0.0, 0.1, 72.0, 80.0),
            (0.1, 0.1, 72.0, 80.0),
            (0.2, 0.0, 72.0, 81.0),
        ];
        assert_eq!(best_grid_point(&grid), (0.2, 0.0, 72.0, 81.0));
        assert_eq!(best_grid_point(&grid[..3]), (0.0, 0.1, 72.0, 80.0));
    }

    #[test]
    fn cutoffs_report_precision_and_recall_per_query() {
        // Two queries: the first's own image at log-odds 3 beside a wrong one at 1; the
        // second's own image at 2 beside a wrong one at -2.
        let per_query = vec![
            vec![(3.0, true), (1.0, false)],
            vec![(-2.0, false), (2.0, true)],
        ];
        let r = calibration_report(&per_query, &ItmCalibration::IDENTITY);
        let at = |m: f32| r.cutoffs.iter().find(|c| c.min_match == m).unwrap().clone();
        // σ(3) = .95, σ(1) = .73, σ(2) = .88: at 0.9 only the first query's image is kept.
        assert_eq!((at(0.9).precision, at(0.9).recall), (1.0, 0.5));
        // At 0.7: three kept, two right, both queries found.
        assert!((at(0.7).precision - 2.0 / 3.0).abs() < 1e-12 && at(0.7).recall == 1.0);
        assert_eq!((r.pairs, r.matches), (4, 2));
    }
}
