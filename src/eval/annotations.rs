//! Test-split annotations in the two layouts researchers have on disk, turned into LAVIS's
//! `RetrievalEvalDataset` view: an image list, a text list, and the ground truth both ways.
//!
//! - LAVIS / BLIP layout (`coco_karpathy_test.json`, `flickr30k_test.json`): a JSON list of
//!   `{"image": "val2014/COCO_val2014_….jpg", "caption": ["…", …]}`; the file *is* one split.
//! - Karpathy's original layout (`dataset_coco.json`, `dataset_flickr30k.json`):
//!   `{"images": [{"filepath"?: "val2014", "filename": "…", "split": "test",
//!   "sentences": [{"raw": "…"}, …]}, …]}`, which holds every split; `--split` picks one.
//!   LAVIS built its test files from exactly these `raw` sentences, in this order.
//!
//! Texts are numbered image by image, caption by caption, as LAVIS numbers them; the order
//! matters only for tie-breaking, and keeping LAVIS's keeps its numbers.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EvalError;

/// Which on-disk layout a file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationLayout {
    /// A list of `{"image", "caption"}` entries (LAVIS, BLIP).
    Lavis,
    /// Karpathy's `{"images": [...]}` with splits.
    Karpathy,
}

/// A retrieval test set: images, captions, and which caption belongs to which image.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotations {
    /// The layout the file used.
    pub layout: AnnotationLayout,
    /// Image paths relative to the image root, in file order.
    pub images: Vec<PathBuf>,
    /// Captions as written in the file (not yet normalised), image by image.
    pub texts: Vec<String>,
    /// For each text, the index of its image.
    pub txt2img: Vec<usize>,
    /// For each image, the indices of its texts.
    pub img2txt: Vec<Vec<usize>>,
}

#[derive(Deserialize)]
struct LavisEntry {
    image: String,
    caption: OneOrMany,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    #[serde(default)]
    filepath: Option<String>,
    filename: String,
    split: String,
    sentences: Vec<KarpathySentence>,
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
}

impl Annotations {
    /// Reads an annotation file in either layout. `split` must be given for Karpathy's layout
    /// (usually `test`) and must not be given for LAVIS's, which holds a single split.
    pub fn load(path: &Path, split: Option<&str>) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path).map_err(|e| EvalError::Annotations {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&bytes, split).map_err(|message| EvalError::Annotations {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses annotation JSON; the error message says what is wrong and what to do.
    pub fn parse(bytes: &[u8], split: Option<&str>) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let annotations = match &value {
            serde_json::Value::Array(_) => {
                if let Some(split) = split {
                    return Err(format!(
                        "this is a LAVIS-layout file (a list of {{\"image\", \"caption\"}}), which \
                         holds one split already; drop --split {split}"
                    ));
                }
                let entries: Vec<LavisEntry> = serde_json::from_value(value).map_err(|e| {
                    format!(
                        "a LAVIS-layout file must be a list of {{\"image\": path, \"caption\": \
                         [text, ...]}}: {e}"
                    )
                })?;
                Self::from_pairs(
                    AnnotationLayout::Lavis,
                    entries.into_iter().map(|e| {
                        let captions = match e.caption {
                            OneOrMany::One(c) => vec![c],
                            OneOrMany::Many(c) => c,
                        };
                        (PathBuf::from(e.image), captions)
                    }),
                )
            }
            serde_json::Value::Object(map) if map.contains_key("images") => {
                let file: KarpathyFile = serde_json::from_value(value).map_err(|e| {
                    format!(
                        "a Karpathy-layout file needs images[] with filename, split and \
                         sentences[].raw: {e}"
                    )
                })?;
                let mut splits: Vec<(String, usize)> = Vec::new();
                for img in &file.images {
                    match splits.iter_mut().find(|(s, _)| *s == img.split) {
                        Some((_, n)) => *n += 1,
                        None => splits.push((img.split.clone(), 1)),
                    }
                }
                let listed = splits
                    .iter()
                    .map(|(s, n)| format!("{s} ({n} images)"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let Some(split) = split else {
                    return Err(format!(
                        "this is Karpathy's layout, which holds several splits ({listed}); \
                         pick one with --split (the paper's numbers use --split test)"
                    ));
                };
                if !splits.iter().any(|(s, _)| s == split) {
                    return Err(format!(
                        "has no images in split {split:?}; its splits are: {listed}"
                    ));
                }
                Self::from_pairs(
                    AnnotationLayout::Karpathy,
                    file.images
                        .into_iter()
                        .filter(|img| img.split == split)
                        .map(|img| {
                            let path = match img.filepath {
                                Some(dir) if !dir.is_empty() => Path::new(&dir).join(&img.filename),
                                _ => PathBuf::from(&img.filename),
                            };
                            (path, img.sentences.into_iter().map(|s| s.raw).collect())
                        }),
                )
            }
            _ => {
                return Err(
                    "expected a LAVIS-layout list [{\"image\", \"caption\"}, ...] or Karpathy's \
                     {\"images\": [...]} object"
                        .into(),
                )
            }
        }?;
        Ok(annotations)
    }

    fn from_pairs(
        layout: AnnotationLayout,
        pairs: impl Iterator<Item = (PathBuf, Vec<String>)>,
    ) -> Result<Self, String> {
        let mut out = Self {
            layout,
            images: Vec::new(),
            texts: Vec::new(),
            txt2img: Vec::new(),
            img2txt: Vec::new(),
        };
        for (image, captions) in pairs {
            let i = out.images.len();
            if image.as_os_str().is_empty() {
                return Err(format!("image {i} has an empty path"));
            }
            if image.is_absolute() {
                return Err(format!(
                    "image {i}: {} is absolute; paths must be relative to --images",
                    image.display()
                ));
            }
            if captions.is_empty() {
                return Err(format!(
                    "image {i} ({}) has no captions; every test image needs at least one",
                    image.display()
                ));
            }
            let mut ids = Vec::with_capacity(captions.len());
            for c in captions {
                ids.push(out.texts.len());
                out.txt2img.push(i);
                out.texts.push(c);
            }
            out.images.push(image);
            out.img2txt.push(ids);
        }
        if out.images.is_empty() {
            return Err("holds no images".into());
        }
        Ok(out)
    }

    /// Checks that every image exists under `root`; the error counts the missing ones and
    /// names the first few, so a wrong `--images` folder is obvious.
    pub fn check_images(&self, root: &Path) -> Result<Vec<PathBuf>, EvalError> {
        if !root.is_dir() {
            return Err(EvalError::ImageRoot(root.to_path_buf()));
        }
        let full: Vec<PathBuf> = self.images.iter().map(|p| root.join(p)).collect();
        let missing: Vec<PathBuf> = full.iter().filter(|p| !p.is_file()).cloned().collect();
        if missing.is_empty() {
            Ok(full)
        } else {
            Err(EvalError::MissingImages {
                root: root.to_path_buf(),
                count: missing.len(),
                total: full.len(),
                first: missing.into_iter().take(5).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lavis_layout_numbers_texts_image_by_image() {
        let json = br#"[{"image": "a/1.jpg", "caption": ["x", "y"]},
                        {"image": "b/2.jpg", "caption": "z"}]"#;
        let a = Annotations::parse(json, None).unwrap();
        assert_eq!(a.layout, AnnotationLayout::Lavis);
        assert_eq!(
            a.images,
            vec![PathBuf::from("a/1.jpg"), PathBuf::from("b/2.jpg")]
        );
        assert_eq!(a.texts, vec!["x", "y", "z"]);
        assert_eq!(a.txt2img, vec![0, 0, 1]);
        assert_eq!(a.img2txt, vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn karpathy_layout_needs_and_applies_a_split() {
        let json = br#"{"dataset": "coco", "images": [
            {"filepath": "val2014", "filename": "t1.jpg", "split": "test",
             "sentences": [{"raw": "A b.", "tokens": ["a", "b"]}, {"raw": "c"}]},
            {"filepath": "train2014", "filename": "r.jpg", "split": "train",
             "sentences": [{"raw": "r"}]},
            {"filename": "t2.jpg", "split": "test", "sentences": [{"raw": "d"}]}]}"#;
        let a = Annotations::parse(json, Some("test")).unwrap();
        assert_eq!(a.layout, AnnotationLayout::Karpathy);
        assert_eq!(
            a.images,
            vec![PathBuf::from("val2014/t1.jpg"), PathBuf::from("t2.jpg")]
        );
        assert_eq!(a.texts, vec!["A b.", "c", "d"]);
        assert_eq!(a.img2txt, vec![vec![0, 1], vec![2]]);
        let e = Annotations::parse(json, None).unwrap_err();
        assert!(
            e.contains("--split test") && e.contains("train (1 images)"),
            "{e}"
        );
        let e = Annotations::parse(json, Some("val")).unwrap_err();
        assert!(
            e.contains("\"val\"") && e.contains("test (2 images)"),
            "{e}"
        );
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        let e = Annotations::parse(b"[{\"image\": 3}]", None).unwrap_err();
        assert!(e.contains("LAVIS-layout"), "{e}");
        let e = Annotations::parse(b"{\"foo\": 1}", None).unwrap_err();
        assert!(e.contains("expected a LAVIS-layout list"), "{e}");
        let e = Annotations::parse(b"[1, 2", None).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = Annotations::parse(b"[]", None).unwrap_err();
        assert!(e.contains("no images"), "{e}");
        let e = Annotations::parse(br#"[{"image": "a.jpg", "caption": []}]"#, None).unwrap_err();
        assert!(e.contains("no captions"), "{e}");
        let e = Annotations::parse(br#"[{"image": "a.jpg", "caption": ["x"]}]"#, Some("test"))
            .unwrap_err();
        assert!(e.contains("drop --split"), "{e}");
    }
}
