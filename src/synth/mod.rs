//! Synthetic captioned images: scenes of coloured shapes with compositional captions.
//!
//! No photo dataset can be downloaded where quarry is built, yet a search engine needs
//! captioned images to train its demo model, to test indexing end to end, and to measure
//! recall. These scenes are that data: each image shows one object, a related pair, or a
//! counted group, and its captions bind colour, shape, size, count, position and background
//! ("a small red circle above a blue square"). The output is a LAVIS annotation file, so the
//! same folder feeds `quarry eval`, `quarry train` and `quarry index`. A seed fully determines
//! the output, on every machine.

pub mod caption_check;
pub mod render;
pub mod rng;
pub mod scene;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

pub use scene::Scene;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of images.
    pub count: usize,
    /// Seed; the same seed gives the same files.
    pub seed: u64,
    /// Side of the square images, in pixels.
    pub size: u32,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The output folder already holds files; mixing runs would leave stale images listed.
    #[error("{dir} is not empty: choose a new or empty folder for the generated scenes")]
    NotEmpty {
        /// The output folder.
        dir: PathBuf,
    },
    /// An option is out of range.
    #[error("{0}")]
    Options(String),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoding a PNG failed.
    #[error("encoding {path}: {source}")]
    Encode {
        /// The image file.
        path: PathBuf,
        /// The cause.
        source: image::ImageError,
    },
}

/// One entry of `annotations.json`, LAVIS's retrieval layout plus the scene's facts.
#[derive(Debug, Clone, Serialize)]
pub struct Annotation {
    /// Image path relative to the output folder.
    pub image: String,
    /// Captions, all true of the image.
    pub caption: Vec<String>,
    /// What was drawn (colours, shapes, sizes, positions), for measuring caption accuracy.
    pub scene: Scene,
}

/// The name of the annotation file inside the output folder.
pub const ANNOTATIONS_FILE: &str = "annotations.json";

/// Draws the scene with index `index` of a run with `seed`: the image and its annotation.
pub fn scene_at(seed: u64, index: usize, size: u32) -> (image::RgbImage, Annotation) {
    let mut rng = rng::SplitMix64::for_scene(seed, index as u64);
    let scene = Scene::sample(&mut rng);
    let noise_seed = rng.next_u64();
    let img = render::render(&scene, size, noise_seed);
    let annotation = Annotation {
        image: format!("images/{index:06}.png"),
        caption: scene.captions(),
        scene,
    };
    (img, annotation)
}

/// Writes `options.count` scenes as `DIR/images/NNNNNN.png` and `DIR/annotations.json`.
/// The annotation file is written last, by rename, so a folder that has one is complete.
pub fn generate(dir: &Path, options: SynthOptions) -> Result<Vec<Annotation>, SynthError> {
    if options.count == 0 {
        return Err(SynthError::Options("--n must be at least 1".into()));
    }
    if !(32..=4096).contains(&options.size) {
        return Err(SynthError::Options(format!(
            "--size {} is out of range 32..=4096",
            options.size
        )));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    if dir.exists() && fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(SynthError::NotEmpty {
            dir: dir.to_path_buf(),
        });
    }
    let images = dir.join("images");
    fs::create_dir_all(&images).map_err(io(&images))?;
    let annotations = (0..options.count)
        .into_par_iter()
        .map(|index| {
            let (img, annotation) = scene_at(options.seed, index, options.size);
            let path = dir.join(&annotation.image);
            img.save_with_format(&path, image::ImageFormat::Png)
                .map_err(|source| SynthError::Encode {
                    path: path.clone(),
                    source,
                })?;
            Ok(annotation)
        })
        .collect::<Result<Vec<_>, SynthError>>()?;
    let target = dir.join(ANNOTATIONS_FILE);
    let partial = dir.join(format!("{ANNOTATIONS_FILE}.partial"));
    let json = serde_json::to_vec_pretty(&annotations).expect("annotations serialise");
    let mut file = fs::File::create(&partial).map_err(io(&partial))?;
    file.write_all(&json).map_err(io(&partial))?;
    file.sync_all().map_err(io(&partial))?;
    fs::rename(&partial, &target).map_err(io(&target))?;
    Ok(annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_scenes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let options = SynthOptions {
            count: 6,
            seed: 42,
            size: 64,
        };
        generate(a.path(), options).unwrap();
        generate(b.path(), options).unwrap();
        for name in ["annotations.json", "images/000000.png", "images/000005.png"] {
            assert_eq!(
                fs::read(a.path().join(name)).unwrap(),
                fs::read(b.path().join(name)).unwrap(),
                "{name} differs for the same seed"
            );
        }
        let (_, first) = scene_at(42, 0, 64);
        let (_, other) = scene_at(43, 0, 64);
        assert_ne!(first.caption, other.caption);
    }

    #[test]
    fn annotation_file_lists_every_image_in_lavis_layout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("scenes");
        let options = SynthOptions {
            count: 5,
            seed: 1,
            size: 48,
        };
        generate(&out, options).unwrap();
        let parsed: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join(ANNOTATIONS_FILE)).unwrap()).unwrap();
        let entries = parsed.as_array().unwrap();
        assert_eq!(entries.len(), 5);
        for entry in entries {
            let image = out.join(entry["image"].as_str().unwrap());
            let decoded = image::open(&image).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (48, 48));
            assert!(entry["caption"].as_array().unwrap().len() >= 3);
        }
        let again = generate(&out, options).unwrap_err();
        assert!(matches!(again, SynthError::NotEmpty { .. }), "{again}");
    }
}
