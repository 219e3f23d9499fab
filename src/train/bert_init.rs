//! Initialising the Q-Former from BERT weights, as BLIP-2 does (`bert-base-uncased`): the
//! self-attention, feed-forward and embedding weights come from BERT, the feed-forward network
//! is copied into the query branch too (`intermediate_query`/`output_query`), and the
//! cross-attention layers, which BERT does not have, start fresh. The `[DEC]` row that BLIP-2
//! adds to the vocabulary also starts fresh.

use std::collections::HashMap;

use candle_core::{Shape, Tensor};

use super::params::fresh_init;
use super::TrainError;
use crate::model::Blip2Config;

/// Q-Former tensors (checkpoint names) from BERT tensors (`bert.`-prefixed or not).
pub fn qformer_from_bert(
    bert: &HashMap<String, Tensor>,
    config: &Blip2Config,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let q = &config.qformer_config;
    let get = |name: &str| -> Option<&Tensor> {
        bert.get(name).or_else(|| bert.get(&format!("bert.{name}")))
    };
    let mut out = HashMap::new();
    let word = get("embeddings.word_embeddings.weight").ok_or_else(|| {
        TrainError::Input("the BERT weights lack embeddings.word_embeddings.weight".into())
    })?;
    let (rows, hidden) = word.dims2()?;
    if hidden != q.hidden_size {
        return Err(TrainError::Input(format!(
            "BERT's hidden size {hidden} differs from qformer_config.hidden_size {}",
            q.hidden_size
        )));
    }
    let word = if rows >= q.vocab_size {
        word.narrow(0, 0, q.vocab_size)?
    } else {
        let extra = fresh_init(
            &Shape::from((q.vocab_size - rows, hidden)),
            "embeddings.word_embeddings.weight",
            0,
            word.device(),
        )?;
        Tensor::cat(&[word, &extra], 0)?
    };
    out.insert("embeddings.word_embeddings.weight".to_string(), word);
    if let Some(pos) = get("embeddings.position_embeddings.weight") {
        let n = pos.dim(0)?.min(q.max_position_embeddings);
        if n == q.max_position_embeddings {
            out.insert(
                "embeddings.position_embeddings.weight".to_string(),
                pos.narrow(0, 0, n)?,
            );
        }
    }
    for leaf in ["weight", "bias"] {
        if let Some(t) = get(&format!("embeddings.LayerNorm.{leaf}")) {
            out.insert(format!("qformer.layernorm.{leaf}"), t.clone());
        }
    }
    for i in 0..q.num_hidden_layers {
        let src = format!("encoder.layer.{i}");
        let dst = format!("qformer.encoder.layer.{i}");
        let mut map = |from: String, to: Vec<String>| {
            if let Some(t) = get(&format!("{src}.{from}")) {
                for name in to {
                    out.insert(format!("{dst}.{name}"), t.clone());
                }
            }
        };
        for leaf in ["weight", "bias"] {
            for proj in ["query", "key", "value"] {
                map(
                    format!("attention.self.{proj}.{leaf}"),
                    vec![format!("attention.attention.{proj}.{leaf}")],
                );
            }
            for part in ["dense", "LayerNorm"] {
                map(
                    format!("attention.output.{part}.{leaf}"),
                    vec![format!("attention.output.{part}.{leaf}")],
                );
                map(
                    format!("output.{part}.{leaf}"),
                    vec![
                        format!("output.{part}.{leaf}"),
                        format!("output_query.{part}.{leaf}"),
                    ],
                );
            }
            map(
                format!("intermediate.dense.{leaf}"),
                vec![
                    format!("intermediate.dense.{leaf}"),
                    format!("intermediate_query.dense.{leaf}"),
                ],
            );
        }
    }
    Ok(out)
}
