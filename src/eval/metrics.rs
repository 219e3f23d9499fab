//! Recall@K as LAVIS's `RetrievalTask._report_metrics` computes it, under its key names.
//!
//! Image → text: an image's rank is the best rank of any of its captions; text → image: the
//! rank of the caption's one image. Ranks come from sorting each score row in descending order.
//! LAVIS sorts with `np.argsort(score)[::-1]`, whose order among *equal* scores numpy leaves
//! unspecified; quarry fixes it as a stable ascending sort reversed would: among equal scores
//! the later index ranks first. Equal scores happen only between the −100 fillers of the
//! ITM matrices, so the rule matters only when `k_test < 10` and a ground truth fell outside
//! the top `k_test`; for LAVIS's `k_test` of 128 (and for ITC alone) it changes nothing.

use serde::Serialize;

/// The score LAVIS gives every pair that ITM did not re-score.
pub const UNSCORED: f32 = -100.0;

/// One row of a score matrix: all its scores, or a few scores with the rest at [`UNSCORED`].
#[derive(Debug, Clone, Copy)]
pub enum ScoreRow<'a> {
    /// Every column's score.
    Dense(&'a [f32]),
    /// `(column, score)` for the re-scored columns of a row of `len` columns; others are −100.
    Sparse {
        /// Number of columns.
        len: usize,
        /// The re-scored columns, each once.
        entries: &'a [(u32, f32)],
    },
}

impl ScoreRow<'_> {
    /// The score of column `j`.
    pub fn get(&self, j: usize) -> f32 {
        match self {
            ScoreRow::Dense(s) => s[j],
            ScoreRow::Sparse { entries, .. } => entries
                .iter()
                .find(|(k, _)| *k as usize == j)
                .map_or(UNSCORED, |&(_, s)| s),
        }
    }

    /// 0-based position of column `j` in the descending order (ties: later index first).
    pub fn rank_of(&self, j: usize) -> usize {
        let s = self.get(j);
        let ahead = |k: usize, sk: f32| sk > s || (sk == s && k > j);
        match self {
            ScoreRow::Dense(row) => row
                .iter()
                .enumerate()
                .filter(|&(k, &sk)| ahead(k, sk))
                .count(),
            ScoreRow::Sparse { len, entries } => {
                let scored = entries
                    .iter()
                    .filter(|&&(k, sk)| ahead(k as usize, sk))
                    .count();
                // The unscored columns all hold -100.
                let unscored_ahead = if UNSCORED > s {
                    len - entries.len()
                } else if UNSCORED == s {
                    let after_j = len - 1 - j;
                    after_j - entries.iter().filter(|&&(k, _)| k as usize > j).count()
                } else {
                    0
                };
                scored + unscored_ahead
            }
        }
    }
}

/// LAVIS's retrieval metrics, in percent, under LAVIS's key names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct RecallMetrics {
    /// Image → text recall@1.
    pub txt_r1: f64,
    /// Image → text recall@5.
    pub txt_r5: f64,
    /// Image → text recall@10.
    pub txt_r10: f64,
    /// Mean of the three image → text recalls.
    pub txt_r_mean: f64,
    /// Text → image recall@1.
    pub img_r1: f64,
    /// Text → image recall@5.
    pub img_r5: f64,
    /// Text → image recall@10.
    pub img_r10: f64,
    /// Mean of the three text → image recalls.
    pub img_r_mean: f64,
    /// Mean of `txt_r_mean` and `img_r_mean`.
    pub r_mean: f64,
}

/// Percentage of ranks below `k`, as LAVIS: `100.0 * len(np.where(ranks < k)[0]) / len(ranks)`.
fn recall_at(ranks: &[usize], k: usize) -> f64 {
    100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64
}

/// Recall metrics from the image → text rows and the text → image rows.
///
/// `i2t(i)` is image `i`'s row over all texts; `t2i(t)` is text `t`'s row over all images.
pub fn recall_metrics<'a>(
    img2txt: &[Vec<usize>],
    txt2img: &[usize],
    i2t: impl Fn(usize) -> ScoreRow<'a>,
    t2i: impl Fn(usize) -> ScoreRow<'a>,
) -> RecallMetrics {
    let image_ranks: Vec<usize> = img2txt
        .iter()
        .enumerate()
        .map(|(i, texts)| {
            let row = i2t(i);
            texts
                .iter()
                .map(|&t| row.rank_of(t))
                .min()
                .unwrap_or(usize::MAX)
        })
        .collect();
    let text_ranks: Vec<usize> = txt2img
        .iter()
        .enumerate()
        .map(|(t, &i)| t2i(t).rank_of(i))
        .collect();
    let (tr1, tr5, tr10) = (
        recall_at(&image_ranks, 1),
        recall_at(&image_ranks, 5),
        recall_at(&image_ranks, 10),
    );
    let (ir1, ir5, ir10) = (
        recall_at(&text_ranks, 1),
        recall_at(&text_ranks, 5),
        recall_at(&text_ranks, 10),
    );
    let txt_r_mean = (tr1 + tr5 + tr10) / 3.0;
    let img_r_mean = (ir1 + ir5 + ir10) / 3.0;
    RecallMetrics {
        txt_r1: tr1,
        txt_r5: tr5,
        txt_r10: tr10,
        txt_r_mean,
        img_r1: ir1,
        img_r5: ir5,
        img_r10: ir10,
        img_r_mean,
        r_mean: (txt_r_mean + img_r_mean) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_rank_counts_higher_scores_and_later_ties() {
        let row = [0.5, 0.9, 0.5, 0.1];
        let r = ScoreRow::Dense(&row);
        assert_eq!(r.rank_of(1), 0);
        // 0.5 at index 2 is ahead of 0.5 at index 0 (later index first among ties).
        assert_eq!(r.rank_of(2), 1);
        assert_eq!(r.rank_of(0), 2);
        assert_eq!(r.rank_of(3), 3);
    }

    #[test]
    fn sparse_rank_equals_dense_rank() {
        let entries = [(1u32, 2.5f32), (4, -0.5), (6, -100.0)];
        let len = 8;
        let mut dense = vec![UNSCORED; len];
        for &(k, s) in &entries {
            dense[k as usize] = s;
        }
        let sparse = ScoreRow::Sparse {
            len,
            entries: &entries,
        };
        for j in 0..len {
            assert_eq!(
                sparse.rank_of(j),
                ScoreRow::Dense(&dense).rank_of(j),
                "column {j}"
            );
            assert_eq!(sparse.get(j), dense[j]);
        }
    }

    #[test]
    fn metrics_follow_lavis_formulas() {
        // Two images, three texts: image 0 owns texts 0 and 1, image 1 owns text 2.
        let i2t = [vec![0.1, 0.9, 0.5], vec![0.8, 0.2, 0.3]];
        let t2i = [vec![0.9, 0.1], vec![0.2, 0.6], vec![0.4, 0.3]];
        let m = recall_metrics(
            &[vec![0, 1], vec![2]],
            &[0, 0, 1],
            |i| ScoreRow::Dense(&i2t[i]),
            |t| ScoreRow::Dense(&t2i[t]),
        );
        // Image 0: text 1 is first → rank 0. Image 1: text 2 is second → rank 1.
        assert_eq!(m.txt_r1, 50.0);
        assert_eq!(m.txt_r5, 100.0);
        // Text 0 → image 0 first; text 1 → image 0 second; text 2 → image 1 second.
        assert!((m.img_r1 - 100.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.img_r10, 100.0);
        assert!((m.txt_r_mean - (50.0 + 100.0 + 100.0) / 3.0).abs() < 1e-12);
        assert!((m.r_mean - (m.txt_r_mean + m.img_r_mean) / 2.0).abs() < 1e-12);
    }
}
