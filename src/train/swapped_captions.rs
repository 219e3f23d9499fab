//! Hard negative captions made by changing one fact of a true caption.
//!
//! ITM learns from the negatives it is shown. The ones BLIP-2 draws from the batch (the texts
//! ITC finds most similar) rarely differ from the positive in exactly one fact, which is where
//! the demo's small ITM head fails ("a small green triangle on a beige background" and "a small
//! green star on a beige background" both look right to it). A caption with one word changed to
//! another of its kind ("triangle" → "star", "left" → "right", "two" → "three") or with two
//! colour words exchanged ("a red circle and a blue square" → "a blue circle and a red square")
//! is false of the image while sharing everything else with the truth, so it can only be told
//! apart by checking that fact (the negatives of NegCLIP, Yuksekgonul et al., ICLR 2023).
//!
//! The word classes are those of `quarry synth`'s captions (which name each object's size,
//! colour and shape, and its place or count), where every such change makes the caption false.
//! In free-form captions most such changes do too, but not all ("a red and white flag" with its
//! colours exchanged), so this is a training option, not a default.
//!
//! One more change is drawn only when asked ([`SwapKinds::multiply_objects`], so that runs
//! without it draw what they drew before): one object made many, "a small red circle above a
//! blue square" → "three small red circles above a blue square". How many objects a scene
//! holds is where the demo's ITM errs more than ITC (`tools/itm-error-breakdown.py`): on the
//! validation scenes (seed 3) LAVIS's re-ranking of the committed model puts a scene of
//! another kind (one object, a pair, a count) first for 47 of 756 texts, ITC for 22; for
//! count captions, a scene with fewer objects 21 times against 14. The batch rarely shows ITM
//! that mistake: ITC ranks such scenes low, so they are seldom drawn as hard negatives, yet
//! they are among the 16 candidates ITM re-ranks. The scenes `quarry synth` writes captions
//! with "a colour shape" for hold one or two objects, so three or four are always false.
//! Measured (k13 + 1 epoch with it, 25 min): ITM prefers the true caption to this change
//! 88.0 → 92.6 % of the time on validation, but re-ranked R@1 moved within noise
//! (66.0 → 66.4, ITC 69.3 → 69.7).
//!
//! Measured on the demo model (stage-1 step k9 continued 3 epochs with them as k12, then 2
//! more as k13; 60 and 38 min, ~17 pairs/s on 2 CPU cores against 26.6 without), ITM-re-ranked
//! text→image R@1 on the test scenes (seed 2) 67.8 → 68.8 → 69.1 and on the validation scenes
//! (seed 3) 64.2 → 64.0 → 66.0, ITC's held (71.1 → 71.6; 69.2 → 69.3): a small gain, not
//! enough for ITM to rank ITC's candidates better than ITC. ITM did learn the facts, on
//! held-out scenes too (`examples/itm_fact_check.rs`, true caption over its swapped copy, k9 →
//! k13: shape 77.5 → 81.2 %, two colours exchanged 80.9 → 87.5 %, size 90.2 → 94.6 %), but
//! not places and relations (57 → 56 %, ITC 53 → 50 %: chance), which the frozen encoder does
//! not seem to give the Q-Former (issue #7).

use crate::synth::rng::SplitMix64;
use crate::synth::scene::{Background, Color, Shape};

/// Words that can stand for one another; changing one into another changes the fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WordClass {
    Colour,
    Shape,
    Shapes,
    Size,
    Count,
    Direction,
}

const SIZES: [&str; 2] = ["small", "large"];
const COUNTS: [&str; 3] = ["two", "three", "four"];
/// Opposite pairs: a direction changes only into its opposite ("top" → "bottom", not "left":
/// "in the top left" → "in the left left" would not be a caption).
const OPPOSITES: [(&str, &str); 3] = [("left", "right"), ("top", "bottom"), ("above", "below")];

fn colours() -> Vec<&'static str> {
    let mut words: Vec<&str> = Color::ALL.iter().map(|c| c.name()).collect();
    for b in Background::ALL {
        if !words.contains(&b.name()) {
            words.push(b.name());
        }
    }
    words
}

fn shapes() -> Vec<String> {
    Shape::ALL.iter().map(|s| s.name().to_string()).collect()
}

fn plural_shapes() -> Vec<String> {
    Shape::ALL
        .iter()
        .map(|s| format!("{}s", s.name()))
        .collect()
}

fn class_of(word: &str) -> Option<WordClass> {
    if colours().contains(&word) {
        Some(WordClass::Colour)
    } else if shapes().iter().any(|s| s == word) {
        Some(WordClass::Shape)
    } else if plural_shapes().iter().any(|s| s == word) {
        Some(WordClass::Shapes)
    } else if SIZES.contains(&word) {
        Some(WordClass::Size)
    } else if COUNTS.contains(&word) {
        Some(WordClass::Count)
    } else if OPPOSITES.iter().any(|(a, b)| *a == word || *b == word) {
        Some(WordClass::Direction)
    } else {
        None
    }
}

/// The words `word` (of `class`) can be changed into: every other word of its class, or its
/// opposite for a direction.
fn replacements(word: &str, class: WordClass) -> Vec<String> {
    let others = |all: Vec<String>| all.into_iter().filter(|w| w != word).collect();
    match class {
        WordClass::Colour => others(colours().into_iter().map(String::from).collect()),
        WordClass::Shape => others(shapes()),
        WordClass::Shapes => others(plural_shapes()),
        WordClass::Size => others(SIZES.iter().map(|w| w.to_string()).collect()),
        WordClass::Count => others(COUNTS.iter().map(|w| w.to_string()).collect()),
        WordClass::Direction => OPPOSITES
            .iter()
            .filter_map(|&(a, b)| match word {
                w if w == a => Some(b.to_string()),
                w if w == b => Some(a.to_string()),
                _ => None,
            })
            .collect(),
    }
}

/// Counts an object named once is multiplied to.
const MANY: [&str; 2] = ["three", "four"];

/// One way of making a caption false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Change one word of this class into another of its class.
    Word(WordClass),
    /// Exchange two different colour words (binds each colour to the other object).
    ExchangeColours,
    /// Make one object many: "a (size) colour shape" → "three (size) colour shapes".
    MultiplyObject,
}

/// Which changes besides the word changes and colour exchanges are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapKinds {
    /// One object named with "a" or "one" made three or four ([`FalseFact::Multiplied`]).
    pub multiply_objects: bool,
}

/// The fact a swapped caption gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FalseFact {
    /// A colour (of an object or of the background) changed.
    Colour,
    /// A shape changed (singular or plural).
    Shape,
    /// "small" ↔ "large".
    Size,
    /// "two", "three" or "four" changed.
    Count,
    /// A place or relation turned into its opposite.
    Direction,
    /// Two colours exchanged: each colour named with the other object.
    ColourBinding,
    /// One object made three or four ([`SwapKinds::multiply_objects`]).
    Multiplied,
}

impl FalseFact {
    /// Every kind, in a fixed order.
    pub const ALL: [FalseFact; 7] = [
        FalseFact::Colour,
        FalseFact::Shape,
        FalseFact::Size,
        FalseFact::Count,
        FalseFact::Direction,
        FalseFact::ColourBinding,
        FalseFact::Multiplied,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            FalseFact::Colour => "colour",
            FalseFact::Shape => "shape",
            FalseFact::Size => "size",
            FalseFact::Count => "count",
            FalseFact::Direction => "direction",
            FalseFact::ColourBinding => "colours exchanged",
            FalseFact::Multiplied => "one made many",
        }
    }
}

/// A caption with one fact changed, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwappedCaption {
    /// The false caption.
    pub text: String,
    /// What it gets wrong.
    pub fact: FalseFact,
}

impl Change {
    fn fact(self) -> FalseFact {
        match self {
            Change::Word(WordClass::Colour) => FalseFact::Colour,
            Change::Word(WordClass::Shape | WordClass::Shapes) => FalseFact::Shape,
            Change::Word(WordClass::Size) => FalseFact::Size,
            Change::Word(WordClass::Count) => FalseFact::Count,
            Change::Word(WordClass::Direction) => FalseFact::Direction,
            Change::ExchangeColours => FalseFact::ColourBinding,
            Change::MultiplyObject => FalseFact::Multiplied,
        }
    }
}

/// A caption's words in lower case, and the class of each.
fn read_words(caption: &str) -> (Vec<String>, Vec<Option<WordClass>>) {
    let words: Vec<String> = caption.split_whitespace().map(str::to_lowercase).collect();
    let classes = words.iter().map(|w| class_of(w)).collect();
    (words, classes)
}

/// Where `words` name one object that can be multiplied: (its "a" or "one", its shape), the
/// article followed by an optional size, a colour and a singular shape.
fn single_objects(words: &[String], classes: &[Option<WordClass>]) -> Vec<(usize, usize)> {
    (0..words.len())
        .filter(|&i| matches!(words[i].as_str(), "a" | "one"))
        .filter_map(|i| {
            let colour = if classes.get(i + 1) == Some(&Some(WordClass::Size)) {
                i + 2
            } else {
                i + 1
            };
            (classes.get(colour) == Some(&Some(WordClass::Colour))
                && classes.get(colour + 1) == Some(&Some(WordClass::Shape)))
            .then_some((i, colour + 1))
        })
        .collect()
}

/// `caption` with one object it names once made three or four ("a red circle above a blue
/// square" → "four red circles above a blue square"), or `None` when it names none that way.
pub fn multiply_one_object(caption: &str, rng: &mut SplitMix64) -> Option<SwappedCaption> {
    let (words, classes) = read_words(caption);
    let at = single_objects(&words, &classes);
    (!at.is_empty()).then(|| multiplied(words, &at, rng))
}

fn multiplied(
    mut words: Vec<String>,
    at: &[(usize, usize)],
    rng: &mut SplitMix64,
) -> SwappedCaption {
    let (article, shape) = *rng.pick(at);
    words[article] = rng.pick(&MANY).to_string();
    words[shape].push('s');
    SwappedCaption {
        text: words.join(" "),
        fact: FalseFact::Multiplied,
    }
}

/// A caption that differs from `caption` in one fact, or `None` when it names nothing this
/// module knows how to change. The kind of change is drawn uniformly among those the caption
/// allows (so that frequent words, the colours, do not crowd out the rest), then the word, then
/// its replacement. Words are compared in lower case; the result joins the words with single
/// spaces.
pub fn swap_one_fact(caption: &str, rng: &mut SplitMix64) -> Option<SwappedCaption> {
    swap_one_fact_of(caption, SwapKinds::default(), rng)
}

/// [`swap_one_fact`] with the further changes `kinds` asks for drawn among the rest.
pub fn swap_one_fact_of(
    caption: &str,
    kinds: SwapKinds,
    rng: &mut SplitMix64,
) -> Option<SwappedCaption> {
    let (words, classes) = read_words(caption);
    let colour_positions: Vec<usize> = (0..words.len())
        .filter(|&i| classes[i] == Some(WordClass::Colour))
        .collect();
    let mut changes: Vec<Change> = Vec::new();
    for class in classes.iter().flatten() {
        if !changes.contains(&Change::Word(*class)) {
            changes.push(Change::Word(*class));
        }
    }
    // Two colours can be exchanged when they differ and so do the words they describe: "a
    // red square and a blue square" exchanged is the same scene.
    let exchangeable =
        |i: usize, j: usize| words[i] != words[j] && words.get(i + 1) != words.get(j + 1);
    let exchanges: Vec<(usize, usize)> = colour_positions
        .iter()
        .flat_map(|&i| colour_positions.iter().map(move |&j| (i, j)))
        .filter(|&(i, j)| i < j && exchangeable(i, j))
        .collect();
    if !exchanges.is_empty() {
        changes.push(Change::ExchangeColours);
    }
    let singles = if kinds.multiply_objects {
        single_objects(&words, &classes)
    } else {
        Vec::new()
    };
    if !singles.is_empty() {
        changes.push(Change::MultiplyObject);
    }
    if changes.is_empty() {
        return None;
    }
    let mut out = words.clone();
    let change = *rng.pick(&changes);
    match change {
        Change::Word(class) => {
            let at: Vec<usize> = (0..words.len())
                .filter(|&i| classes[i] == Some(class))
                .collect();
            let i = *rng.pick(&at);
            out[i] = rng.pick(&replacements(&words[i], class)).clone();
        }
        Change::ExchangeColours => {
            let (i, j) = *rng.pick(&exchanges);
            out.swap(i, j);
        }
        Change::MultiplyObject => return Some(multiplied(out, &singles, rng)),
    }
    Some(SwappedCaption {
        text: out.join(" "),
        fact: change.fact(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::scene::Scene;

    fn differing_words(a: &str, b: &str) -> Vec<(String, String)> {
        a.split(' ')
            .zip(b.split(' '))
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect()
    }

    #[test]
    fn one_word_changes_within_its_class_or_two_colours_are_exchanged() {
        let caption = "a small red circle to the left of a blue square";
        let mut seen_kinds = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let mut rng = SplitMix64::for_scene(5, seed);
            let swapped = swap_one_fact(caption, &mut rng).unwrap();
            let text = &swapped.text;
            assert_ne!(text, caption);
            assert_eq!(text.split(' ').count(), caption.split(' ').count());
            let diff = differing_words(caption, text);
            let fact = match diff.as_slice() {
                [(from, to)] => {
                    let class = class_of(from).unwrap();
                    assert_eq!(class_of(to), Some(class), "{from} -> {to}");
                    if class == WordClass::Direction {
                        assert_eq!((from.as_str(), to.as_str()), ("left", "right"));
                    }
                    Change::Word(class).fact()
                }
                [(a, b), (c, d)] => {
                    assert_eq!((a, b), (d, c), "an exchange of two colours");
                    assert_eq!(class_of(a), Some(WordClass::Colour));
                    FalseFact::ColourBinding
                }
                other => panic!("{text}: {other:?}"),
            };
            assert_eq!(swapped.fact, fact, "{text}");
            seen_kinds.insert(fact);
        }
        // Every change this caption allows is drawn (it has no count).
        let expected = [
            FalseFact::Colour,
            FalseFact::Shape,
            FalseFact::Size,
            FalseFact::Direction,
            FalseFact::ColourBinding,
        ];
        assert_eq!(seen_kinds.into_iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn captions_without_known_words_give_nothing_and_plurals_stay_plural() {
        let mut rng = SplitMix64::for_scene(1, 1);
        assert_eq!(swap_one_fact("a dog on a sofa", &mut rng), None);
        assert_eq!(swap_one_fact("", &mut rng), None);
        for seed in 0..50 {
            let mut rng = SplitMix64::for_scene(2, seed);
            let s = swap_one_fact("Three Red Stars", &mut rng).unwrap().text;
            let words: Vec<&str> = s.split(' ').collect();
            assert!(COUNTS.contains(&words[0]), "{s}");
            assert!(words[2].ends_with('s'), "{s}");
        }
    }

    #[test]
    fn one_object_is_made_many_only_when_asked() {
        let caption = "a small red circle to the left of a blue square";
        let asked = SwapKinds {
            multiply_objects: true,
        };
        let mut made = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let plain = swap_one_fact(caption, &mut SplitMix64::for_scene(5, seed)).unwrap();
            assert_ne!(plain.fact, FalseFact::Multiplied);
            let swapped =
                swap_one_fact_of(caption, asked, &mut SplitMix64::for_scene(5, seed)).unwrap();
            if swapped.fact == FalseFact::Multiplied {
                made.insert(swapped.text);
            }
        }
        let expected: std::collections::BTreeSet<String> = [
            "three small red circles to the left of a blue square",
            "four small red circles to the left of a blue square",
            "a small red circle to the left of three blue squares",
            "a small red circle to the left of four blue squares",
        ]
        .map(String::from)
        .into();
        assert_eq!(made, expected);
        // Only an object named once, by "a" or "one", with its colour and shape.
        let mut rng = SplitMix64::for_scene(3, 3);
        for nothing in [
            "three red stars",
            "a group of three red stars",
            "a beige picture",
        ] {
            assert_eq!(multiply_one_object(nothing, &mut rng), None, "{nothing}");
        }
        let one =
            multiply_one_object("One large green square on a beige background", &mut rng).unwrap();
        assert!(
            one.text == "three large green squares on a beige background"
                || one.text == "four large green squares on a beige background",
            "{}",
            one.text
        );
    }

    /// Whether `caption` contradicts `scene` in a colour, shape, size, count or background
    /// word, read the way `quarry synth` writes captions: size, colour and shape of one object
    /// stand together ("small red circle"), a count starts the caption, and a background colour
    /// comes before "background" or "picture".
    fn contradicts(caption: &str, scene: &Scene) -> bool {
        let w: Vec<&str> = caption.split(' ').collect();
        let shape_of = |word: &str| {
            Shape::ALL
                .into_iter()
                .find(|s| word == s.name() || word.strip_suffix('s') == Some(s.name()))
        };
        let colour_of = |word: &str| colours().into_iter().find(|c| *c == word);
        for i in 0..w.len() {
            if let (Some(colour), Some(shape)) =
                (colour_of(w[i]), w.get(i + 1).and_then(|x| shape_of(x)))
            {
                let drawn: Vec<_> = scene
                    .objects
                    .iter()
                    .filter(|o| o.color.name() == colour && o.shape == shape)
                    .collect();
                // Each mention of one object in a caption is another object ("a purple circle
                // above a purple circle" needs two).
                let mentions = (0..w.len().saturating_sub(1))
                    .filter(|&j| w[j] == w[i] && w[j + 1] == w[i + 1])
                    .count();
                let needed = if w[i + 1].ends_with('s') { 1 } else { mentions };
                if drawn.len() < needed {
                    return true;
                }
                if let Some(size) = i
                    .checked_sub(1)
                    .and_then(|j| SIZES.iter().position(|s| *s == w[j]))
                {
                    if drawn.iter().all(|o| o.size.name() != SIZES[size]) {
                        return true;
                    }
                }
            }
            if matches!(w.get(i + 1), Some(&"background" | &"picture"))
                && w[i] != scene.background.name()
            {
                return true;
            }
        }
        if let Some(n) = w.iter().find_map(|x| COUNTS.iter().position(|c| c == x)) {
            return n + 2 != scene.objects.len();
        }
        false
    }

    /// On `quarry synth` scenes every change is false of the scene: none equals one of its
    /// captions, and every change but a direction's contradicts the scene's facts (a
    /// direction's is false by construction: the scenes' places and relations hold by a
    /// margin, so the opposite never does).
    #[test]
    fn every_change_of_a_synthetic_caption_is_false_of_its_scene() {
        let every_kind = SwapKinds {
            multiply_objects: true,
        };
        let mut checked = 0;
        let mut facts = std::collections::BTreeSet::new();
        for index in 0..300 {
            let scene = Scene::sample(&mut SplitMix64::for_scene(17, index));
            let captions = scene.captions();
            for (k, caption) in captions.iter().enumerate() {
                assert!(
                    !contradicts(caption, &scene),
                    "{caption} is true of {scene:?}"
                );
                let mut rng = SplitMix64::for_scene(index, k as u64);
                let swapped = swap_one_fact_of(caption, every_kind, &mut rng).unwrap();
                let text = &swapped.text;
                assert!(!captions.contains(text), "{text} is true of {scene:?}");
                if swapped.fact != FalseFact::Direction {
                    assert!(contradicts(text, &scene), "{text} vs {scene:?}");
                }
                facts.insert(swapped.fact);
                checked += 1;
            }
        }
        assert!(checked > 1000);
        assert_eq!(
            facts.len(),
            FalseFact::ALL.len(),
            "every kind of change is checked"
        );
    }
}
