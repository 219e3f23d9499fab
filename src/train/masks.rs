//! The three self-attention masks through which BLIP-2's stage-1 objectives share one
//! Q-Former (Li et al. 2023, Fig. 2).
//!
//! The sequence is the query tokens followed by the text: rows and columns `0..Q` are queries,
//! `Q..Q+L` text tokens. Only query rows cross-attend to the image, so the mask alone decides
//! what each objective lets flow between image and text:
//! - **unimodal** (ITC): queries see queries, text sees text; neither sees the other, so the
//!   query outputs are the image representation and the `[CLS]` output the text one;
//! - **bidirectional** (ITM): every token sees every token, so the query outputs fuse both;
//! - **multimodal causal** (ITG): queries see queries only (they must not read the text they
//!   are asked to produce), text tokens see every query and the text tokens up to themselves.
//!
//! Padding text columns are masked in all three.

use candle_core::{Device, Tensor};

use crate::model::layers::MASKED;

/// Which objective's mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Image–text contrastive: no interaction between queries and text.
    Unimodal,
    /// Image–text matching: full interaction.
    Bidirectional,
    /// Image-grounded text generation: causal text that sees the queries.
    MultimodalCausal,
}

/// Whether row `i` may attend column `j` in a sequence of `queries` queries followed by text
/// whose padding mask is `text_mask` (1 = token).
pub fn allowed(kind: MaskKind, queries: usize, text_mask: &[u32], i: usize, j: usize) -> bool {
    if j >= queries && text_mask[j - queries] == 0 {
        return false;
    }
    let (row_query, col_query) = (i < queries, j < queries);
    match kind {
        MaskKind::Unimodal => row_query == col_query,
        MaskKind::Bidirectional => true,
        MaskKind::MultimodalCausal => {
            if row_query {
                col_query
            } else {
                col_query || j <= i
            }
        }
    }
}

/// The additive mask [B, 1, Q+L, Q+L] (0 where allowed, a large negative number where not) for
/// a batch of text padding masks, each of length L.
pub fn attention_mask(
    kind: MaskKind,
    queries: usize,
    text_masks: &[Vec<u32>],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let b = text_masks.len();
    let l = text_masks.first().map_or(0, Vec::len);
    if text_masks.iter().any(|m| m.len() != l) {
        candle_core::bail!("text masks of one batch must have one length");
    }
    let s = queries + l;
    let mut data = Vec::with_capacity(b * s * s);
    for m in text_masks {
        for i in 0..s {
            for j in 0..s {
                data.push(if allowed(kind, queries, m, i, j) {
                    0.0
                } else {
                    MASKED
                });
            }
        }
    }
    Tensor::from_vec(data, (b, 1, s, s), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two queries, then `[CLS] a b [PAD]`: every element of each mask against the table the
    /// paper's figure implies, written out by hand.
    #[test]
    fn each_mask_matches_the_hand_written_table() {
        let text = vec![vec![1u32, 1, 1, 0]];
        let expect = |kind, table: [[u8; 6]; 6]| {
            let m = attention_mask(kind, 2, &text, &Device::Cpu).unwrap();
            let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
            for i in 0..6 {
                for j in 0..6 {
                    let open = m[i][j] == 0.0;
                    assert_eq!(
                        open,
                        table[i][j] == 1,
                        "{kind:?}: row {i} column {j} should be {}",
                        if table[i][j] == 1 { "open" } else { "masked" }
                    );
                    if !open {
                        assert_eq!(m[i][j], MASKED);
                    }
                }
            }
        };
        //                 q0 q1 cls a  b  pad
        expect(
            MaskKind::Unimodal,
            [
                [1, 1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 0],
                [0, 0, 1, 1, 1, 0],
            ],
        );
        expect(
            MaskKind::Bidirectional,
            [
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
            ],
        );
        expect(
            MaskKind::MultimodalCausal,
            [
                [1, 1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1, 0],
            ],
        );
    }

    #[test]
    fn ragged_batches_are_refused() {
        let err = attention_mask(MaskKind::Unimodal, 1, &[vec![1, 1], vec![1]], &Device::Cpu);
        assert!(err.is_err());
    }
}
