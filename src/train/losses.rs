//! The training objectives, as LAVIS's `Blip2Qformer` and `Blip2OPT` compute them, written
//! with differentiable tensor ops.
//!
//! - ITC: image–text similarity = max over the query vectors of the cosine, divided by a
//!   learned temperature; cross-entropy in both directions against in-batch negatives, with
//!   label smoothing 0.1. One change from LAVIS's stage 1, taken from BLIP (v1): pairs whose
//!   texts are identical count as positives of each other. Synthetic and real caption sets both
//!   repeat short captions ("a red circle"), and punishing the model for ranking an equally
//!   true image first only teaches it noise.
//! - ITM: two-way classification of the query outputs (averaged over queries) of one positive
//!   and two hard-negative pairs per example.
//! - ITG / LM: next-token cross-entropy over the text positions, padding ignored (label
//!   smoothing 0.1 for ITG as in LAVIS, none for the OPT loss of stage 2).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::synth::rng::SplitMix64;

/// The sum of `losses`; an error when there are none (nothing to minimise).
pub fn sum_losses<'a>(losses: impl IntoIterator<Item = &'a Tensor>) -> candle_core::Result<Tensor> {
    let mut losses = losses.into_iter();
    let first = losses
        .next()
        .ok_or_else(|| candle_core::Error::Msg("no objective is minimised".into()))?;
    losses.try_fold(first.clone(), |sum, l| sum + l)
}

/// Cross-entropy of `logits` [N, C] against target distributions `targets` [N, C] (rows sum
/// to 1), with label smoothing `smoothing` (torch's definition: the target becomes
/// `(1 − ε)·target + ε/C`); the mean over rows.
pub fn soft_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    smoothing: f64,
) -> candle_core::Result<Tensor> {
    let (_, c) = logits.dims2()?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let targets = ((targets * (1.0 - smoothing))? + smoothing / c as f64)?;
    (targets * log_p)?.sum(D::Minus1)?.neg()?.mean_all()
}

/// Cross-entropy of `logits` [N, C] against class indices, with label smoothing; rows whose
/// target is `None` are ignored (torch's `ignore_index`). Errors when every row is ignored.
///
/// Computed as `lse − (1 − ε)·logit[target] − ε·mean(logits)` (lse = log-sum-exp of the row),
/// which equals the smoothed cross-entropy without materialising a [N, C] target matrix: for
/// a language-model head over 30 000–50 000 tokens that matrix and its products cost more
/// than the rest of the loss.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &[Option<u32>],
    smoothing: f64,
) -> candle_core::Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{n} rows of logits but {} targets", targets.len());
    }
    let rows: Vec<u32> = (0..n as u32)
        .filter(|&i| targets[i as usize].is_some())
        .collect();
    if rows.is_empty() {
        candle_core::bail!("every target is ignored: nothing to learn from");
    }
    let mut kept_targets = Vec::with_capacity(rows.len());
    for &i in &rows {
        let t = targets[i as usize].expect("kept rows have targets");
        if t as usize >= c {
            candle_core::bail!("target class {t} is outside the {c} classes");
        }
        kept_targets.push(t);
    }
    let device = logits.device();
    let kept = if rows.len() == n {
        logits.clone()
    } else {
        logits.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?
    };
    let target_idx = Tensor::from_vec(kept_targets, rows.len(), device)?;
    if kept.device().is_cpu() && kept.dtype() == DType::F32 {
        let op = FusedCrossEntropy {
            smoothing: smoothing as f32,
        };
        return kept.contiguous()?.apply_op2(&target_idx, op)?.mean_all();
    }
    let max = kept.max_keepdim(D::Minus1)?.detach();
    let lse = (kept
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let picked = kept.gather(&target_idx.unsqueeze(1)?, D::Minus1)?;
    let mean = kept.mean_keepdim(D::Minus1)?;
    let loss = ((lse - (picked * (1.0 - smoothing))?)? - (mean * smoothing)?)?;
    loss.mean_all()
}

/// Per-row smoothed cross-entropy of f32 logits [N, C] and u32 targets [N] in one parallel
/// pass, with a backward pass that writes `softmax − target distribution` directly. Over a
/// 30 000–50 000-token vocabulary the composed version makes a dozen single-threaded passes
/// over [N, C] (forward and backward); this makes two, split across cores.
#[derive(Debug, Clone, Copy)]
struct FusedCrossEntropy {
    smoothing: f32,
}

fn ce_inputs<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(&'a [f32], &'a [u32], usize)> {
    let (logits, targets) = match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::U32(b)) => (a, b),
        _ => candle_core::bail!("fused cross-entropy: expected f32 logits and u32 targets"),
    };
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("fused cross-entropy: inputs must be contiguous");
    };
    let c = l1.dims()[1];
    Ok((&logits[a0..a1], &targets[b0..b1], c))
}

/// Log-sum-exp and mean of one row.
fn row_stats(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let mean = row.iter().sum::<f32>() / row.len() as f32;
    (max + sum.ln(), mean)
}

impl CustomOp2 for FusedCrossEntropy {
    fn name(&self) -> &'static str {
        "quarry-fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, targets, c) = ce_inputs(s1, l1, s2, l2)?;
        let eps = self.smoothing;
        let out: Vec<f32> = logits
            .par_chunks(c)
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let (lse, mean) = row_stats(row);
                lse - (1.0 - eps) * row[t as usize] - eps * mean
            })
            .collect();
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = logits.apply_op3_no_bwd(
            targets,
            &grad_res.contiguous()?,
            &FusedCrossEntropyGrad {
                smoothing: self.smoothing,
            },
        )?;
        Ok((Some(grad), None))
    }
}

/// The gradient of [`FusedCrossEntropy`]: `(softmax − (1 − ε)·onehot − ε/C) · grad_row`.
struct FusedCrossEntropyGrad {
    smoothing: f32,
}

impl CustomOp3 for FusedCrossEntropyGrad {
    fn name(&self) -> &'static str {
        "quarry-fused-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, targets, c) = ce_inputs(s1, l1, s2, l2)?;
        let grads = match (s3, l3.contiguous_offsets()) {
            (CpuStorage::F32(g), Some((a, b))) => &g[a..b],
            _ => candle_core::bail!("fused cross-entropy: the incoming gradient must be f32"),
        };
        let eps = self.smoothing;
        let uniform = eps / c as f32;
        let mut out = vec![0f32; logits.len()];
        out.par_chunks_mut(c)
            .zip(logits.par_chunks(c))
            .zip(targets.par_iter().zip(grads.par_iter()))
            .for_each(|((o, row), (&t, &g))| {
                let (lse, _) = row_stats(row);
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = ((x - lse).exp() - uniform) * g;
                }
                o[t as usize] -= (1.0 - eps) * g;
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Which texts of a batch are true of which images: `matches[t][i]` says text `t` describes
/// image `i` (always true on the diagonal). Counting a text as a negative for an image it
/// describes teaches the model to contradict its data; with short, repeated captions this is
/// common, and ITM's hardest negatives are exactly those pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positives {
    matches: Vec<Vec<bool>>,
}

impl Positives {
    /// From an explicit matrix (`matches[t][i]`); the diagonal is set.
    pub fn new(mut matches: Vec<Vec<bool>>) -> Self {
        for (i, row) in matches.iter_mut().enumerate() {
            row[i] = true;
        }
        Self { matches }
    }

    /// Texts with equal group ids are interchangeable (e.g. identical strings).
    pub fn from_groups(groups: &[u64]) -> Self {
        Self::new(
            groups
                .iter()
                .map(|g| groups.iter().map(|h| g == h).collect())
                .collect(),
        )
    }

    /// Batch size.
    pub fn len(&self) -> usize {
        self.matches.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty()
    }

    /// Whether text `t` describes image `i`.
    pub fn text_of_image(&self, t: usize, i: usize) -> bool {
        self.matches[t][i]
    }

    /// Target distributions [B, B]: with `by_text`, row t spreads over the images text t
    /// describes; otherwise row i spreads over the texts describing image i.
    fn targets(&self, by_text: bool, device: &Device) -> candle_core::Result<Tensor> {
        let b = self.len();
        let mut data = vec![0f32; b * b];
        for r in 0..b {
            let hit = |c: usize| {
                if by_text {
                    self.matches[r][c]
                } else {
                    self.matches[c][r]
                }
            };
            let n = (0..b).filter(|&c| hit(c)).count() as f32;
            for c in 0..b {
                if hit(c) {
                    data[r * b + c] = 1.0 / n;
                }
            }
        }
        Tensor::from_vec(data, (b, b), device)
    }
}

/// The ITC similarity [B_img, B_txt]: for each image, the maximum over its query vectors
/// `image_feats` [B, Q, D] of the dot product with each text vector `text_feats` [B, D] (both
/// unit vectors, so a cosine).
pub fn max_query_similarity(
    image_feats: &Tensor,
    text_feats: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, q, d) = image_feats.dims3()?;
    image_feats
        .reshape((b * q, d))?
        .matmul(&text_feats.t()?)?
        .reshape((b, q, ()))?
        .max(1)
}

/// The ITC loss and the image→text similarity it used ([B, B], before the temperature), for
/// hard-negative mining. `temp` is a scalar tensor (the learned temperature, clamped to
/// [0.001, 0.5] as LAVIS does); `positives` says which texts describe which images.
pub fn itc_loss(
    image_feats: &Tensor,
    text_feats: &Tensor,
    temp: &Tensor,
    positives: &Positives,
) -> candle_core::Result<(Tensor, Tensor)> {
    let sim = max_query_similarity(image_feats, text_feats)?;
    let temp = temp.clamp(0.001f32, 0.5f32)?;
    let logits_i2t = sim.broadcast_div(&temp)?;
    let logits_t2i = logits_i2t.t()?.contiguous()?;
    let loss_i2t = soft_cross_entropy(&logits_i2t, &positives.targets(false, sim.device())?, 0.1)?;
    let loss_t2i = soft_cross_entropy(&logits_t2i, &positives.targets(true, sim.device())?, 0.1)?;
    Ok((((loss_i2t + loss_t2i)? * 0.5)?, sim))
}

/// Hard negatives for ITM, sampled as LAVIS does: for each row, a column drawn with probability
/// softmax(similarity / temp) over the columns that are not its positives; `per_row` > 1 draws
/// that many distinct columns, each from what the earlier draws left (fewer where the row has
/// fewer columns to draw from). `sim` is [B, B] (row = the anchor); `positive(row, column)` says
/// which pairs must not be drawn. A row whose every column is a positive (a batch of one
/// repeated text) draws, the same way, among the columns other than its own.
///
/// One draw per row is BLIP-2's; more give ITM the 2nd, 3rd, … hardest candidates too, which
/// is what re-ranking ITC's top k must tell apart.
pub fn sample_hard_negatives(
    sim: &[Vec<f32>],
    temp: f32,
    per_row: usize,
    positive: impl Fn(usize, usize) -> bool,
    rng: &mut SplitMix64,
) -> Vec<Vec<usize>> {
    let b = sim.len();
    (0..b)
        .map(|i| {
            let candidates: Vec<usize> = (0..b).filter(|&j| !positive(i, j)).collect();
            let mut pool: Vec<usize> = if candidates.is_empty() {
                (0..b).filter(|&j| j != i).collect()
            } else {
                candidates
            };
            if pool.is_empty() {
                return vec![i];
            }
            let mut drawn = Vec::with_capacity(per_row.min(pool.len()));
            while drawn.len() < per_row && !pool.is_empty() {
                let max = pool
                    .iter()
                    .map(|&j| sim[i][j] / temp)
                    .fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f64> = pool
                    .iter()
                    .map(|&j| f64::from((sim[i][j] / temp - max).exp()))
                    .collect();
                drawn.push(pool.remove(draw_index(&weights, rng)));
            }
            drawn
        })
        .collect()
}

/// An index drawn with probability proportional to `weights` (non-negative, not all zero).
fn draw_index(weights: &[f64], rng: &mut SplitMix64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = f64::from(rng.unit()) * total;
    for (k, w) in weights.iter().enumerate() {
        if u < *w {
            return k;
        }
        u -= w;
    }
    weights.len() - 1
}

/// The next-token loss over a batch of sequences: `logits` [B, T, V] at each position predict
/// the token at the next one; `labels[b][t]` is the token at position t, `None` where it must
/// not be predicted (padding, image rows, a prompt).
pub fn next_token_loss(
    logits: &Tensor,
    labels: &[Vec<Option<u32>>],
    smoothing: f64,
) -> candle_core::Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if labels.len() != b || labels.iter().any(|l| l.len() != t) {
        candle_core::bail!("labels do not match logits of shape [{b}, {t}, {v}]");
    }
    let shifted = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let targets: Vec<Option<u32>> = labels.iter().flat_map(|l| l[1..].to_vec()).collect();
    cross_entropy(&shifted.to_dtype(DType::F32)?, &targets, smoothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn close(a: f32, b: f32, tol: f32) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tolerance {tol})");
    }

    #[test]
    fn cross_entropy_equals_the_hand_computed_value_with_smoothing_and_ignored_rows() {
        let dev = Device::Cpu;
        // Row 0: logits (0, ln 3) → p = (1/4, 3/4); target 1: −ln(3/4).
        // With ε = 0.1 over C = 2: 0.95·(−ln 3/4) + 0.05·(−ln 1/4).
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [5.0, -5.0]], &dev).unwrap();
        let plain = cross_entropy(&logits, &[Some(1), None], 0.0).unwrap();
        close(scalar(&plain), -(0.75f32).ln(), 1e-6);
        let smooth = cross_entropy(&logits, &[Some(1), None], 0.1).unwrap();
        close(
            scalar(&smooth),
            0.95 * -(0.75f32).ln() + 0.05 * -(0.25f32).ln(),
            1e-6,
        );
        assert!(cross_entropy(&logits, &[None, None], 0.0).is_err());
        assert!(cross_entropy(&logits, &[Some(2), None], 0.0).is_err());
    }

    #[test]
    fn the_fused_loss_and_its_gradient_equal_the_composed_formula() {
        let dev = Device::Cpu;
        let logits =
            candle_core::Var::from_tensor(&Tensor::randn(0f32, 3.0, (5, 11), &dev).unwrap())
                .unwrap();
        let targets = [Some(3), None, Some(0), Some(10), Some(7)];
        let fused = cross_entropy(logits.as_tensor(), &targets, 0.1).unwrap();
        let g_fused = fused.backward().unwrap();
        let g_fused = g_fused
            .get(logits.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // The composed route (soft targets over log-softmax) on the same rows.
        let rows = Tensor::new(&[0u32, 2, 3, 4], &dev).unwrap();
        let kept = logits.as_tensor().index_select(&rows, 0).unwrap();
        let mut onehot = vec![0f32; 4 * 11];
        for (r, t) in [3usize, 0, 10, 7].iter().enumerate() {
            onehot[r * 11 + t] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (4, 11), &dev).unwrap();
        let composed = soft_cross_entropy(&kept, &onehot, 0.1).unwrap();
        let g_comp = composed.backward().unwrap();
        let g_comp = g_comp
            .get(logits.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        close(scalar(&fused), scalar(&composed), 1e-5);
        for (a, b) in g_fused.iter().flatten().zip(g_comp.iter().flatten()) {
            close(*a, *b, 1e-6);
        }
        assert!(
            g_fused[1].iter().all(|&g| g == 0.0),
            "an ignored row gets no gradient"
        );
    }

    #[test]
    fn itc_takes_the_best_query_and_counts_identical_texts_as_positives() {
        let dev = Device::Cpu;
        // Two images × two queries × 2-d, two texts. Image 0's second query matches text 0,
        // image 1's first query matches text 1.
        let image =
            Tensor::new(&[[[0f32, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.6, 0.8]]], &dev).unwrap();
        let text = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let sim = max_query_similarity(&image, &text).unwrap();
        assert_eq!(
            sim.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0], vec![0.6, 1.0]]
        );
        let temp = Tensor::new(0.5f32, &dev).unwrap();
        let (loss, _) = itc_loss(&image, &text, &temp, &Positives::from_groups(&[10, 11])).unwrap();
        // Logits = sim / 0.5. i2t rows: (2, 2) target 0, (1.2, 2) target 1;
        // t2i rows: (2, 1.2) target 0, (2, 2) target 1. ε = 0.1, C = 2.
        let ce = |a: f32, b: f32, target: usize| {
            let lse = (a.exp() + b.exp()).ln();
            let (lp0, lp1) = (a - lse, b - lse);
            let (t0, t1) = if target == 0 {
                (0.95, 0.05)
            } else {
                (0.05, 0.95)
            };
            -(t0 * lp0 + t1 * lp1)
        };
        let i2t = (ce(2.0, 2.0, 0) + ce(1.2, 2.0, 1)) / 2.0;
        let t2i = (ce(2.0, 1.2, 0) + ce(2.0, 2.0, 1)) / 2.0;
        close(scalar(&loss), (i2t + t2i) / 2.0, 1e-6);
        // The same two texts marked identical: each row's target is (1/2, 1/2).
        let (same, _) = itc_loss(&image, &text, &temp, &Positives::from_groups(&[7, 7])).unwrap();
        let half = |a: f32, b: f32| {
            let lse = (a.exp() + b.exp()).ln();
            -(0.5 * (a - lse) + 0.5 * (b - lse))
        };
        let expect = ((half(2.0, 2.0) + half(1.2, 2.0)) / 2.0
            + (half(2.0, 1.2) + half(2.0, 2.0)) / 2.0)
            / 2.0;
        close(scalar(&same), expect, 1e-6);
    }

    #[test]
    fn a_text_true_of_two_images_spreads_its_target_over_both_only_in_its_rows() {
        // Text 0 describes images 0 and 1; text 1 only image 1.
        let p = Positives::new(vec![vec![true, true], vec![false, true]]);
        let dev = Device::Cpu;
        let by_text: Vec<Vec<f32>> = p.targets(true, &dev).unwrap().to_vec2().unwrap();
        let by_image: Vec<Vec<f32>> = p.targets(false, &dev).unwrap().to_vec2().unwrap();
        assert_eq!(by_text, vec![vec![0.5, 0.5], vec![0.0, 1.0]]);
        // Image 0 is described by text 0 only; image 1 by both.
        assert_eq!(by_image, vec![vec![1.0, 0.0], vec![0.5, 0.5]]);
    }

    #[test]
    fn itc_gradient_reaches_the_temperature_and_is_clamped_below() {
        let dev = Device::Cpu;
        let image = Tensor::new(&[[[1f32, 0.0]], [[0.0, 1.0]]], &dev).unwrap();
        let text = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let at = |t: f32| {
            let temp = Tensor::new(t, &dev).unwrap();
            scalar(
                &itc_loss(&image, &text, &temp, &Positives::from_groups(&[0, 1]))
                    .unwrap()
                    .0,
            )
        };
        let temp = candle_core::Var::new(0.45f32, &dev).unwrap();
        let (loss, _) = itc_loss(
            &image,
            &text,
            temp.as_tensor(),
            &Positives::from_groups(&[0, 1]),
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        let g = scalar(grads.get(temp.as_tensor()).unwrap());
        // Against a central finite difference; and at 0.45 the pairs (cosine 1 vs 0) are softer
        // than the smoothed target, so a lower temperature lowers the loss (positive gradient).
        let fd = (at(0.451) - at(0.449)) / 0.002;
        assert!(
            (g - fd).abs() < 1e-2 * fd.abs().max(1.0),
            "gradient {g}, finite difference {fd}"
        );
        assert!(g > 0.0, "gradient {g}");
        // At 0.07 they are sharper than the smoothed target: the gradient changes sign.
        assert!(at(0.071) < at(0.069));
        let tiny = Tensor::new(1e-6f32, &dev).unwrap();
        let floor = Tensor::new(0.001f32, &dev).unwrap();
        let p = Positives::from_groups(&[0, 1]);
        let (a, _) = itc_loss(&image, &text, &tiny, &p).unwrap();
        let (b, _) = itc_loss(&image, &text, &floor, &p).unwrap();
        close(scalar(&a), scalar(&b), 1e-6);
    }

    #[test]
    fn hard_negatives_avoid_positives_and_follow_the_similarities() {
        let sim = vec![
            vec![1.0, 0.9, -1.0, 0.0],
            vec![0.9, 1.0, 0.0, -1.0],
            vec![0.0, 0.0, 1.0, 0.95],
            vec![0.0, 0.0, 0.95, 1.0],
        ];
        let groups = [1, 2, 3, 3];
        let mut rng = SplitMix64::for_scene(1, 2);
        let mut counts = [[0usize; 4]; 4];
        for _ in 0..2000 {
            let drawn =
                sample_hard_negatives(&sim, 0.05, 1, |i, j| groups[i] == groups[j], &mut rng);
            for (i, js) in drawn.into_iter().enumerate() {
                assert_eq!(js.len(), 1);
                counts[i][js[0]] += 1;
            }
        }
        for (i, row) in counts.iter().enumerate() {
            for (j, &n) in row.iter().enumerate() {
                if groups[i] == groups[j] {
                    assert_eq!(n, 0, "row {i} drew its positive {j}");
                }
            }
        }
        // Row 0: weights ∝ exp(0.9/0.05), exp(−1/0.05), exp(0): column 1 dominates.
        assert!(counts[0][1] > 1990, "{:?}", counts[0]);
        // Rows 2 and 3 share a text: each must draw from images 0 and 1, about evenly.
        assert!(counts[2][0] > 800 && counts[2][1] > 800, "{:?}", counts[2]);
        // All positives: uniform over the others.
        let all_same = sample_hard_negatives(&sim, 0.05, 1, |_, _| true, &mut rng);
        assert!(all_same
            .iter()
            .enumerate()
            .all(|(i, js)| js.len() == 1 && js[0] != i));
    }

    #[test]
    fn several_hard_negatives_per_row_are_distinct_in_order_of_hardness() {
        // Row 0's non-positive columns by similarity: 3 (0.9), 1 (0.5), 4 (0.1), 2 (−1).
        let sim = vec![
            vec![1.0, 0.5, -1.0, 0.9, 0.1],
            vec![0.5, 1.0, 0.2, 0.3, 0.4],
            vec![-1.0, 0.2, 1.0, 0.0, 0.6],
            vec![0.9, 0.3, 0.0, 1.0, 0.7],
            vec![0.1, 0.4, 0.6, 0.7, 1.0],
        ];
        let positive = |i: usize, j: usize| i == j;
        let mut rng = SplitMix64::for_scene(3, 4);
        let mut first_three = std::collections::HashMap::new();
        for _ in 0..500 {
            let drawn = sample_hard_negatives(&sim, 0.05, 3, positive, &mut rng);
            for (i, js) in drawn.iter().enumerate() {
                assert_eq!(js.len(), 3, "row {i}: {js:?}");
                let mut unique = js.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), 3, "row {i} drew a column twice: {js:?}");
                assert!(!js.contains(&i), "row {i} drew its positive");
            }
            *first_three.entry(drawn[0].clone()).or_insert(0usize) += 1;
        }
        // At temperature 0.05 the gaps (0.4, 0.4) make each draw the hardest one left almost
        // every time: e^(−8) ≈ 3e−4 per step.
        assert!(first_three[&vec![3, 1, 4]] > 490, "{first_three:?}");
        // A row with fewer candidates than asked for draws them all; one draw each is what a
        // single-negative call gives from the same generator state.
        let all = sample_hard_negatives(&sim, 0.05, 9, positive, &mut rng);
        assert!(all.iter().all(|js| js.len() == 4));
        let mut a = SplitMix64::for_scene(7, 7);
        let mut b = SplitMix64::for_scene(7, 7);
        let one = sample_hard_negatives(&sim, 0.5, 1, positive, &mut a);
        let three = sample_hard_negatives(&sim, 0.5, 3, positive, &mut b);
        assert_eq!(one[0][0], three[0][0]);
    }

    #[test]
    fn next_token_loss_shifts_by_one_and_skips_unlabelled_positions() {
        let dev = Device::Cpu;
        // One sequence of 3 positions over a vocabulary of 2. Position 0 predicts token 1's
        // label, position 1 predicts token 2's; position 2 predicts nothing.
        let logits =
            Tensor::new(&[[[0f32, 2f32.ln()], [3f32.ln(), 0.0], [9.0, -9.0]]], &dev).unwrap();
        let loss = next_token_loss(&logits, &[vec![None, Some(1), Some(0)]], 0.0).unwrap();
        // p(1 | pos 0) = 2/3, p(0 | pos 1) = 3/4.
        close(
            scalar(&loss),
            (-(2f32 / 3.0).ln() - (0.75f32).ln()) / 2.0,
            1e-6,
        );
        let first_ignored = next_token_loss(&logits, &[vec![None, None, Some(0)]], 0.0).unwrap();
        close(scalar(&first_ignored), -(0.75f32).ln(), 1e-6);
    }
}
