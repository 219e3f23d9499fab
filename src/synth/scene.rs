//! What a synthetic scene contains and how it is described.
//!
//! A scene is one of three kinds, each chosen so that its captions are *compositional*: a model
//! can only match them by binding colour, shape, size, count and position together ("a small red
//! circle above a blue square" and "a small blue circle above a red square" differ only in the
//! binding). Positions are sampled so that every spatial word in a caption is true by a clear
//! margin.

use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;

/// A named colour an object can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
    /// White.
    White,
    /// Black.
    Black,
}

impl Color {
    /// Every object colour.
    pub const ALL: [Color; 8] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
        Color::White,
        Color::Black,
    ];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
            Color::White => "white",
            Color::Black => "black",
        }
    }

    /// The colour's centre in sRGB; rendering jitters around it so a name covers a range.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [214, 39, 40],
            Color::Green => [44, 160, 44],
            Color::Blue => [31, 90, 200],
            Color::Yellow => [240, 215, 40],
            Color::Purple => [128, 60, 170],
            Color::Orange => [250, 135, 20],
            Color::White => [245, 245, 240],
            Color::Black => [25, 25, 28],
        }
    }
}

/// A named background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// Near-white.
    White,
    /// Mid grey.
    Gray,
    /// Near-black.
    Black,
    /// Sand.
    Beige,
}

impl Background {
    /// Every background.
    pub const ALL: [Background; 4] = [
        Background::White,
        Background::Gray,
        Background::Black,
        Background::Beige,
    ];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Background::White => "white",
            Background::Gray => "gray",
            Background::Black => "black",
            Background::Beige => "beige",
        }
    }

    /// The background's sRGB colour.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::White => [236, 236, 232],
            Background::Gray => [128, 128, 128],
            Background::Black => [40, 40, 44],
            Background::Beige => [222, 200, 160],
        }
    }

    /// Object colours that stay visible on this background (white on white is not a scene).
    fn clashes_with(self, color: Color) -> bool {
        matches!(
            (self, color),
            (Background::White, Color::White)
                | (Background::Black, Color::Black)
                | (Background::Beige, Color::Yellow | Color::White)
                | (Background::Gray, Color::Purple)
        )
    }
}

/// An object's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upward equilateral triangle.
    Triangle,
    /// A five-pointed star.
    Star,
    /// A square standing on a corner.
    Diamond,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Diamond,
    ];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
        }
    }

    fn plural(self) -> String {
        format!("{}s", self.name())
    }
}

/// Small or large; the radius ranges do not overlap, so the word is always visibly true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// Radius 7–10 % of the image side.
    Small,
    /// Radius 14–18 % of the image side.
    Large,
}

impl Size {
    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    fn radius_range(self) -> (f32, f32) {
        match self {
            Size::Small => (0.07, 0.10),
            Size::Large => (0.14, 0.18),
        }
    }
}

/// One drawn object; positions and radius are fractions of the image side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    /// Colour name.
    pub color: Color,
    /// Outline.
    pub shape: Shape,
    /// Size class.
    pub size: Size,
    /// Centre x in [0, 1], left to right.
    pub x: f32,
    /// Centre y in [0, 1], top to bottom.
    pub y: f32,
    /// Circumradius as a fraction of the side.
    pub radius: f32,
    /// Colour jitter applied at render time, per channel, in levels.
    #[serde(skip)]
    pub tint: [i16; 3],
}

/// How the second object of a pair sits relative to the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The first is left of the second.
    LeftOf,
    /// The first is right of the second.
    RightOf,
    /// The first is above the second.
    Above,
    /// The first is below the second.
    Below,
}

impl Relation {
    const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    fn inverse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }
}

/// The kind of scene, which decides how it is described.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// One object somewhere in a 3×3 grid of regions.
    Single {
        /// Where, in words ("top left", "center", ...).
        region: &'static str,
    },
    /// Two different objects; `objects[0]` is `relation` `objects[1]`.
    Pair {
        /// The spatial relation of the first object to the second.
        relation: Relation,
    },
    /// Two to four identical objects scattered.
    Count {
        /// How many.
        count: usize,
    },
}

/// One scene: what is drawn, on what, and its captions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    /// Background colour.
    pub background: Background,
    /// Drawn objects.
    pub objects: Vec<Object>,
    /// The scene's kind.
    #[serde(flatten)]
    pub layout: Layout,
    /// Brightness gradient across the image, in levels per side, for lighting variety.
    #[serde(skip)]
    pub light: (f32, f32),
}

const REGIONS: [(&str, f32, f32); 9] = [
    ("top left", 0.22, 0.22),
    ("top", 0.5, 0.22),
    ("top right", 0.78, 0.22),
    ("left", 0.22, 0.5),
    ("center", 0.5, 0.5),
    ("right", 0.78, 0.5),
    ("bottom left", 0.22, 0.78),
    ("bottom", 0.5, 0.78),
    ("bottom right", 0.78, 0.78),
];

fn count_word(n: usize) -> &'static str {
    ["zero", "one", "two", "three", "four", "five"][n.min(5)]
}

impl Scene {
    /// Draws a scene from the stream.
    pub fn sample(rng: &mut SplitMix64) -> Scene {
        let background = *rng.pick(&Background::ALL);
        let light = (rng.range(-18.0, 18.0), rng.range(-18.0, 18.0));
        let kind = rng.below(10);
        let (objects, layout) = if kind < 3 {
            Self::sample_single(rng, background)
        } else if kind < 8 {
            Self::sample_pair(rng, background)
        } else {
            Self::sample_count(rng, background)
        };
        Scene {
            background,
            objects,
            layout,
            light,
        }
    }

    fn sample_color(rng: &mut SplitMix64, background: Background, not: Option<Color>) -> Color {
        loop {
            let c = *rng.pick(&Color::ALL);
            if !background.clashes_with(c) && Some(c) != not {
                return c;
            }
        }
    }

    fn sample_object(
        rng: &mut SplitMix64,
        color: Color,
        shape: Shape,
        size: Size,
        x: f32,
        y: f32,
    ) -> Object {
        let (lo, hi) = size.radius_range();
        let jitter = |rng: &mut SplitMix64| rng.range(-14.0, 14.0) as i16;
        Object {
            color,
            shape,
            size,
            x,
            y,
            radius: rng.range(lo, hi),
            tint: [jitter(rng), jitter(rng), jitter(rng)],
        }
    }

    fn sample_single(rng: &mut SplitMix64, background: Background) -> (Vec<Object>, Layout) {
        let (region, cx, cy) = *rng.pick(&REGIONS);
        let color = Self::sample_color(rng, background, None);
        let shape = *rng.pick(&Shape::ALL);
        let size = *rng.pick(&[Size::Small, Size::Large]);
        let x = cx + rng.range(-0.03, 0.03);
        let y = cy + rng.range(-0.03, 0.03);
        let mut object = Self::sample_object(rng, color, shape, size, x, y);
        // Keep the object inside the frame: regions near an edge cap the radius (at 0.17 at
        // worst, still inside the large range).
        let room = x.min(1.0 - x).min(y).min(1.0 - y) - 0.02;
        object.radius = object.radius.min(room);
        (vec![object], Layout::Single { region })
    }

    fn sample_pair(rng: &mut SplitMix64, background: Background) -> (Vec<Object>, Layout) {
        let relation = *rng.pick(&Relation::ALL);
        let first_color = Self::sample_color(rng, background, None);
        let second_color = Self::sample_color(rng, background, Some(first_color));
        let first_shape = *rng.pick(&Shape::ALL);
        let second_shape = *rng.pick(&Shape::ALL);
        let first_size = *rng.pick(&[Size::Small, Size::Large]);
        let second_size = *rng.pick(&[Size::Small, Size::Large]);
        let mut first = Self::sample_object(rng, first_color, first_shape, first_size, 0.0, 0.0);
        let mut second =
            Self::sample_object(rng, second_color, second_shape, second_size, 0.0, 0.0);
        // On the main axis each object sits near its own side (gap between the centres at
        // least 1 - 2·0.18 - 0.16 = 0.48 of the side, so they never touch); on the cross axis the
        // centres differ by at most 0.12, so the relation word is unambiguous.
        let near = first.radius + 0.03 + rng.range(0.0, 0.05);
        let far = 1.0 - second.radius - 0.03 - rng.range(0.0, 0.05);
        let cross = rng.range(0.36, 0.64);
        let cross2 = (cross + rng.range(-0.12, 0.12)).clamp(0.3, 0.7);
        let (a, b) = match relation {
            Relation::LeftOf => ((near, cross), (far, cross2)),
            Relation::RightOf => ((1.0 - near, cross), (1.0 - far, cross2)),
            Relation::Above => ((cross, near), (cross2, far)),
            Relation::Below => ((cross, 1.0 - near), (cross2, 1.0 - far)),
        };
        (first.x, first.y) = a;
        (second.x, second.y) = b;
        (vec![first, second], Layout::Pair { relation })
    }

    fn sample_count(rng: &mut SplitMix64, background: Background) -> (Vec<Object>, Layout) {
        let count = 2 + rng.below(3);
        let color = Self::sample_color(rng, background, None);
        let shape = *rng.pick(&Shape::ALL);
        let size = Size::Small;
        let mut objects: Vec<Object> = Vec::with_capacity(count);
        while objects.len() < count {
            let x = rng.range(0.14, 0.86);
            let y = rng.range(0.14, 0.86);
            let candidate = Self::sample_object(rng, color, shape, size, x, y);
            let clear = objects.iter().all(|o| {
                let d = ((o.x - x).powi(2) + (o.y - y).powi(2)).sqrt();
                d > o.radius + candidate.radius + 0.04
            });
            if clear {
                objects.push(candidate);
            }
        }
        (objects, Layout::Count { count })
    }

    /// Captions of the scene, several phrasings, all true.
    pub fn captions(&self) -> Vec<String> {
        let bg = self.background.name();
        match &self.layout {
            Layout::Single { region } => {
                let o = &self.objects[0];
                let (size, color, shape) = (o.size.name(), o.color.name(), o.shape.name());
                vec![
                    format!("a {size} {color} {shape} on a {bg} background"),
                    format!("a {color} {shape} in the {region}"),
                    format!("one {size} {color} {shape} in the {region} of a {bg} picture"),
                    format!("a {bg} background with a {color} {shape}"),
                ]
            }
            Layout::Pair { relation } => {
                let (a, b) = (&self.objects[0], &self.objects[1]);
                let full =
                    |o: &Object| format!("{} {} {}", o.size.name(), o.color.name(), o.shape.name());
                let short = |o: &Object| format!("{} {}", o.color.name(), o.shape.name());
                vec![
                    format!("a {} {} a {}", full(a), relation.phrase(), short(b)),
                    format!(
                        "a {} {} a {}",
                        short(b),
                        relation.inverse().phrase(),
                        full(a)
                    ),
                    format!("a {} and a {} on a {bg} background", short(a), short(b)),
                    format!("a {} {} a {}", full(a), relation.phrase(), full(b)),
                ]
            }
            Layout::Count { count } => {
                let o = &self.objects[0];
                let n = count_word(*count);
                let plural = o.shape.plural();
                vec![
                    format!("{n} {} {plural}", o.color.name()),
                    format!("{n} small {} {plural} on a {bg} background", o.color.name()),
                    format!("a group of {n} {} {plural}", o.color.name()),
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenes(n: u64) -> Vec<Scene> {
        (0..n)
            .map(|i| Scene::sample(&mut SplitMix64::for_scene(11, i)))
            .collect()
    }

    #[test]
    fn spatial_words_are_true_by_a_margin() {
        for scene in scenes(2_000) {
            if let Layout::Pair { relation } = scene.layout {
                let (a, b) = (&scene.objects[0], &scene.objects[1]);
                let (main, cross) = match relation {
                    Relation::LeftOf => (b.x - a.x, b.y - a.y),
                    Relation::RightOf => (a.x - b.x, a.y - b.y),
                    Relation::Above => (b.y - a.y, b.x - a.x),
                    Relation::Below => (a.y - b.y, a.x - b.x),
                };
                assert!(main >= 0.35, "{relation:?}: main-axis gap {main}");
                assert!(
                    main > 2.0 * cross.abs(),
                    "{relation:?}: cross {cross} vs {main}"
                );
                assert_ne!(a.color, b.color, "a pair must differ in colour");
            }
        }
    }

    #[test]
    fn objects_stay_in_frame_and_do_not_overlap() {
        for scene in scenes(2_000) {
            for o in &scene.objects {
                assert!(o.x - o.radius >= 0.0 && o.x + o.radius <= 1.0, "{o:?}");
                assert!(o.y - o.radius >= 0.0 && o.y + o.radius <= 1.0, "{o:?}");
                assert!(!scene.background.clashes_with(o.color));
            }
            for (i, a) in scene.objects.iter().enumerate() {
                for b in &scene.objects[i + 1..] {
                    let d = ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt();
                    assert!(d > a.radius + b.radius, "overlap in {scene:?}");
                }
            }
        }
    }

    #[test]
    fn every_caption_names_the_drawn_colours_and_shapes() {
        let all = scenes(500);
        let mut kinds = [0usize; 3];
        for scene in &all {
            kinds[match scene.layout {
                Layout::Single { .. } => 0,
                Layout::Pair { .. } => 1,
                Layout::Count { .. } => 2,
            }] += 1;
            for caption in scene.captions() {
                for o in &scene.objects {
                    assert!(caption.contains(o.color.name()), "{caption} lacks colour");
                    assert!(caption.contains(o.shape.name()), "{caption} lacks shape");
                }
            }
        }
        assert!(kinds.iter().all(|&k| k > 50), "kinds {kinds:?}");
    }
}
