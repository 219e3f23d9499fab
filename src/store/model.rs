//! Which models made a store, and which may add to it.
//!
//! Embeddings of two different models live in unrelated spaces: mixing them in one store
//! would silently return nonsense. So a store records the fingerprint of its models when it
//! is created, and opening it for indexing with other models is refused. The rules:
//!
//! - **Retrieval model**: the content fingerprint, embedding width, query count and image
//!   size must all equal the store's. The folder name may differ (a moved or renamed model
//!   folder is the same model).
//! - **Captioner**: a store made without one may gain one (the images already indexed simply
//!   have no caption; the store then records the captioner). A store made with one refuses a
//!   different captioner (captions of two styles would mix) and refuses indexing without
//!   one (new images would silently get no caption): pass the same `--caption-model`.
//!
//! Persisted (JSON under `meta:model`): changing these types needs a store format migration.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What identifies one model's outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// The model folder's name, for messages (not compared).
    pub name: String,
    /// A fingerprint of the weights (computed by the caller, e.g. a hash of the tensors).
    pub fingerprint: String,
    /// Embedding width D of the ITC vectors (or of the model's output, for a captioner).
    pub embed_dim: usize,
    /// Query vectors per image Q.
    pub queries: usize,
    /// Input image size in pixels.
    pub image_size: usize,
}

impl ModelFingerprint {
    /// Whether two fingerprints describe the same model (the name is not compared).
    pub fn same_model(&self, other: &ModelFingerprint) -> bool {
        self.fingerprint == other.fingerprint
            && self.embed_dim == other.embed_dim
            && self.queries == other.queries
            && self.image_size == other.image_size
    }
}

impl fmt::Display for ModelFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` (fingerprint {}, {} queries × {}, {} px)",
            self.name, self.fingerprint, self.queries, self.embed_dim, self.image_size
        )
    }
}

/// The models of a store: the retrieval model, and the captioner if captions are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The model whose ITC vectors the store holds.
    pub retrieval: ModelFingerprint,
    /// The model whose captions the store holds.
    pub captioner: Option<ModelFingerprint>,
}

/// The outcome of checking requested models against a store's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Compatibility {
    /// Same models.
    Same,
    /// Same retrieval model; the requested captioner is new to the store: record it.
    AddsCaptioner,
}

/// Applies the module's rules; `Err` carries the user-facing message.
pub(crate) fn check(
    dir: &Path,
    stored: &ModelIdentity,
    requested: &ModelIdentity,
) -> Result<Compatibility, String> {
    let store = dir.display();
    let how = format!(
        "Embeddings of different models cannot be mixed in one store. To index with the new \
         models, use a new store (`quarry index PATH... --store NEW_DIR --model ...`) or \
         delete {store} and index again; to add to this store, pass the models it was made with."
    );
    if !stored.retrieval.same_model(&requested.retrieval) {
        return Err(format!(
            "the store {store} was made with the retrieval model {}, but {} was given. {how}",
            stored.retrieval, requested.retrieval
        ));
    }
    match (&stored.captioner, &requested.captioner) {
        (None, None) => Ok(Compatibility::Same),
        (None, Some(_)) => Ok(Compatibility::AddsCaptioner),
        (Some(s), Some(r)) if s.same_model(r) => Ok(Compatibility::Same),
        (Some(s), Some(r)) => Err(format!(
            "the store {store} was made with the caption model {s}, but {r} was given. {how}"
        )),
        (Some(s), None) => Err(format!(
            "the store {store} was made with the caption model {s}; pass it with \
             `--caption-model` so new images get captions too, or use a new store \
             (`quarry index PATH... --store NEW_DIR`)."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fingerprint(name: &str, fp: &str) -> ModelFingerprint {
        ModelFingerprint {
            name: name.into(),
            fingerprint: fp.into(),
            embed_dim: 4,
            queries: 2,
            image_size: 224,
        }
    }

    #[test]
    fn rules_for_retrieval_and_captioner() {
        let dir = Path::new("/photos/store");
        let a = ModelIdentity {
            retrieval: fingerprint("a", "1"),
            captioner: None,
        };
        let renamed = ModelIdentity {
            retrieval: fingerprint("a-moved", "1"),
            captioner: None,
        };
        assert_eq!(check(dir, &a, &renamed), Ok(Compatibility::Same));

        let other = ModelIdentity {
            retrieval: fingerprint("b", "2"),
            captioner: None,
        };
        let message = check(dir, &a, &other).unwrap_err();
        assert!(
            message.contains("`a`") && message.contains("`b`"),
            "{message}"
        );
        assert!(message.contains("--store NEW_DIR") && message.contains("/photos/store"));

        let mut wider = a.clone();
        wider.retrieval.embed_dim = 8;
        assert!(
            check(dir, &a, &wider).is_err(),
            "same fingerprint, other width"
        );

        let with_c = ModelIdentity {
            captioner: Some(fingerprint("c", "3")),
            ..a.clone()
        };
        assert_eq!(check(dir, &a, &with_c), Ok(Compatibility::AddsCaptioner));
        assert_eq!(check(dir, &with_c, &with_c), Ok(Compatibility::Same));
        let message = check(dir, &with_c, &a).unwrap_err();
        assert!(message.contains("--caption-model"), "{message}");
        let with_d = ModelIdentity {
            captioner: Some(fingerprint("d", "4")),
            ..a.clone()
        };
        assert!(check(dir, &with_c, &with_d)
            .unwrap_err()
            .contains("caption model `c`"));
    }
}
