//! Greedy and beam search over a step-wise model, with the logits processors BLIP-2 captioning
//! uses: minimum new tokens, repetition penalty, no-repeat n-grams.
//!
//! The search follows transformers' `generate` (4.57) exactly, since quarry's captions must be
//! BLIP-2's: greedy applies the processors to raw logits and takes the first maximum; beam
//! search applies them to log-probabilities, keeps `2 × num_beams` candidates per step, lets
//! only candidates ranked within the first `num_beams` finish, normalises a finished score by
//! `new_tokens ^ length_penalty`, and stops early (`early_stopping = False`) once the best
//! running beam, normalised by the current length, cannot beat the worst finished one. The
//! processors see the whole input sequence (padding and image placeholders included) plus what
//! was generated, as transformers' do.

use candle_core::{Result, Tensor};

/// Decoding settings. Defaults are LAVIS's caption settings from the BLIP-2 paper.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// 1 = greedy.
    pub num_beams: usize,
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// End-of-sequence is forbidden until this many new tokens exist.
    pub min_new_tokens: usize,
    /// Exponent of the length normalisation of finished beams.
    pub length_penalty: f32,
    /// > 1 discourages tokens already in the sequence (1 = off).
    pub repetition_penalty: f32,
    /// Forbids repeating any n-gram of this size (0 = off).
    pub no_repeat_ngram_size: usize,
    /// Token that ends a caption.
    pub eos_token_id: u32,
    /// Token written after a row has ended, while others continue.
    pub pad_token_id: u32,
}

impl GenerationSettings {
    /// LAVIS's paper settings: 5 beams, 8 to 30 new tokens, no repetition penalty.
    pub fn blip2_caption(eos_token_id: u32, pad_token_id: u32) -> Self {
        Self {
            num_beams: 5,
            max_new_tokens: 30,
            min_new_tokens: 8,
            length_penalty: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos_token_id,
            pad_token_id,
        }
    }

    /// Checks the settings are usable.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return Err(format!(
                "min_new_tokens {} exceeds max_new_tokens {}",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition_penalty {} must be positive",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return Err("length_penalty must be finite".into());
        }
        Ok(())
    }
}

/// A model that extends every row of a batch by one token at a time.
pub trait StepModel {
    /// Appends one token to each row and returns the next-token logits [rows, vocab] (f32).
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor>;
    /// Rebuilds the batch from the given rows of the current one (duplicates allowed).
    fn select_rows(&mut self, rows: &[usize]) -> Result<()>;
}

/// transformers' "no probability" value.
const NEG_INF: f32 = f32::NEG_INFINITY;

/// Applies the processors to one row of scores in place. `history` is the whole sequence so far
/// (input and generated); `new_len` counts the generated tokens.
fn process_row(scores: &mut [f32], history: &[u32], new_len: usize, s: &GenerationSettings) {
    if s.repetition_penalty != 1.0 {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(v) = scores.get_mut(t as usize) {
                *v = if *v < 0.0 {
                    *v * s.repetition_penalty
                } else {
                    *v / s.repetition_penalty
                };
            }
        }
    }
    let n = s.no_repeat_ngram_size;
    if n > 0 && history.len() + 1 >= n {
        let tail = &history[history.len() + 1 - n..];
        for w in history.windows(n) {
            if w[..n - 1] == *tail {
                if let Some(v) = scores.get_mut(w[n - 1] as usize) {
                    *v = NEG_INF;
                }
            }
        }
    }
    if new_len < s.min_new_tokens {
        if let Some(v) = scores.get_mut(s.eos_token_id as usize) {
            *v = NEG_INF;
        }
    }
}

fn log_softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(NEG_INF, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for v in row.iter_mut() {
        *v = *v - max - log_sum;
    }
}

/// Index of the first maximum (torch's `argmax`).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Greedy decoding. `histories[r]` is row r's input sequence; `first_logits` the logits after
/// it. Returns each row's new tokens, ending at (and including) its end-of-sequence token.
pub fn greedy(
    model: &mut dyn StepModel,
    first_logits: Tensor,
    histories: &[Vec<u32>],
    s: &GenerationSettings,
) -> Result<Vec<Vec<u32>>> {
    let rows = histories.len();
    let mut histories = histories.to_vec();
    let mut out = vec![Vec::new(); rows];
    let mut finished = vec![false; rows];
    let mut logits = first_logits.to_vec2::<f32>()?;
    for step in 0..s.max_new_tokens {
        let mut next = Vec::with_capacity(rows);
        for r in 0..rows {
            let token = if finished[r] {
                s.pad_token_id
            } else {
                process_row(&mut logits[r], &histories[r], step, s);
                argmax(&logits[r]) as u32
            };
            if !finished[r] {
                out[r].push(token);
                finished[r] = token == s.eos_token_id;
            }
            histories[r].push(token);
            next.push(token);
        }
        if finished.iter().all(|&f| f) || step + 1 == s.max_new_tokens {
            break;
        }
        logits = model.step(&next)?.to_vec2::<f32>()?;
    }
    Ok(out)
}

/// A finished hypothesis of one batch item.
#[derive(Debug, Clone)]
struct Finished {
    tokens: Vec<u32>,
    score: f32,
    done: bool,
}

/// The beam state of one batch item.
struct Item {
    running: Vec<(Vec<u32>, f32)>,
    finished: Vec<Finished>,
    improvable: bool,
}

/// One scored candidate continuation.
#[derive(Clone)]
struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
    stops: bool,
}

/// Beam search. The model's batch holds one row per item on entry (the prompts); it is widened
/// to `num_beams` rows per item here. Returns the best hypothesis of each item and its score
/// (sum of log-probabilities over new tokens ^ length_penalty).
pub fn beam_search(
    model: &mut dyn StepModel,
    first_logits: Tensor,
    histories: &[Vec<u32>],
    s: &GenerationSettings,
) -> Result<Vec<(Vec<u32>, f32)>> {
    let nb = s.num_beams;
    let items = histories.len();
    let widen: Vec<usize> = (0..items)
        .flat_map(|i| std::iter::repeat_n(i, nb))
        .collect();
    model.select_rows(&widen)?;
    let first = first_logits.to_vec2::<f32>()?;
    let mut logits: Vec<Vec<f32>> = widen.iter().map(|&i| first[i].clone()).collect();
    let mut state: Vec<Item> = (0..items)
        .map(|_| Item {
            running: (0..nb)
                .map(|b| (Vec::new(), if b == 0 { 0.0 } else { -1e9 }))
                .collect(),
            finished: vec![
                Finished {
                    tokens: Vec::new(),
                    score: -1e9,
                    done: false
                };
                nb
            ],
            improvable: true,
        })
        .collect();
    let keep = 2 * nb;
    for step in 0..s.max_new_tokens {
        let last_step = step + 1 >= s.max_new_tokens;
        let mut next_tokens = Vec::with_capacity(items * nb);
        let mut next_rows = Vec::with_capacity(items * nb);
        for (i, item) in state.iter_mut().enumerate() {
            // Accumulated scores of every (beam, token), best `keep` kept.
            let mut candidates: Vec<Candidate> = Vec::with_capacity(keep * nb);
            for (b, (tokens, score)) in item.running.iter().enumerate() {
                let row = &mut logits[i * nb + b];
                log_softmax_row(row);
                let mut history = histories[i].clone();
                history.extend(tokens);
                process_row(row, &history, step, s);
                let mut best: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                let k = keep.min(best.len());
                best.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                candidates.extend(best[..k].iter().map(|&(t, v)| Candidate {
                    beam: b,
                    token: t as u32,
                    score: v + score,
                    stops: t as u32 == s.eos_token_id || last_step,
                }));
            }
            // Sorted by score, ties by flat index (beam-major), as a stable top-k would.
            candidates.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then(a.beam.cmp(&b.beam))
                    .then(a.token.cmp(&b.token))
            });
            candidates.truncate(keep);

            // Candidates ranked within the first num_beams may finish.
            let norm = ((step + 1) as f32).powf(s.length_penalty);
            let mut merged: Vec<Finished> = item.finished.clone();
            for (rank, c) in candidates.iter().enumerate() {
                let just_finished = c.stops && rank < nb;
                let mut score = c.score / norm;
                if !item.improvable {
                    score += -1e9;
                }
                if !just_finished {
                    score += -1e9;
                }
                let mut tokens = item.running[c.beam].0.clone();
                tokens.push(c.token);
                merged.push(Finished {
                    tokens,
                    score,
                    done: just_finished,
                });
            }
            merged.sort_by(|a, b| b.score.total_cmp(&a.score));
            merged.truncate(nb);
            item.finished = merged;

            // The best num_beams candidates that did not stop keep running.
            let mut running: Vec<(usize, &Candidate, f32)> = candidates
                .iter()
                .enumerate()
                .map(|(k, c)| (k, c, c.score + if c.stops { -1e9 } else { 0.0 }))
                .collect();
            running.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            running.truncate(nb);
            let mut new_running = Vec::with_capacity(nb);
            for (_, c, score) in running {
                let mut tokens = item.running[c.beam].0.clone();
                tokens.push(c.token);
                new_running.push((tokens, score));
                next_tokens.push(c.token);
                next_rows.push(i * nb + c.beam);
            }
            item.running = new_running;

            // Early-stop heuristic (early_stopping = False): can the best running beam, at the
            // current length, still beat the worst finished one?
            if item.improvable && item.finished.iter().all(|f| f.done) {
                let best_running = item.running[0].1 / norm;
                let worst = item
                    .finished
                    .iter()
                    .map(|f| f.score)
                    .fold(f32::INFINITY, f32::min);
                item.improvable = best_running > worst;
            }
        }
        if last_step || state.iter().all(|it| !it.improvable) {
            break;
        }
        model.select_rows(&next_rows)?;
        logits = model.step(&next_tokens)?.to_vec2::<f32>()?;
    }
    Ok(state
        .into_iter()
        .map(|it| {
            let best = &it.finished[0];
            (best.tokens.clone(), best.score)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GenerationSettings {
        GenerationSettings {
            num_beams: 1,
            max_new_tokens: 5,
            min_new_tokens: 0,
            length_penalty: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos_token_id: 0,
            pad_token_id: 9,
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
        let mut s = settings();
        s.repetition_penalty = 2.0;
        let mut scores = vec![4.0, -4.0, 4.0, -4.0];
        process_row(&mut scores, &[0, 1, 1], 3, &s);
        assert_eq!(scores, vec![2.0, -8.0, 4.0, -4.0]);
    }

    #[test]
    fn no_repeat_ngram_bans_the_token_that_would_repeat_a_bigram() {
        let mut s = settings();
        s.no_repeat_ngram_size = 2;
        let mut scores = vec![1.0; 6];
        // "3 4 … 3": the bigram (3, 4) exists, so 4 may not follow the final 3.
        process_row(&mut scores, &[3, 4, 5, 3], 0, &s);
        assert_eq!(scores[4], f32::NEG_INFINITY);
        assert!(scores.iter().enumerate().all(|(i, &v)| i == 4 || v == 1.0));
    }

    #[test]
    fn eos_is_masked_until_min_new_tokens() {
        let mut s = settings();
        s.min_new_tokens = 2;
        let mut scores = vec![1.0, 0.0];
        process_row(&mut scores, &[], 1, &s);
        assert_eq!(scores[0], f32::NEG_INFINITY);
        let mut scores = vec![1.0, 0.0];
        process_row(&mut scores, &[], 2, &s);
        assert_eq!(scores[0], 1.0);
    }
}
