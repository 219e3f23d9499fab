//! A real store for tests: `quarry synth` scenes embedded with the small fixture model, each
//! with its first annotation caption (and that caption's ITC vector), some with capture dates.

use std::path::{Path, PathBuf};

use crate::checkpoint::LoadOptions;
use crate::indexer::{preprocess_file, DecodeLimits};
use crate::indexing::{model_identity, CaptionSettings, IndexModels};
use crate::library::Library;
use crate::store::{BatchWrite, ImageInfo, NewCaption, NewImage};
use crate::synth::{generate, SynthOptions};

/// The small retrieval fixture.
pub fn small_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrieval/small_a")
}

/// Loads the small fixture model.
pub fn small_models() -> IndexModels {
    IndexModels::load(
        &small_model_dir(),
        None,
        &LoadOptions::default(),
        &CaptionSettings::default(),
    )
    .expect("small fixture model loads")
}

/// Capture time given to image `i` (every third image has none, so it is dated by mtime).
pub fn capture_time(i: usize) -> Option<i64> {
    (i % 3 != 2).then(|| 1_600_000_000 + i as i64 * 86_400)
}

/// Builds a library of `n` synthetic scenes in `dir/store` (files in `dir/images/sub{i%2}`),
/// keeping ViT features when `features` is true. Returns the library and the captions in id
/// order.
pub fn build(dir: &Path, models: &IndexModels, n: usize, features: bool) -> (Library, Vec<String>) {
    let scenes = dir.join("scenes");
    let annotations = generate(
        &scenes,
        SynthOptions {
            count: n,
            seed: 7,
            size: 64,
        },
    )
    .unwrap();
    let mut library = Library::open(&dir.join("store"), &model_identity(models)).unwrap();
    library.store().set_feature_cache(features).unwrap();
    let mut write = BatchWrite::default();
    let mut captions = Vec::new();
    for (i, a) in annotations.iter().enumerate() {
        let folder = dir.join("images").join(format!("sub{}", i % 2));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("scene{i:03}.png"));
        std::fs::copy(scenes.join(&a.image), &path).unwrap();
        let pixels = preprocess_file(&path, models.preprocess(), DecodeLimits::default()).unwrap();
        let analysis = models
            .analyze(&[&pixels], &[&path], features)
            .unwrap()
            .remove(0);
        let caption = a.caption[0].clone();
        let batch = models
            .retrieval
            .tokenizer
            .batch(&[&caption], None, models.retriever.device())
            .unwrap();
        let embedding = models
            .retriever
            .embed_texts(&batch)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        write.new_images.push(NewImage {
            info: ImageInfo {
                path: path.clone(),
                content_hash: xxhash_rust::xxh3::xxh3_128(&bytes),
                size: bytes.len() as u64,
                modified_ns: 1_500_000_000_000_000_000 + i as i64,
                width: 64,
                height: 64,
                format: "png".into(),
                captured_at: capture_time(i).map(|s| format!("t{s}")),
                captured_at_s: capture_time(i),
                camera_make: None,
                camera_model: None,
            },
            vectors: analysis.vectors,
            caption: Some(NewCaption {
                text: caption.clone(),
                embedding,
            }),
            features: analysis.features,
        });
        captions.push(caption);
    }
    library.commit(&write).unwrap();
    (library, captions)
}
