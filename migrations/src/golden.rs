//! The contents of the golden stores under `tests/golden/`, and their writers.
//!
//! A golden store is a small store of an old format version, committed to the repository, so
//! that the upgrade steps are tested on real bytes written by that version's layout (not on
//! a store made by today's code and edited). [`write_v1`] writes [`v1_dataset`] with the frozen
//! [`crate::v1`] layout; `cargo run -p quarry-migrations --example make_golden` regenerates
//! `tests/golden/v1` (only ever needed if the golden store is lost: the frozen layout does not
//! change). The migration tests and the store's tests read the expected contents from here.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::v1;

/// Query vectors per image in the golden stores.
pub const QUERIES: usize = 2;
/// Embedding width in the golden stores.
pub const DIM: usize = 4;
/// Feature rows (tokens) in the golden stores.
pub const TOKENS: u32 = 3;
/// Feature width in the golden stores.
pub const WIDTH: u32 = 4;

/// Everything a golden store of version 1 holds.
#[derive(Debug, Clone)]
pub struct V1Dataset {
    /// `meta:model`.
    pub model: v1::ModelIdentity,
    /// `meta:settings`.
    pub settings: v1::Settings,
    /// `meta:state`.
    pub state: v1::State,
    /// Image records with their Q×D vectors.
    pub images: Vec<(v1::ImageRecord, Vec<f32>)>,
    /// Text records with their D-wide embeddings.
    pub texts: Vec<(v1::TextRecord, Vec<f32>)>,
    /// Failure records.
    pub failures: Vec<v1::FailureRecord>,
    /// Feature locations by image id, with the f16 bit patterns stored there.
    pub features: Vec<(u64, v1::FeatureLocation, Vec<u16>)>,
    /// The change log.
    pub changes: Vec<v1::BatchChanges>,
}

fn vectors(seed: u64, n: usize) -> Vec<f32> {
    // Exactly representable values, so that comparisons can be exact.
    (0..n)
        .map(|i| ((seed as usize * 7 + i * 3) % 17) as f32 * 0.125 - 1.0)
        .collect()
}

/// The golden version-1 store: two batches; batch 1 indexed three images (one captioned, one
/// with features) and a failure, batch 2 added a fourth image with a capture time before
/// 1970, removed image 2, and added a user text.
pub fn v1_dataset() -> V1Dataset {
    let fingerprint = |name: &str, fp: &str| v1::ModelFingerprint {
        name: name.into(),
        fingerprint: fp.into(),
        embed_dim: DIM,
        queries: QUERIES,
        image_size: 224,
    };
    let image = |id: u64, path: &str, hash: u128, captured: Option<(&str, i64)>| v1::ImageRecord {
        id,
        path: path.into(),
        content_hash: hash,
        size: 1000 + id,
        modified_ns: 1_600_000_000_123_456_789 + id as i64 * 1_000_000_000,
        width: 640,
        height: 480,
        format: "jpeg".into(),
        captured_at: captured.map(|c| c.0.to_owned()),
        captured_at_s: captured.map(|c| c.1),
        camera_make: captured.map(|_| "Canon".to_owned()),
        camera_model: captured.map(|_| "EOS 5D".to_owned()),
        caption: None,
        caption_text: None,
        indexed_batch: 1,
    };
    let mut beach = image(
        0,
        "photos/beach.jpg",
        0x1111_2222_3333_4444_5555_6666_7777_8888,
        Some(("2021:07:04 10:00:00", 1_625_392_800)),
    );
    beach.caption = Some("a dog running on the beach".into());
    beach.caption_text = Some(0);
    let cat = image(1, "photos/2019/cat ünïcode.png", 0xabcdef, None);
    let duplicate = image(
        3,
        "copies/beach again.jpg",
        beach.content_hash,
        Some(("2019:01:01 00:00:00", 1_546_300_800)),
    );
    let mut old = image(
        4,
        "scans/1965.tif",
        0x4242,
        Some(("1965:05:01 12:00:00", -147_614_400)),
    );
    old.indexed_batch = 2;
    let mut duplicate = duplicate;
    duplicate.indexed_batch = 1;

    let bits: Vec<u16> = (0..(TOKENS * WIDTH) as u16)
        .map(|i| 0x3C00 + i * 0x40)
        .collect();
    let location = v1::FeatureLocation {
        file: 0,
        offset: 0,
        len: bits.len() as u64 * 2,
        tokens: TOKENS,
        width: WIDTH,
    };
    V1Dataset {
        model: v1::ModelIdentity {
            retrieval: fingerprint("blip2-itm-vit-g", "xxh3:0123456789abcdef"),
            captioner: Some(fingerprint("blip2-opt-2.7b", "xxh3:fedcba9876543210")),
        },
        settings: v1::Settings {
            feature_cache: true,
            feature_file_limit: 1 << 30,
        },
        state: v1::State {
            last_batch: 2,
            next_image: 5,
            next_text: 2,
            images: 4,
            vectors: 4,
            captions: 1,
            texts: 2,
            failed: 1,
            feature_file: 0,
            feature_len: location.len,
            feature_first_file: 0,
            feature_live_bytes: location.len,
            feature_dead_bytes: 0,
        },
        images: vec![
            (beach, vectors(0, QUERIES * DIM)),
            (cat, vectors(1, QUERIES * DIM)),
            (duplicate, vectors(3, QUERIES * DIM)),
            (old, vectors(4, QUERIES * DIM)),
        ],
        texts: vec![
            (
                v1::TextRecord {
                    id: 0,
                    text: "a dog running on the beach".into(),
                    source: v1::TextSource::Caption { image: 0 },
                },
                vectors(10, DIM),
            ),
            (
                v1::TextRecord {
                    id: 1,
                    text: "our first holiday".into(),
                    source: v1::TextSource::User,
                },
                vectors(11, DIM),
            ),
        ],
        failures: vec![v1::FailureRecord {
            path: "photos/broken.jpg".into(),
            reason: "truncated JPEG: unexpected end of file".into(),
            size: 12,
            modified_ns: 1_600_000_000_000_000_000,
            content_hash: Some(0x99),
            attempts: 1,
            last_batch: 1,
        }],
        features: vec![(0, location, bits)],
        changes: vec![
            v1::BatchChanges {
                batch: 1,
                images_added: vec![0, 1, 2, 3],
                texts_added: vec![0],
                ..Default::default()
            },
            v1::BatchChanges {
                batch: 2,
                images_added: vec![4],
                images_removed: vec![2],
                texts_added: vec![1],
                ..Default::default()
            },
        ],
    }
}

/// Writes [`v1_dataset`] as a version-1 store in `dir` (`dir/db`, `dir/features/`), which
/// must not exist yet.
pub fn write_v1(dir: &Path) -> std::io::Result<()> {
    use v1::keys;
    let data = v1_dataset();
    fs::create_dir_all(dir.join("features"))?;
    let db = sled::Config::new()
        .path(dir.join("db"))
        .open()
        .map_err(std::io::Error::other)?;
    let mut batch = sled::Batch::default();
    crate::stamp_version(&mut batch, v1::VERSION);
    batch.insert(keys::MODEL, v1::json(&data.model));
    batch.insert(keys::SETTINGS, v1::json(&data.settings));
    batch.insert(keys::STATE, v1::json(&data.state));
    for (record, vectors) in &data.images {
        batch.insert(keys::with_id(keys::IMAGE, record.id), v1::json(record));
        batch.insert(
            keys::with_id(keys::VECTORS, record.id),
            v1::f32_bytes(vectors),
        );
        let path = v1::path_json::to_bytes(&record.path);
        batch.insert(
            keys::with_bytes(keys::PATH, &path),
            &record.id.to_be_bytes(),
        );
        batch.insert(keys::hash(record.content_hash, record.id), &[] as &[u8]);
    }
    for (record, embedding) in &data.texts {
        batch.insert(keys::with_id(keys::TEXT, record.id), v1::json(record));
        batch.insert(
            keys::with_id(keys::TEXT_EMBEDDING, record.id),
            v1::f32_bytes(embedding),
        );
    }
    for failure in &data.failures {
        let path = v1::path_json::to_bytes(&failure.path);
        batch.insert(keys::with_bytes(keys::FAILURE, &path), v1::json(failure));
    }
    let mut file = fs::File::create(dir.join("features").join("000000.f16"))?;
    for (id, location, bits) in &data.features {
        batch.insert(keys::with_id(keys::FEATURES, *id), v1::json(location));
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        file.write_all(&bytes)?;
    }
    file.sync_all()?;
    for change in &data.changes {
        batch.insert(keys::with_id(keys::CHANGES, change.batch), v1::json(change));
    }
    db.apply_batch(batch).map_err(std::io::Error::other)?;
    db.flush().map_err(std::io::Error::other)?;
    Ok(())
}
