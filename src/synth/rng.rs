//! The generator's random numbers: SplitMix64.
//!
//! Scenes must be identical for a seed on every machine and with every future build (the demo
//! model's held-out test set is "`quarry synth` with a seed never used in training"), so the
//! generator owns its algorithm instead of depending on a crate whose streams may change between
//! versions. SplitMix64 is tiny, fast, and passes BigCrush; nothing here needs more.

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream for one scene: the run's seed and the scene's index are mixed, so every scene
    /// can be drawn independently (in parallel) and still be reproducible.
    pub fn for_scene(seed: u64, index: u64) -> Self {
        let mut mixer = Self {
            state: seed ^ 0x243f_6a88_85a3_08d3,
        };
        let base = mixer.next_u64();
        Self {
            state: base ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        // 24 random mantissa bits: every value is exactly representable.
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: unbiased enough for n far below 2^32, which is all this module uses.
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_differ_by_scene() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix64::for_scene(7, 3);
                move |_| r.next_u64()
            })
            .collect();
        let mut again = SplitMix64::for_scene(7, 3);
        let b: Vec<u64> = (0..4).map(|_| again.next_u64()).collect();
        assert_eq!(a, b);
        let mut other = SplitMix64::for_scene(7, 4);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let mut r = SplitMix64::for_scene(1, 0);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5)] += 1;
        }
        for c in counts {
            // 10 000 expected each; 5 sigma is about 450.
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }
}
