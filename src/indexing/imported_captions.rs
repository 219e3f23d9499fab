//! Captions the user already has, used instead of a captioner.
//!
//! Many photo libraries carry descriptions written by people (an annotated data set, a
//! catalogue export). They are worth more to the word search than any captioner's (measured
//! with `quarry eval-search`), so `quarry index --captions FILE` stores them as the images'
//! captions: they feed BM25 and image → text like generated captions, and the store records
//! "imported captions" as its caption source, so the search uses the fusion fitted for such
//! captions and a later run with a captioner is refused rather than mixing the two styles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::eval::{Annotations, EvalError};
use crate::store::ModelFingerprint;

/// The caption source fingerprint of imported captions (see [`crate::search::caption_source`]).
pub const IMPORTED_FINGERPRINT: &str = "imported-captions";

/// Captions by image path.
#[derive(Debug, Clone, Default)]
pub struct ImportedCaptions {
    by_path: HashMap<PathBuf, String>,
}

impl ImportedCaptions {
    /// Reads a LAVIS-format annotation file (`[{"image": "rel/path.jpg", "caption": "…" or
    /// ["…", …]}, …]`, what `quarry synth` writes) or Karpathy's layout with `split`; image
    /// paths are relative to `root`. An image with several captions gets them joined by ". ".
    pub fn from_annotations(
        file: &Path,
        root: &Path,
        split: Option<&str>,
    ) -> Result<Self, EvalError> {
        let annotations = Annotations::load(file, split)?;
        let mut by_path = HashMap::new();
        for (i, rel) in annotations.images.iter().enumerate() {
            let texts: Vec<&str> = annotations.img2txt[i]
                .iter()
                .map(|&t| annotations.texts[t].trim())
                .filter(|t| !t.is_empty())
                .collect();
            if texts.is_empty() {
                continue;
            }
            by_path.insert(canonical(&root.join(rel)), texts.join(". "));
        }
        Ok(Self { by_path })
    }

    /// The caption of the image at `path`, if the file names it.
    pub fn get(&self, path: &Path) -> Option<&String> {
        self.by_path.get(&canonical(path))
    }

    /// Images with a caption.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether no image has a caption.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// What a store records as its captioner.
    pub fn identity() -> ModelFingerprint {
        ModelFingerprint {
            name: "imported captions".into(),
            fingerprint: IMPORTED_FINGERPRINT.into(),
            embed_dim: 0,
            queries: 0,
            image_size: 0,
        }
    }
}

/// The path with symlinks and `..` resolved when the file exists, else as given: annotation
/// paths and walked paths then compare equal however each was spelled.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_found_by_any_spelling_of_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("images/a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("images/b.png"), b"x").unwrap();
        let file = dir.path().join("ann.json");
        std::fs::write(
            &file,
            r#"[{"image": "images/a.png", "caption": ["a red circle", "a circle, red"]},
                {"image": "images/b.png", "caption": "two blue squares"}]"#,
        )
        .unwrap();
        let c = ImportedCaptions::from_annotations(&file, dir.path(), None).unwrap();
        assert_eq!(c.len(), 2);
        let odd = dir.path().join("images/../images/a.png");
        assert_eq!(
            c.get(&odd).map(String::as_str),
            Some("a red circle. a circle, red")
        );
        assert!(c.get(&dir.path().join("images/c.png")).is_none());
    }
}
