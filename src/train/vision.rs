//! Pre-training the demo model's small image encoder on synthetic scenes, with dense labels.
//!
//! BLIP-2 assumes a frozen encoder that already sees (EVA-CLIP's ViT-g); no such small encoder
//! can be downloaded where quarry is built, so quarry makes one. Joint training from scratch
//! through the Q-Former's objectives was tried first and learned too slowly on a CPU (after 20k
//! pairs, 2 % text→image R@1 on 200 held-out scenes), because every image gives one weak,
//! contrastive signal. Synthetic scenes know what every pixel shows, so each patch token is
//! taught instead to name the colour and shape under it (or the background colour): 64 labels
//! per image, learned in minutes, and exactly the local evidence the Q-Former's queries need to
//! assemble "a small red circle above a blue square". Positions, sizes and relations are left
//! to the Q-Former, as in BLIP-2.
//!
//! That assumes the encoder's output still says where each patch is, and with these two
//! labels alone it does not: nothing asks the encoder to keep its position embeddings, and the
//! committed demo encoder lost them (`examples/vit_position_probe.rs`: a linear read-out of a
//! patch token's row and column has R² 0.08 and finds the exact cell 1.2 % of the time on
//! held-out scenes, chance 1.6 %), so neither of the demo Q-Former's heads can learn "left of"
//! or "in the top right" (issue #7). With [`VisionObjectives::patch_places`] each patch token
//! also names its own cell of the grid, a third cross-entropy with the colour and shape ones,
//! which keeps the place in the output the Q-Former reads.
//!
//! Teaching places to a trained encoder moves all of its output, and a Q-Former trained on the
//! old output reads the new one as noise (the demo's Q-Former fell from 69 % to 1 % text→image
//! R@1), so it has to be trained again from far away. [`VisionObjectives::keep_features`]
//! anchors the output to the starting encoder's instead: a frozen copy of it sees the same
//! batch and the squared distance between the two outputs is minimised beside the patch
//! losses, so the new facts have to find room where the old Q-Former does not look.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::losses::cross_entropy;
use super::TrainError;
use crate::model::config::VisionConfig;
use crate::model::layers::Linear;
use crate::model::vision::VisionModel;
use crate::synth::render::object_at;
use crate::synth::scene::{Background, Color, Object, Shape, Size};

/// Colour classes: the object colours, then the background colours.
pub const COLOUR_CLASSES: usize = Color::ALL.len() + Background::ALL.len();
/// Shape classes: the shapes, then "background".
pub const SHAPE_CLASSES: usize = Shape::ALL.len() + 1;
/// The shape class of a patch that shows no object.
const BACKGROUND_SHAPE: u32 = Shape::ALL.len() as u32;
/// Samples per patch side when deciding what a patch shows.
const SAMPLES: usize = 3;

#[derive(Deserialize)]
struct EntryFacts {
    image: String,
    scene: Option<SceneFacts>,
}

#[derive(Deserialize)]
struct SceneFacts {
    background: String,
    objects: Vec<ObjectFacts>,
}

#[derive(Deserialize)]
struct ObjectFacts {
    color: String,
    shape: String,
    x: f32,
    y: f32,
    radius: f32,
}

/// Per-patch targets of one image, row-major over the patch grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchLabels {
    /// Colour class of each patch (see [`COLOUR_CLASSES`]).
    pub colour: Vec<u32>,
    /// Shape class of each patch (see [`SHAPE_CLASSES`]).
    pub shape: Vec<u32>,
}

fn find<T: Copy>(all: &[T], name: &str, name_of: impl Fn(T) -> &'static str) -> Option<u32> {
    all.iter()
        .position(|&c| name_of(c) == name)
        .map(|i| i as u32)
}

/// The labels of a `grid`×`grid` patch grid for a scene: in each patch, what most of a 3×3
/// sample of points shows (the topmost object, or the background).
fn labels_of(scene: &SceneFacts, grid: usize) -> Result<PatchLabels, String> {
    let bg = find(&Background::ALL, &scene.background, Background::name)
        .ok_or_else(|| format!("unknown background {:?}", scene.background))?;
    let mut objects = Vec::new();
    let mut classes = Vec::new();
    for o in &scene.objects {
        let colour = find(&Color::ALL, &o.color, Color::name)
            .ok_or_else(|| format!("unknown colour {:?}", o.color))?;
        let shape_idx = find(&Shape::ALL, &o.shape, Shape::name)
            .ok_or_else(|| format!("unknown shape {:?}", o.shape))?;
        objects.push(Object {
            color: Color::ALL[colour as usize],
            shape: Shape::ALL[shape_idx as usize],
            size: Size::Small,
            x: o.x,
            y: o.y,
            radius: o.radius,
            tint: [0; 3],
        });
        classes.push((colour, shape_idx));
    }
    let background = (Color::ALL.len() as u32 + bg, BACKGROUND_SHAPE);
    let mut colour = Vec::with_capacity(grid * grid);
    let mut shape = Vec::with_capacity(grid * grid);
    for py in 0..grid {
        for px in 0..grid {
            let mut votes: HashMap<Option<usize>, usize> = HashMap::new();
            for sy in 0..SAMPLES {
                for sx in 0..SAMPLES {
                    let x = (px as f32 + (sx as f32 + 0.5) / SAMPLES as f32) / grid as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / SAMPLES as f32) / grid as f32;
                    *votes.entry(object_at(&objects, x, y)).or_default() += 1;
                }
            }
            let winner = votes
                .into_iter()
                .max_by_key(|(k, n)| (*n, k.map_or(0, |i| i + 1)))
                .and_then(|(k, _)| k);
            let (c, s) = winner.map_or(background, |i| classes[i]);
            colour.push(c);
            shape.push(s);
        }
    }
    Ok(PatchLabels { colour, shape })
}

/// Patch labels for each image of a `quarry synth` annotation file, in file order.
pub fn read_patch_labels(annotations: &Path, grid: usize) -> Result<Vec<PatchLabels>, TrainError> {
    let bytes = std::fs::read(annotations).map_err(|source| TrainError::Io {
        path: annotations.to_path_buf(),
        source,
    })?;
    let entries: Vec<EntryFacts> = serde_json::from_slice(&bytes).map_err(|e| {
        TrainError::Input(format!(
            "{}: encoder pre-training needs a `quarry synth` annotation file ({e})",
            annotations.display()
        ))
    })?;
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter(|e| seen.insert(e.image.clone()))
        .map(|e| {
            let scene = e.scene.as_ref().ok_or_else(|| {
                TrainError::Input(format!(
                    "{}: {} has no `scene` facts; encoder pre-training needs `quarry synth` data",
                    annotations.display(),
                    e.image
                ))
            })?;
            labels_of(scene, grid).map_err(|m| {
                TrainError::Input(format!("{}: {}: {m}", annotations.display(), e.image))
            })
        })
        .collect()
}

/// What the encoder's patch tokens are taught to name besides colour and shape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VisionObjectives {
    /// Each patch token names its own cell of the patch grid (off: the committed demo
    /// encoder's recipe).
    pub patch_places: bool,
    /// Weight of the output's mean squared distance from the starting encoder's output
    /// ("drift"); `None`: the output may move freely.
    pub keep_features: Option<f64>,
}

/// The losses of one batch, each a mean over the patches it asks about.
#[derive(Debug, Clone)]
pub struct PatchLosses {
    /// Colour of every patch (object or background).
    pub colour: Tensor,
    /// Shape of the patches that show an object.
    pub shape: Tensor,
    /// Cell of every patch, with [`VisionObjectives::patch_places`].
    pub place: Option<Tensor>,
    /// Mean squared distance of every output element from the starting encoder's, unweighted,
    /// with [`VisionObjectives::keep_features`].
    pub drift: Option<Tensor>,
}

impl PatchLosses {
    /// What a step minimises: the patch losses, plus the drift `weight` times.
    pub fn weighted_total(&self, drift_weight: f64) -> candle_core::Result<Tensor> {
        let drift = self.drift.as_ref().map(|d| d * drift_weight).transpose()?;
        super::losses::sum_losses(
            [
                Some(&self.colour),
                Some(&self.shape),
                self.place.as_ref(),
                drift.as_ref(),
            ]
            .into_iter()
            .flatten(),
        )
    }
}

/// The image encoder with linear heads on its patch tokens.
#[derive(Debug, Clone)]
pub struct VisionPretrainModel {
    vision: VisionModel,
    colour_head: Linear,
    shape_head: Linear,
    place_head: Option<Linear>,
    /// The starting encoder, frozen, with [`VisionObjectives::keep_features`].
    anchor: Option<VisionModel>,
}

/// Prefix of the (training-only) patch heads.
pub const PATCH_HEADS: &str = "patch_heads.";

impl VisionPretrainModel {
    /// Builds the encoder (`vision_model.*`) and the heads (`patch_heads.*`); the place head
    /// only when asked, so that a run without it draws its fresh weights as before. `start`
    /// holds the starting weights (as `vision_model.*`) for the frozen anchor that
    /// [`VisionObjectives::keep_features`] asks for.
    pub fn new(
        cfg: &VisionConfig,
        objectives: VisionObjectives,
        vb: VarBuilder,
        start: Option<VarBuilder>,
    ) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let cells = cfg.patches_per_side().pow(2);
        Ok(Self {
            vision: VisionModel::new(cfg, vb.pp("vision_model"))?,
            colour_head: Linear::new(h, COLOUR_CLASSES, vb.pp("patch_heads.colour"))?,
            shape_head: Linear::new(h, SHAPE_CLASSES, vb.pp("patch_heads.shape"))?,
            place_head: objectives
                .patch_places
                .then(|| Linear::new(h, cells, vb.pp("patch_heads.place")))
                .transpose()?,
            anchor: match (objectives.keep_features, start) {
                (Some(_), Some(start)) => Some(VisionModel::new(cfg, start.pp("vision_model"))?),
                (Some(_), None) => {
                    candle_core::bail!("keeping the encoder's features needs the starting weights")
                }
                (None, _) => None,
            },
        })
    }

    /// The losses of pixels [B, 3, S, S] against their patch labels.
    pub fn losses(
        &self,
        pixels: &Tensor,
        labels: &[&PatchLabels],
    ) -> candle_core::Result<PatchLosses> {
        let tokens = self.vision.forward(pixels)?;
        let (b, t, h) = tokens.dims3()?;
        let patches = tokens.narrow(1, 1, t - 1)?.reshape((b * (t - 1), h))?;
        let colour: Vec<Option<u32>> = labels
            .iter()
            .flat_map(|l| l.colour.iter().map(|&c| Some(c)))
            .collect();
        // Shape is asked only where an object is; the colour head already tells objects from
        // background. Averaged over every patch, the ~90 % background patches made the shape
        // loss look learned (0.08) while the shape of the patch at an object's centre was
        // right at chance (18 % small, 27 % large; 5 shapes); over object patches alone the
        // loss says what the encoder knows of shapes.
        let shape: Vec<Option<u32>> = labels
            .iter()
            .flat_map(|l| {
                l.shape
                    .iter()
                    .map(|&c| (c != BACKGROUND_SHAPE).then_some(c))
            })
            .collect();
        if colour.len() != b * (t - 1) {
            candle_core::bail!(
                "{} patch labels for {} patch tokens: the grid does not match the encoder",
                colour.len(),
                b * (t - 1)
            );
        }
        let place = match &self.place_head {
            Some(head) => {
                let cells: Vec<Option<u32>> =
                    (0..b).flat_map(|_| (0..t as u32 - 1).map(Some)).collect();
                Some(cross_entropy(&head.forward(&patches)?, &cells, 0.0)?)
            }
            None => None,
        };
        let drift = match &self.anchor {
            Some(anchor) => {
                let fixed = anchor.forward(pixels)?.detach();
                Some((&tokens - fixed)?.sqr()?.mean_all()?)
            }
            None => None,
        };
        Ok(PatchLosses {
            colour: cross_entropy(&self.colour_head.forward(&patches)?, &colour, 0.0)?,
            // A batch in which no patch shows an object (small objects on a coarse grid) has
            // nothing to say about shapes; it must not stop the run.
            shape: if shape.iter().any(Option::is_some) {
                cross_entropy(&self.shape_head.forward(&patches)?, &shape, 0.0)?
            } else {
                Tensor::zeros((), patches.dtype(), patches.device())?
            },
            place,
            drift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_name_the_object_under_them_or_the_background() {
        // A red circle of radius 0.25 at the centre of a beige image, on a 4×4 grid: the four
        // central patches are fully inside it, the corners are background.
        let scene = SceneFacts {
            background: "beige".into(),
            objects: vec![ObjectFacts {
                color: "red".into(),
                shape: "circle".into(),
                x: 0.5,
                y: 0.5,
                radius: 0.3,
            }],
        };
        let l = labels_of(&scene, 4).unwrap();
        let red = find(&Color::ALL, "red", Color::name).unwrap();
        let circle = find(&Shape::ALL, "circle", Shape::name).unwrap();
        let beige =
            Color::ALL.len() as u32 + find(&Background::ALL, "beige", Background::name).unwrap();
        for i in [5, 6, 9, 10] {
            assert_eq!((l.colour[i], l.shape[i]), (red, circle), "patch {i}");
        }
        for i in [0, 3, 12, 15] {
            assert_eq!(
                (l.colour[i], l.shape[i]),
                (beige, Shape::ALL.len() as u32),
                "patch {i}"
            );
        }
        let bad = SceneFacts {
            background: "plaid".into(),
            objects: vec![],
        };
        assert!(labels_of(&bad, 4).is_err());
    }
}
