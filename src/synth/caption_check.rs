//! Caption accuracy on synthetic scenes: does a generated caption name what was drawn?
//!
//! Exact match against the reference captions is too strict to follow training by (a caption
//! can be true in words no reference uses) and BLEU-style overlap rewards the wrong things
//! ("a red circle" for a red square scores high). Synthetic scenes know their facts, so a
//! caption can be checked directly:
//!
//! - **colour right**: it names at least one object colour, every object colour it names is
//!   the colour of a drawn object, and every background colour it names ("a gray background",
//!   "a beige picture") is the background's;
//! - **shape right**: it names at least one shape, and every shape it names (singular or
//!   plural) is drawn;
//! - **object right**: it names a colour immediately followed by a shape ("red circle",
//!   "red circles") that is one drawn object — the binding test: for a red circle and a blue
//!   square, "a red square and a blue circle" has the right colours and shapes but no right
//!   object. The scenes' own captions put the size word before the colour ("a small red
//!   circle"), so no word between colour and shape is allowed;
//! - **exact match**: it equals one of the references after normalising case, spaces and a
//!   final full stop.
//!
//! Colour and shape words outside the scenes' vocabulary that a general captioner might use
//! ("pink", "rectangle") count as named and therefore as wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::scene::{Background, Color, Layout, Scene, Shape};
use super::ANNOTATIONS_FILE;

/// Colour words no scene uses; naming one is always a wrong colour.
const OTHER_COLORS: [&str; 10] = [
    "pink", "brown", "cyan", "violet", "gold", "silver", "magenta", "navy", "teal", "grey",
];

/// Shape words no scene uses; naming one is always a wrong shape.
const OTHER_SHAPES: [&str; 8] = [
    "rectangle",
    "oval",
    "ellipse",
    "hexagon",
    "pentagon",
    "heart",
    "cross",
    "polygon",
];

/// Nouns that make the colour before them the background's ("a gray background").
const BACKGROUND_NOUNS: [&str; 3] = ["background", "picture", "backdrop"];

/// Why annotations could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptionCheckError {
    /// The annotation file could not be read.
    #[error("reading {path}: {source} (is this a `quarry synth --out` folder?)")]
    Read {
        /// The annotation file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The annotation file is not a `quarry synth` annotation file.
    #[error(
        "{path} is not a `quarry synth` annotation file: {reason}. Caption accuracy needs the \
         scene facts that `quarry synth` writes next to each caption"
    )]
    Format {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong, with the entry's index.
        reason: String,
    },
}

/// The kind of a scene, as `annotations.json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SceneKind {
    /// One object.
    Single,
    /// Two objects in a spatial relation.
    Pair,
    /// Two to four identical objects.
    Count,
}

impl SceneKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            SceneKind::Single => "single",
            SceneKind::Pair => "pair",
            SceneKind::Count => "count",
        }
    }
}

/// What a caption is checked against: one drawn object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ObjectFacts {
    /// Its colour.
    pub color: Color,
    /// Its shape.
    pub shape: Shape,
}

/// What a caption is checked against: a scene's background, objects and kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SceneFacts {
    /// The background.
    pub background: Background,
    /// The drawn objects.
    pub objects: Vec<ObjectFacts>,
    /// The scene's kind.
    pub kind: SceneKind,
}

impl From<&Scene> for SceneFacts {
    fn from(scene: &Scene) -> Self {
        SceneFacts {
            background: scene.background,
            objects: scene
                .objects
                .iter()
                .map(|o| ObjectFacts {
                    color: o.color,
                    shape: o.shape,
                })
                .collect(),
            kind: match scene.layout {
                Layout::Single { .. } => SceneKind::Single,
                Layout::Pair { .. } => SceneKind::Pair,
                Layout::Count { .. } => SceneKind::Count,
            },
        }
    }
}

/// One entry of a `quarry synth` annotation file, as read back.
#[derive(Debug, Clone, Deserialize)]
pub struct SceneAnnotation {
    /// Image path relative to the folder.
    pub image: String,
    /// Reference captions.
    pub caption: Vec<String>,
    /// The scene's facts.
    pub scene: SceneFacts,
}

/// Reads `DIR/annotations.json` as written by [`super::generate`].
pub fn load_annotations(dir: &Path) -> Result<Vec<SceneAnnotation>, CaptionCheckError> {
    let path = dir.join(ANNOTATIONS_FILE);
    let bytes = std::fs::read(&path).map_err(|source| CaptionCheckError::Read {
        path: path.clone(),
        source,
    })?;
    let format = |reason: String| CaptionCheckError::Format {
        path: path.clone(),
        reason,
    };
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| format(format!("not a JSON list ({e})")))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            if entry.get("scene").is_none() {
                return Err(format(format!("entry {i} has no `scene`")));
            }
            serde_json::from_value(entry).map_err(|e| format(format!("entry {i}: {e}")))
        })
        .collect()
}

/// The verdict on one caption (definitions in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptionVerdict {
    /// Names a right object colour and no wrong colour.
    pub color_right: bool,
    /// Names a right shape and no wrong shape.
    pub shape_right: bool,
    /// Names a colour+shape pair that is a drawn object.
    pub object_right: bool,
    /// Equals a reference caption (normalised).
    pub exact: bool,
}

/// The canonical colour a word names, if it names one.
fn color_word(word: &str) -> Option<&'static str> {
    Color::ALL
        .iter()
        .map(|c| c.name())
        .chain(Background::ALL.iter().map(|b| b.name()))
        .chain(OTHER_COLORS)
        .find(|name| *name == word)
        .map(|name| if name == "grey" { "gray" } else { name })
}

/// The canonical shape a word names (singular or plural), if it names one.
fn shape_word(word: &str) -> Option<&'static str> {
    let singular = word.strip_suffix('s').unwrap_or(word);
    Shape::ALL
        .iter()
        .map(|s| s.name())
        .chain(OTHER_SHAPES)
        .find(|name| *name == word || *name == singular)
}

/// Lower-case words: runs of letters.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Lower case, single spaces, no surrounding space or final full stop.
fn normalise(text: &str) -> String {
    let lower = text.trim().trim_end_matches('.').to_lowercase();
    lower.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Judges one caption of a scene against its facts and references.
pub fn judge(caption: &str, scene: &SceneFacts, references: &[String]) -> CaptionVerdict {
    let words = words(caption);
    let drawn_colors: Vec<&str> = scene.objects.iter().map(|o| o.color.name()).collect();
    let drawn_shapes: Vec<&str> = scene.objects.iter().map(|o| o.shape.name()).collect();
    let mut object_colors = Vec::new();
    let mut background_right = true;
    let mut shapes = Vec::new();
    let mut object_right = false;
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).map(String::as_str);
        if let Some(color) = color_word(word) {
            if next.is_some_and(|n| BACKGROUND_NOUNS.contains(&n)) {
                background_right &= color == scene.background.name();
            } else {
                object_colors.push(color);
                if let Some(shape) = next.and_then(shape_word) {
                    object_right |= scene
                        .objects
                        .iter()
                        .any(|o| o.color.name() == color && o.shape.name() == shape);
                }
            }
        }
        if let Some(shape) = shape_word(word) {
            shapes.push(shape);
        }
    }
    let caption = normalise(caption);
    CaptionVerdict {
        color_right: !object_colors.is_empty()
            && object_colors.iter().all(|c| drawn_colors.contains(c))
            && background_right,
        shape_right: !shapes.is_empty() && shapes.iter().all(|s| drawn_shapes.contains(s)),
        object_right,
        exact: references.iter().any(|r| normalise(r) == caption),
    }
}

/// Fractions of captions that are right, over a set of captions.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct CaptionAccuracy {
    /// Captions judged.
    pub images: usize,
    /// Fraction with the colours right.
    pub color_right: f64,
    /// Fraction with the shapes right.
    pub shape_right: f64,
    /// Fraction naming a right colour+shape object.
    pub object_right: f64,
    /// Fraction equal to a reference.
    pub exact_match: f64,
}

/// Counts verdicts, overall and per scene kind.
#[derive(Debug, Clone, Default)]
pub struct CaptionTally {
    counts: BTreeMap<Option<SceneKind>, [usize; 5]>,
}

/// The tally's result: overall and per scene kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionReport {
    /// Over every caption.
    #[serde(flatten)]
    pub overall: CaptionAccuracy,
    /// Per scene kind ("single", "pair", "count"), kinds without captions left out.
    pub by_kind: BTreeMap<&'static str, CaptionAccuracy>,
}

impl CaptionTally {
    /// Adds the verdict on one caption of a scene of `kind`.
    pub fn add(&mut self, kind: SceneKind, verdict: CaptionVerdict) {
        for key in [None, Some(kind)] {
            let c = self.counts.entry(key).or_default();
            c[0] += 1;
            c[1] += usize::from(verdict.color_right);
            c[2] += usize::from(verdict.shape_right);
            c[3] += usize::from(verdict.object_right);
            c[4] += usize::from(verdict.exact);
        }
    }

    /// The fractions.
    pub fn report(&self) -> CaptionReport {
        let accuracy = |c: &[usize; 5]| {
            let n = c[0].max(1) as f64;
            CaptionAccuracy {
                images: c[0],
                color_right: c[1] as f64 / n,
                shape_right: c[2] as f64 / n,
                object_right: c[3] as f64 / n,
                exact_match: c[4] as f64 / n,
            }
        };
        CaptionReport {
            overall: self.counts.get(&None).map(accuracy).unwrap_or_default(),
            by_kind: self
                .counts
                .iter()
                .filter_map(|(k, c)| k.map(|k| (k.name(), accuracy(c))))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rng::SplitMix64;
    use super::*;

    /// A small red circle above a large blue square, on gray.
    fn pair() -> SceneFacts {
        SceneFacts {
            background: Background::Gray,
            objects: vec![
                ObjectFacts {
                    color: Color::Red,
                    shape: Shape::Circle,
                },
                ObjectFacts {
                    color: Color::Blue,
                    shape: Shape::Square,
                },
            ],
            kind: SceneKind::Pair,
        }
    }

    fn verdict(color: bool, shape: bool, object: bool, exact: bool) -> CaptionVerdict {
        CaptionVerdict {
            color_right: color,
            shape_right: shape,
            object_right: object,
            exact,
        }
    }

    /// Captions with their verdicts, worked out by hand.
    fn cases() -> Vec<(&'static str, CaptionVerdict)> {
        vec![
            // All right, and a reference (after case and full-stop normalisation).
            (
                "A small red circle above a blue square.",
                verdict(true, true, true, true),
            ),
            // Wrong colour: green is not drawn; the blue square is still a right object.
            (
                "a small green circle above a blue square",
                verdict(false, true, true, false),
            ),
            // Wrong shape: no triangle; the blue square is a right object.
            (
                "a red triangle above a blue square",
                verdict(true, false, true, false),
            ),
            // Swapped binding: right colours, right shapes, no right object.
            (
                "a red square above a blue circle",
                verdict(true, true, false, false),
            ),
            // Wrong background colour makes the colours wrong.
            (
                "a red circle on a white background",
                verdict(false, true, true, false),
            ),
            // Right background but no object colour or shape named.
            (
                "a shape on a gray background",
                verdict(false, false, false, false),
            ),
            // Plural shapes count.
            ("two red circles", verdict(true, true, true, false)),
            // A colour outside the scenes' vocabulary is a wrong colour.
            ("a pink circle", verdict(false, true, false, false)),
        ]
    }

    #[test]
    fn hand_made_captions_get_the_hand_computed_verdicts() {
        let scene = pair();
        let references = vec!["a small red circle above a blue square".to_string()];
        for (caption, expected) in cases() {
            assert_eq!(
                judge(caption, &scene, &references),
                expected,
                "caption {caption:?}"
            );
        }
    }

    #[test]
    fn fractions_are_the_hand_counted_ones() {
        let scene = pair();
        let references = vec!["a small red circle above a blue square".to_string()];
        let mut tally = CaptionTally::default();
        for (caption, _) in cases() {
            tally.add(scene.kind, judge(caption, &scene, &references));
        }
        // One single-object scene, captioned wrongly (a yellow star, captioned as a circle).
        let single = SceneFacts {
            background: Background::Black,
            objects: vec![ObjectFacts {
                color: Color::Yellow,
                shape: Shape::Star,
            }],
            kind: SceneKind::Single,
        };
        tally.add(SceneKind::Single, judge("a yellow circle", &single, &[]));
        let report = tally.report();
        // Pair cases: colour right in cases 1, 3, 4, 7; shape right in 1, 2, 4, 5, 7, 8;
        // object right in 1, 2, 3, 5, 7; exact in 1. The single: colour right only.
        let pairs = report.by_kind["pair"];
        assert_eq!(pairs.images, 8);
        assert_eq!(pairs.color_right, 4.0 / 8.0);
        assert_eq!(pairs.shape_right, 6.0 / 8.0);
        assert_eq!(pairs.object_right, 5.0 / 8.0);
        assert_eq!(pairs.exact_match, 1.0 / 8.0);
        let singles = report.by_kind["single"];
        assert_eq!(
            (singles.images, singles.color_right, singles.shape_right),
            (1, 1.0, 0.0)
        );
        assert_eq!(report.overall.images, 9);
        assert_eq!(report.overall.color_right, 5.0 / 9.0);
        assert_eq!(report.overall.shape_right, 6.0 / 9.0);
        assert_eq!(report.overall.object_right, 5.0 / 9.0);
        assert_eq!(report.overall.exact_match, 1.0 / 9.0);
        assert!(!report.by_kind.contains_key("count"));
    }

    #[test]
    fn every_reference_caption_of_generated_scenes_is_judged_right() {
        for i in 0..600 {
            let scene = Scene::sample(&mut SplitMix64::for_scene(5, i));
            let facts = SceneFacts::from(&scene);
            let references = scene.captions();
            for caption in &references {
                assert_eq!(
                    judge(caption, &facts, &references),
                    verdict(true, true, true, true),
                    "{caption:?} of {scene:?}"
                );
            }
        }
    }

    #[test]
    fn annotation_files_round_trip_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let written = super::super::generate(
            dir.path(),
            super::super::SynthOptions {
                count: 4,
                seed: 3,
                size: 32,
            },
        )
        .unwrap();
        let read = load_annotations(dir.path()).unwrap();
        assert_eq!(read.len(), 4);
        for (w, r) in written.iter().zip(&read) {
            assert_eq!(w.image, r.image);
            assert_eq!(w.caption, r.caption);
            assert_eq!(SceneFacts::from(&w.scene), r.scene);
        }
        let lavis = tempfile::tempdir().unwrap();
        std::fs::write(
            lavis.path().join(ANNOTATIONS_FILE),
            r#"[{"image": "a.jpg", "caption": ["a dog"]}]"#,
        )
        .unwrap();
        let err = load_annotations(lavis.path()).unwrap_err();
        assert!(err.to_string().contains("entry 0 has no `scene`"), "{err}");
        let missing = load_annotations(&dir.path().join("nowhere")).unwrap_err();
        assert!(
            matches!(missing, CaptionCheckError::Read { .. }),
            "{missing}"
        );
    }
}
