//! Whether a store's captions can tell its images apart.
//!
//! Captions feed the word search. A captioner that ignores the image (the demo's wrote "a small
//! red circle on a small red circle" for most scenes) makes every word match equally good and
//! so worthless; `quarry status` and `/api/v1/stats` say so, because a user who sees the same
//! caption on every card should know the search leans on the embeddings alone.

use std::collections::HashMap;

use serde::Serialize;

/// Below this share of distinct captions, the captions are reported as uninformative.
pub const UNINFORMATIVE_DISTINCT_RATIO: f64 = 0.5;

/// How varied a store's captions are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionQuality {
    /// Images with a caption.
    pub captions: u64,
    /// Distinct captions among them (compared after trimming and lower-casing).
    pub distinct: u64,
    /// `distinct / captions` (1 when there are no captions).
    pub distinct_ratio: f64,
    /// The most common caption, when any.
    pub most_common: Option<String>,
    /// How many images carry it.
    pub most_common_count: u64,
    /// Whether fewer than [`UNINFORMATIVE_DISTINCT_RATIO`] of the captions are distinct.
    pub uninformative: bool,
}

impl CaptionQuality {
    /// The quality of these captions.
    pub fn of<'a>(captions: impl IntoIterator<Item = &'a str>) -> Self {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut total = 0u64;
        for c in captions {
            total += 1;
            *counts.entry(c.trim().to_lowercase()).or_default() += 1;
        }
        let most = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(c, n)| (c.clone(), *n));
        let distinct = counts.len() as u64;
        let distinct_ratio = if total == 0 {
            1.0
        } else {
            distinct as f64 / total as f64
        };
        Self {
            captions: total,
            distinct,
            distinct_ratio,
            most_common_count: most.as_ref().map_or(0, |m| m.1),
            most_common: most.map(|m| m.0),
            uninformative: total > 0 && distinct_ratio < UNINFORMATIVE_DISTINCT_RATIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_captions_are_uninformative_and_varied_ones_are_not() {
        let same = CaptionQuality::of([
            "a red circle",
            "A red circle ",
            "a red circle",
            "a cat",
            "a red circle",
        ]);
        assert_eq!((same.captions, same.distinct), (5, 2));
        assert_eq!(same.most_common.as_deref(), Some("a red circle"));
        assert_eq!(same.most_common_count, 4);
        assert!(same.uninformative);
        let varied = CaptionQuality::of(["a red circle", "two blue squares", "a cat"]);
        assert!(!varied.uninformative && varied.distinct_ratio == 1.0);
        let none = CaptionQuality::of([]);
        assert!(!none.uninformative && none.most_common.is_none());
    }
}
