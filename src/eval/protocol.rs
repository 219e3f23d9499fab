//! LAVIS's `compute_sim_matrix` for BLIP-2 (`blip2_qformer.py`), split into its pure steps:
//! the ITC matrix, the top-`k_test` candidates in both directions, and the ITM re-scoring plan.
//!
//! LAVIS: `sims[i, t]` = max over image `i`'s query vectors of the cosine with text `t`. For
//! each image, its top `k_test` texts by ITC get `itm(i, t) + sims[i, t]` in `score_i2t`; for
//! each text, its top `k_test` images get the same in `score_t2i`; every other entry is −100.
//! `itm(i, t)` is the class-1 ITM logit averaged over the query rows. [`ItmMatrices`] keeps the
//! logit and the cosine apart, so the same pass also gives a weighted sum
//! ([`crate::itm_fusion::ItmFusion`]).
//!
//! LAVIS runs the two directions separately, so a pair that is a candidate both ways is
//! computed twice. ITM is deterministic, so [`ItmPlan`] computes each needed pair once, grouped
//! by image (the image's cross-attention keys/values are built once for all its texts), and
//! writes the one value into both matrices: the matrices, and so the metrics, are LAVIS's.

use std::cmp::Ordering;

use candle_core::{Device, Tensor};

use super::metrics::{recall_metrics, RecallMetrics, ScoreRow};
use crate::itm_fusion::ItmFusion;

/// The ITC similarity matrix [images × texts], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ItcMatrix {
    /// Number of images (rows).
    pub images: usize,
    /// Number of texts (columns).
    pub texts: usize,
    /// `sims[i * texts + t]`.
    pub sims: Vec<f32>,
}

impl ItcMatrix {
    /// Computes `max_q ⟨image[i, q], text[t]⟩` for image vectors [images, queries, dim] and
    /// text vectors [texts, dim] (both unit vectors, row-major f32), a block of images at a time
    /// so that the [block, queries, texts] intermediate stays small.
    pub fn compute(
        image_embeds: &[f32],
        text_embeds: &[f32],
        queries: usize,
        dim: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let images = image_embeds.len() / (queries * dim);
        let texts = text_embeds.len() / dim;
        let text_t = Tensor::from_slice(text_embeds, (texts, dim), device)?.t()?;
        let block = (64 << 20) / (4 * queries * texts.max(1)).max(1);
        let block = block.clamp(1, 256);
        let mut sims = Vec::with_capacity(images * texts);
        for start in (0..images).step_by(block) {
            let n = block.min(images - start);
            let chunk = &image_embeds[start * queries * dim..(start + n) * queries * dim];
            let img = Tensor::from_slice(chunk, (n * queries, dim), device)?;
            let s = img.matmul(&text_t)?.reshape((n, queries, texts))?.max(1)?;
            sims.extend(s.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Self {
            images,
            texts,
            sims,
        })
    }

    /// Row `i`: image `i` against every text.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.sims[i * self.texts..(i + 1) * self.texts]
    }

    /// The score of image `i` with text `t`.
    pub fn get(&self, i: usize, t: usize) -> f32 {
        self.sims[i * self.texts + t]
    }

    /// Column `t`: text `t` against every image.
    pub fn column(&self, t: usize) -> Vec<f32> {
        (0..self.images).map(|i| self.get(i, t)).collect()
    }

    /// ITC-only metrics (LAVIS's `sims_matrix` ranked both ways).
    pub fn metrics(&self, img2txt: &[Vec<usize>], txt2img: &[usize]) -> RecallMetrics {
        let transposed: Vec<Vec<f32>> = (0..self.texts).map(|t| self.column(t)).collect();
        recall_metrics(
            img2txt,
            txt2img,
            |i| ScoreRow::Dense(self.row(i)),
            |t| ScoreRow::Dense(&transposed[t]),
        )
    }
}

/// Indices of the `k` largest scores, best first (`torch.topk`; ties: lower index first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let order = |a: &u32, b: &u32| -> Ordering {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx
}

/// One (image, text) pair ITM must score, and which matrices take the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedPair {
    /// The text.
    pub text: u32,
    /// The text is among the image's top `k_test` (goes into `score_i2t`).
    pub image_to_text: bool,
    /// The image is among the text's top `k_test` (goes into `score_t2i`).
    pub text_to_image: bool,
}

/// Every pair ITM must score, grouped by image, each pair once.
#[derive(Debug, Clone, PartialEq)]
pub struct ItmPlan {
    /// `per_image[i]`: the texts image `i` must be scored against, in text order.
    pub per_image: Vec<Vec<PlannedPair>>,
    /// The `k_test` it was built for (a direction with fewer candidates takes them all).
    pub k_test: usize,
}

impl ItmPlan {
    /// The candidates of both directions for `k_test`.
    pub fn new(itc: &ItcMatrix, k_test: usize) -> Self {
        let mut flags: Vec<Vec<(u32, bool, bool)>> = vec![Vec::new(); itc.images];
        for (i, f) in flags.iter_mut().enumerate() {
            f.extend(
                top_k(itc.row(i), k_test)
                    .into_iter()
                    .map(|t| (t, true, false)),
            );
        }
        for t in 0..itc.texts {
            for i in top_k(&itc.column(t), k_test) {
                flags[i as usize].push((t as u32, false, true));
            }
        }
        let per_image = flags
            .into_iter()
            .map(|mut f| {
                f.sort_unstable_by_key(|&(t, _, _)| t);
                let mut merged: Vec<PlannedPair> = Vec::with_capacity(f.len());
                for (t, i2t, t2i) in f {
                    match merged.last_mut() {
                        Some(last) if last.text == t => {
                            last.image_to_text |= i2t;
                            last.text_to_image |= t2i;
                        }
                        _ => merged.push(PlannedPair {
                            text: t,
                            image_to_text: i2t,
                            text_to_image: t2i,
                        }),
                    }
                }
                merged
            })
            .collect();
        Self { per_image, k_test }
    }

    /// Number of ITM forward passes this plan needs.
    pub fn pairs(&self) -> usize {
        self.per_image.iter().map(Vec::len).sum()
    }

    /// What LAVIS computes for the same matrices: `k_test` per image plus `k_test` per text.
    pub fn lavis_pairs(&self, images: usize, texts: usize, k_test: usize) -> usize {
        images * k_test.min(texts) + texts * k_test.min(images)
    }
}

/// One re-scored pair's two scores, kept apart so that any [`ItmFusion`] can combine them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RescoredPair {
    /// The text (in an image's row) or the image (in a text's row).
    pub other: u32,
    /// The class-1 ITM logit.
    pub itm_logit: f32,
    /// The ITC cosine.
    pub itc: f32,
}

/// LAVIS's `score_matrix_i2t` and `score_matrix_t2i`, stored sparsely: the re-scored entries
/// per row; all others are −100. Each entry is `fusion.score(itm logit, itc)`: LAVIS's
/// `score + topk_sim` for [`ItmFusion::LAVIS`].
#[derive(Debug, Clone, PartialEq)]
pub struct ItmMatrices {
    /// Number of images.
    pub images: usize,
    /// Number of texts.
    pub texts: usize,
    /// Per image: its top-`k_test` texts.
    pub i2t: Vec<Vec<RescoredPair>>,
    /// Per text: its top-`k_test` images.
    pub t2i: Vec<Vec<RescoredPair>>,
}

impl ItmMatrices {
    /// Empty matrices (every entry −100).
    pub fn new(images: usize, texts: usize) -> Self {
        Self {
            images,
            texts,
            i2t: vec![Vec::new(); images],
            t2i: vec![Vec::new(); texts],
        }
    }

    /// Records the ITM logit and ITC of a planned pair in each matrix the pair belongs to.
    pub fn record(&mut self, image: usize, pair: PlannedPair, itm_logit: f32, itc: f32) {
        if pair.image_to_text {
            self.i2t[image].push(RescoredPair {
                other: pair.text,
                itm_logit,
                itc,
            });
        }
        if pair.text_to_image {
            self.t2i[pair.text as usize].push(RescoredPair {
                other: image as u32,
                itm_logit,
                itc,
            });
        }
    }

    /// Row `i` of `score_i2t`, dense.
    pub fn i2t_dense(&self, i: usize, fusion: ItmFusion) -> Vec<f32> {
        dense(self.texts, &fused(&self.i2t[i], fusion))
    }

    /// Row `t` of `score_t2i`, dense.
    pub fn t2i_dense(&self, t: usize, fusion: ItmFusion) -> Vec<f32> {
        dense(self.images, &fused(&self.t2i[t], fusion))
    }

    /// ITC+ITM metrics with the two combined by `fusion`.
    pub fn metrics(
        &self,
        fusion: ItmFusion,
        img2txt: &[Vec<usize>],
        txt2img: &[usize],
    ) -> RecallMetrics {
        let i2t: Vec<Vec<(u32, f32)>> = self.i2t.iter().map(|r| fused(r, fusion)).collect();
        let t2i: Vec<Vec<(u32, f32)>> = self.t2i.iter().map(|r| fused(r, fusion)).collect();
        recall_metrics(
            img2txt,
            txt2img,
            |i| ScoreRow::Sparse {
                len: self.texts,
                entries: &i2t[i],
            },
            |t| ScoreRow::Sparse {
                len: self.images,
                entries: &t2i[t],
            },
        )
    }
}

fn fused(row: &[RescoredPair], fusion: ItmFusion) -> Vec<(u32, f32)> {
    row.iter()
        .map(|p| (p.other, fusion.score(p.itm_logit, p.itc)))
        .collect()
}

fn dense(len: usize, entries: &[(u32, f32)]) -> Vec<f32> {
    let mut row = vec![super::metrics::UNSCORED; len];
    for &(k, s) in entries {
        row[k as usize] = s;
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_best_first_with_lower_index_on_ties() {
        let s = [0.1, 0.7, 0.3, 0.7, -1.0];
        assert_eq!(top_k(&s, 2), vec![1, 3]);
        assert_eq!(top_k(&s, 3), vec![1, 3, 2]);
        assert_eq!(top_k(&s, 10), vec![1, 3, 2, 0, 4]);
        assert!(top_k(&s, 0).is_empty());
    }

    #[test]
    fn itc_matrix_is_the_max_over_queries() {
        // 2 images × 2 queries × dim 2; 3 texts.
        let img = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8, -1.0, 0.0];
        let txt = [1.0, 0.0, 0.0, 1.0, 0.6, -0.8];
        let m = ItcMatrix::compute(&img, &txt, 2, 2, &Device::Cpu).unwrap();
        // Image 0 holds e0, e1: texts e0, e1, (0.6, -0.8) → 1, 1, 0.6.
        // Image 1 holds (0.6, 0.8), -e0 → 0.6, 0.8, max(0.36 - 0.64, -0.6) = -0.28.
        let expect = [1.0, 1.0, 0.6, 0.6, 0.8, -0.28];
        for (a, b) in m.sims.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{:?}", m.sims);
        }
        assert_eq!(m.column(2).len(), 2);
    }

    #[test]
    fn plan_covers_both_directions_once_per_pair() {
        let sims = ItcMatrix {
            images: 3,
            texts: 4,
            sims: vec![
                0.9, 0.1, 0.2, 0.3, //
                0.2, 0.8, 0.7, 0.1, //
                0.3, 0.4, 0.5, 0.6,
            ],
        };
        let plan = ItmPlan::new(&sims, 2);
        let mut lavis_pairs = Vec::new();
        for i in 0..3 {
            for t in top_k(sims.row(i), 2) {
                lavis_pairs.push((i, t as usize, true));
            }
        }
        for t in 0..4 {
            for i in top_k(&sims.column(t), 2) {
                lavis_pairs.push((i as usize, t, false));
            }
        }
        assert_eq!(plan.lavis_pairs(3, 4, 2), lavis_pairs.len());
        for &(i, t, i2t) in &lavis_pairs {
            let p = plan.per_image[i]
                .iter()
                .find(|p| p.text as usize == t)
                .unwrap_or_else(|| panic!("pair ({i}, {t}) missing"));
            assert!(if i2t {
                p.image_to_text
            } else {
                p.text_to_image
            });
        }
        let mut unique: Vec<(usize, usize)> = lavis_pairs.iter().map(|&(i, t, _)| (i, t)).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(plan.pairs(), unique.len());
        assert!(
            plan.pairs() < lavis_pairs.len(),
            "some pairs are shared here"
        );
    }
}
