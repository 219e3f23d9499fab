//! Q-Former text tokenization: bert-base-uncased WordPiece plus BLIP-2's `[DEC]` token.
//!
//! Texts become `[CLS] … [SEP]`, truncated on the right to at most `max_length` tokens (35 is
//! what LAVIS evaluates retrieval with), and are padded with id 0 to the longest text of the
//! batch. Padding does not change the result: the text mask is bidirectional and padded keys
//! are masked out.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};
use crate::model::TextBatch;

/// LAVIS's text length for retrieval evaluation, special tokens included.
pub const DEFAULT_MAX_TEXT_TOKENS: usize = 35;

/// The Q-Former's tokenizer.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("max_length", &self.max_length)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Wraps a loaded `tokenizer.json`, switching off any padding/truncation it carries so
    /// that ours apply.
    pub fn new(mut inner: Tokenizer, max_length: usize, pad_id: u32) -> Result<Self> {
        if max_length < 2 {
            return Err(Error::Config(format!(
                "max text length {max_length} leaves no room for [CLS] and [SEP]"
            )));
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(tok_err)?;
        Ok(Self {
            inner,
            max_length,
            pad_id,
        })
    }

    /// Builds the tokenizer from a BERT `vocab.txt` (lower-cased WordPiece, `[CLS] … [SEP]`)
    /// and adds `[DEC]` after the vocabulary, as BLIP-2 does; for folders without
    /// `tokenizer.json`.
    pub fn from_vocab(vocab: &Path) -> Result<Tokenizer> {
        let vocab_path = vocab
            .to_str()
            .ok_or_else(|| tok_err("vocab path is not UTF-8"))?;
        let model = WordPiece::from_file(vocab_path)
            .unk_token("[UNK]".into())
            .build()
            .map_err(tok_err)?;
        let id = |t: &str| model.token_to_id_checked(t);
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let mut tok = Tokenizer::new(model);
        tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(tok_err)?;
        tok.with_pre_tokenizer(Some(BertPreTokenizer));
        tok.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        tok.add_special_tokens(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(|t| AddedToken::from(t, true)),
        )
        .map_err(tok_err)?;
        tok.add_special_tokens([AddedToken::from("[DEC]", true)])
            .map_err(tok_err)?;
        Ok(tok)
    }

    /// Longest text in tokens, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token of the vocabulary (e.g. `[DEC]`), if it has one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of each text: `[CLS] … [SEP]`, truncated, unpadded.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                Ok(self
                    .inner
                    .encode(*t, true)
                    .map_err(tok_err)?
                    .get_ids()
                    .to_vec())
            })
            .collect()
    }

    /// A padded batch on `device`: padded to the longest text, or to `pad_to` when given
    /// (LAVIS pads to 35).
    pub fn batch(
        &self,
        texts: &[&str],
        pad_to: Option<usize>,
        device: &Device,
    ) -> Result<TextBatch> {
        let ids = self.encode(texts)?;
        batch_from_ids(&ids, pad_to, self.pad_id, device)
    }
}

/// Pads token id lists into a [`TextBatch`].
pub fn batch_from_ids(
    ids: &[Vec<u32>],
    pad_to: Option<usize>,
    pad_id: u32,
    device: &Device,
) -> Result<TextBatch> {
    if ids.is_empty() {
        return Err(Error::Config("a text batch needs at least one text".into()));
    }
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let len = pad_to.unwrap_or(longest).max(longest);
    let mut flat = Vec::with_capacity(ids.len() * len);
    let mut mask = Vec::with_capacity(ids.len() * len);
    for t in ids {
        flat.extend(t.iter().copied().chain(std::iter::repeat(pad_id)).take(len));
        mask.extend((0..len).map(|i| u32::from(i < t.len())));
    }
    let shape = (ids.len(), len);
    Ok(TextBatch {
        input_ids: Tensor::from_vec(flat, shape, device)?,
        attention_mask: Tensor::from_vec(mask, shape, device)?,
    })
}

trait CheckedId {
    fn token_to_id_checked(&self, token: &str) -> Result<u32>;
}

impl CheckedId for WordPiece {
    fn token_to_id_checked(&self, token: &str) -> Result<u32> {
        use tokenizers::Model;
        self.token_to_id(token)
            .ok_or_else(|| tok_err(format!("vocab.txt has no {token} token")))
    }
}
