//! Weighted reciprocal-rank fusion of ranked lists.

use std::collections::HashMap;

/// One ranked list: `(id, score)` best first, and its weight in the fusion.
#[derive(Debug, Clone, Copy)]
pub struct RankedList<'a> {
    /// Best first.
    pub items: &'a [(u64, f32)],
    /// Weight `w` in `w / (c + rank)`.
    pub weight: f32,
}

/// One fused candidate: its rank and score in each list (in the order the lists were given)
/// and the fused score.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedCandidate {
    /// The id.
    pub id: u64,
    /// Rank (1 = best) in each list, `None` where absent.
    pub ranks: Vec<Option<usize>>,
    /// Score in each list, `None` where absent.
    pub scores: Vec<Option<f32>>,
    /// `Σ over lists holding it of weight / (constant + rank)`.
    pub fused: f32,
}

/// Fuses `lists` by reciprocal rank: best fused first, ties by the better rank in the first
/// list, then by id (deterministic). An id listed twice in one list keeps its first rank.
pub fn fuse(lists: &[RankedList<'_>], constant: f32) -> Vec<FusedCandidate> {
    let mut by_id: HashMap<u64, FusedCandidate> = HashMap::new();
    for (l, list) in lists.iter().enumerate() {
        for (i, &(id, score)) in list.items.iter().enumerate() {
            let entry = by_id.entry(id).or_insert_with(|| FusedCandidate {
                id,
                ranks: vec![None; lists.len()],
                scores: vec![None; lists.len()],
                fused: 0.0,
            });
            if entry.ranks[l].is_some() {
                continue;
            }
            let rank = i + 1;
            entry.ranks[l] = Some(rank);
            entry.scores[l] = Some(score);
            entry.fused += list.weight / (constant + rank as f32);
        }
    }
    let mut fused: Vec<FusedCandidate> = by_id.into_values().collect();
    fused.sort_by(|a, b| {
        b.fused
            .total_cmp(&a.fused)
            .then(
                a.ranks
                    .first()
                    .copied()
                    .flatten()
                    .unwrap_or(usize::MAX)
                    .cmp(&b.ranks.first().copied().flatten().unwrap_or(usize::MAX)),
            )
            .then(a.id.cmp(&b.id))
    });
    fused
}
