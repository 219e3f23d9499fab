//! Unit tests of the store: every write path, the indexes it keeps, refusals, and the golden
//! store of format version 1 opened through the live API.

use std::path::{Path, PathBuf};

use super::*;

pub(super) const Q: usize = 2;
pub(super) const D: usize = 4;

pub(super) fn fingerprint(name: &str, fp: &str) -> ModelFingerprint {
    ModelFingerprint {
        name: name.into(),
        fingerprint: fp.into(),
        embed_dim: D,
        queries: Q,
        image_size: 224,
    }
}

pub(super) fn identity() -> ModelIdentity {
    ModelIdentity {
        retrieval: fingerprint("retrieval", "r1"),
        captioner: None,
    }
}

fn vectors(seed: u64) -> Vec<f32> {
    (0..Q * D).map(|i| seed as f32 + i as f32 * 0.25).collect()
}

pub(super) fn new_image(path: &str, hash: u128, seed: u64) -> NewImage {
    NewImage {
        info: ImageInfo {
            path: path.into(),
            content_hash: hash,
            size: 100 + seed,
            modified_ns: 1_700_000_000_000_000_000 + seed as i64,
            width: 64,
            height: 48,
            format: "png".into(),
            captured_at: None,
            captured_at_s: None,
            camera_make: None,
            camera_model: None,
        },
        vectors: vectors(seed),
        caption: None,
        features: None,
    }
}

fn captioned(mut image: NewImage, caption: &str) -> NewImage {
    image.caption = Some(NewCaption {
        text: caption.into(),
        embedding: vec![0.5; D],
    });
    image
}

fn with_features(mut image: NewImage, seed: f32) -> NewImage {
    let values: Vec<f32> = (0..3 * 4).map(|i| seed + i as f32).collect();
    image.features = Some(ImageFeatures::from_f32(3, 4, &values));
    image
}

fn dated(mut image: NewImage, seconds: i64) -> NewImage {
    image.info.captured_at_s = Some(seconds);
    image.info.captured_at = Some(format!("@{seconds}"));
    image
}

fn consistent(store: &Store) {
    let problems = store.check_consistency().unwrap();
    assert!(problems.is_empty(), "store inconsistent: {problems:#?}");
}

fn new_store(dir: &Path) -> Store {
    Store::create_or_open(dir, &identity()).unwrap()
}

#[test]
fn commit_assigns_ids_and_everything_reads_back_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    assert_eq!(store.last_batch(), 0);
    let write = BatchWrite {
        new_images: vec![
            dated(
                captioned(new_image("a/beach.jpg", 7, 1), "a dog on a beach"),
                2_000,
            ),
            with_features(dated(new_image("b/cat.png", 8, 2), 1_000), 0.5),
            new_image("c/no-date.png", 7, 3),
        ],
        failures: vec![NewFailure {
            path: "bad.jpg".into(),
            reason: "truncated".into(),
            size: 3,
            modified_ns: 5,
            content_hash: None,
        }],
        new_texts: vec![NewText {
            text: "my note".into(),
            embedding: vec![0.25; D],
        }],
        ..Default::default()
    };
    let receipt = store.commit(&write).unwrap();
    assert_eq!(receipt.batch, 1);
    assert_eq!(receipt.image_ids, [0, 1, 2]);
    assert_eq!(receipt.caption_ids, [Some(0), None, None]);
    assert_eq!(receipt.text_ids, [1]);
    drop(store);

    let store = Store::open_existing(tmp.path()).unwrap();
    assert_eq!(store.last_batch(), 1);
    let beach = store
        .image_by_path(Path::new("a/beach.jpg"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (beach.id, beach.caption.as_deref(), beach.indexed_batch),
        (0, Some("a dog on a beach"), 1)
    );
    assert_eq!(store.vectors(1).unwrap().unwrap(), vectors(2));
    assert_eq!(store.image_ids_with_hash(7).unwrap(), [0, 2]);
    let caption = store.text(0).unwrap().unwrap();
    assert_eq!(caption.source, TextSource::Caption { image: 0 });
    assert_eq!(caption.embedding, vec![0.5; D]);
    assert_eq!(store.text(1).unwrap().unwrap().source, TextSource::User);
    assert_eq!(store.texts().count(), 2);
    let features = store.features(1).unwrap().unwrap();
    assert_eq!((features.tokens, features.width), (3, 4));
    assert_eq!(features, write.new_images[1].features.clone().unwrap());
    assert!(store.features(0).unwrap().is_none());

    let order: Vec<u64> = store
        .images_by_capture_time()
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(
        order,
        [1, 0, 2],
        "capture times 1000, 2000, then the 2023 mtime"
    );
    let counts = store.counts().unwrap();
    assert_eq!(
        counts,
        StoreCounts {
            images: 3,
            vectors: 3,
            captions: 1,
            texts: 2,
            failed: 1,
            feature_cache_bytes: 24
        }
    );
    let known = store.known_files().unwrap();
    assert_eq!(known.len(), 4);
    assert!(known
        .iter()
        .any(|k| k.failed && k.path == Path::new("bad.jpg") && k.image.is_none()));
    let changes: Vec<BatchChanges> = store.changes_since(0).map(Result::unwrap).collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (
            changes[0].images_added.clone(),
            changes[0].texts_added.clone()
        ),
        (vec![0, 1, 2], vec![0, 1])
    );
    assert_eq!(store.changes_since(1).count(), 0);
    consistent(&store);
}

#[test]
fn removal_cleans_every_index_and_compaction_reclaims_its_features() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    store
        .commit(&BatchWrite {
            new_images: vec![
                with_features(captioned(new_image("x.jpg", 1, 1), "x"), 1.0),
                with_features(new_image("y.jpg", 2, 2), 2.0),
            ],
            ..Default::default()
        })
        .unwrap();
    let receipt = store
        .commit(&BatchWrite {
            removals: vec![0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(receipt.batch, 2);
    assert!(store.image(0).unwrap().is_none());
    assert!(store.image_by_path(Path::new("x.jpg")).unwrap().is_none());
    assert!(store.vectors(0).unwrap().is_none());
    assert!(store.image_ids_with_hash(1).unwrap().is_empty());
    assert!(
        store.text(0).unwrap().is_none(),
        "the caption goes with its image"
    );
    assert!(store.features(0).unwrap().is_none());
    assert_eq!(store.images_by_capture_time().count(), 1);
    let counts = store.counts().unwrap();
    assert_eq!((counts.images, counts.captions, counts.texts), (1, 0, 0));
    assert_eq!(
        counts.feature_cache_bytes, 48,
        "dead bytes stay until compaction"
    );
    let change = store.changes_since(1).next().unwrap().unwrap();
    assert_eq!(
        (change.images_removed, change.texts_removed),
        (vec![0], vec![0])
    );
    consistent(&store);

    let bytes = store.feature_bytes().unwrap();
    assert_eq!((bytes.live, bytes.dead, bytes.on_disk), (24, 24, 48));
    let report = store.compact_features().unwrap();
    assert_eq!(
        (report.bytes_before, report.bytes_after, report.images),
        (48, 24, 1)
    );
    assert_eq!(
        store.features(1).unwrap().unwrap().data[0],
        half::f16::from_f32(2.0)
    );
    consistent(&store);
    drop(store);
    let store = Store::open_existing(tmp.path()).unwrap();
    assert_eq!(store.counts().unwrap().feature_cache_bytes, 24);
    assert_eq!(
        store.features(1).unwrap().unwrap().data[11],
        half::f16::from_f32(13.0)
    );
    consistent(&store);
}

#[test]
fn moves_swaps_and_reindexing_at_the_same_path() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    store
        .commit(&BatchWrite {
            new_images: vec![new_image("a", 1, 1), new_image("b", 2, 2)],
            ..Default::default()
        })
        .unwrap();
    let update = |from: &str, to: &str| PathUpdate {
        from: from.into(),
        to: to.into(),
        size: 9,
        modified_ns: 99,
    };
    // Swap a and b in one batch.
    store
        .commit(&BatchWrite {
            path_updates: vec![update("a", "b"), update("b", "a")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.image_by_path(Path::new("a")).unwrap().unwrap().id, 1);
    assert_eq!(store.image_by_path(Path::new("b")).unwrap().unwrap().id, 0);
    let change = store.changes_since(1).next().unwrap().unwrap();
    assert_eq!(change.paths_changed.len(), 2);
    assert_eq!(store.image(0).unwrap().unwrap().modified_ns, 99);
    consistent(&store);
    // A touched file (same path) changes no path in the log.
    store
        .commit(&BatchWrite {
            path_updates: vec![update("a", "a")],
            ..Default::default()
        })
        .unwrap();
    assert!(store
        .changes_since(2)
        .next()
        .unwrap()
        .unwrap()
        .paths_changed
        .is_empty());
    // Changed content at the same path: remove and re-add in one batch.
    let receipt = store
        .commit(&BatchWrite {
            removals: vec![1],
            new_images: vec![new_image("a", 3, 3)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(receipt.image_ids, [2]);
    assert_eq!(
        store
            .image_by_path(Path::new("a"))
            .unwrap()
            .unwrap()
            .content_hash,
        3
    );
    consistent(&store);
}

#[test]
fn invalid_batches_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    store
        .commit(&BatchWrite {
            new_images: vec![new_image("a", 1, 1)],
            ..Default::default()
        })
        .unwrap();
    let mut short = new_image("short", 2, 2);
    short.vectors.pop();
    let bad = [
        BatchWrite {
            new_images: vec![short],
            ..Default::default()
        },
        BatchWrite {
            new_images: vec![new_image("new", 5, 5), new_image("a", 2, 2)],
            ..Default::default()
        },
        BatchWrite {
            removals: vec![0, 0],
            ..Default::default()
        },
        BatchWrite {
            removals: vec![42],
            ..Default::default()
        },
        BatchWrite {
            failures: vec![NewFailure {
                path: "a".into(),
                reason: "r".into(),
                size: 0,
                modified_ns: 0,
                content_hash: None,
            }],
            ..Default::default()
        },
        BatchWrite {
            path_updates: vec![PathUpdate {
                from: "nope".into(),
                to: "x".into(),
                size: 0,
                modified_ns: 0,
            }],
            ..Default::default()
        },
        BatchWrite {
            new_texts: vec![NewText {
                text: "t".into(),
                embedding: vec![0.0; D + 1],
            }],
            ..Default::default()
        },
    ];
    for write in &bad {
        let err = store.commit(write).unwrap_err();
        assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
        assert_eq!(store.last_batch(), 1);
        assert!(store.image_by_path(Path::new("new")).unwrap().is_none());
        assert_eq!(store.counts().unwrap().images, 1);
    }
    let c = store
        .commit(&BatchWrite {
            new_images: vec![captioned(new_image("c", 3, 3), "cap")],
            ..Default::default()
        })
        .unwrap();
    let err = store.commit(&BatchWrite {
        remove_texts: c.caption_ids[0].into_iter().collect(),
        ..Default::default()
    });
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("removed with the image"));
    consistent(&store);
}

#[test]
fn failures_count_attempts_and_clear_when_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let failure = NewFailure {
        path: "f.jpg".into(),
        reason: "truncated".into(),
        size: 1,
        modified_ns: 2,
        content_hash: Some(3),
    };
    for attempt in 1..=2 {
        store
            .commit(&BatchWrite {
                failures: vec![failure.clone()],
                ..Default::default()
            })
            .unwrap();
        let stored: Vec<FailureRecord> = store.failures().map(Result::unwrap).collect();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].attempts, stored[0].last_batch),
            (attempt, attempt as u64)
        );
    }
    store
        .commit(&BatchWrite {
            new_images: vec![new_image("f.jpg", 9, 9)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.failures().count(), 0);
    assert_eq!(store.counts().unwrap().failed, 0);
    store
        .commit(&BatchWrite {
            failures: vec![NewFailure {
                path: "g".into(),
                ..failure
            }],
            ..Default::default()
        })
        .unwrap();
    store
        .commit(&BatchWrite {
            clear_failures: vec!["g".into(), "unknown".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.counts().unwrap().failed, 0);
    consistent(&store);
}

#[test]
fn a_second_open_is_refused_while_the_store_is_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let err = Store::open_existing(tmp.path()).err().unwrap();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another quarry process"),
        "{err}"
    );
    drop(store);
    Store::open_existing(tmp.path()).unwrap();
}

#[test]
fn other_models_are_refused_and_a_captioner_may_be_added() {
    let tmp = tempfile::tempdir().unwrap();
    drop(new_store(tmp.path()));
    let other = ModelIdentity {
        retrieval: fingerprint("other", "r2"),
        captioner: None,
    };
    let err = Store::create_or_open(tmp.path(), &other).err().unwrap();
    assert!(matches!(err, StoreError::ModelMismatch { .. }));
    assert!(
        err.to_string().contains("`retrieval`") && err.to_string().contains("--store NEW_DIR"),
        "{err}"
    );

    let with_captioner = ModelIdentity {
        captioner: Some(fingerprint("opt", "c1")),
        ..identity()
    };
    drop(Store::create_or_open(tmp.path(), &with_captioner).unwrap());
    assert_eq!(
        Store::open_existing(tmp.path()).unwrap().model(),
        &with_captioner
    );
    let err = Store::create_or_open(tmp.path(), &identity())
        .err()
        .unwrap();
    assert!(err.to_string().contains("--caption-model"), "{err}");
}

#[test]
fn open_existing_without_a_store_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Store::open_existing(&tmp.path().join("nothing"))
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert!(err.to_string().contains("quarry index"), "{err}");
}

#[test]
fn feature_cache_can_be_turned_off_and_the_setting_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        feature_cache: false,
        feature_file_limit: 1 << 20,
    };
    let store = Store::create_or_open_with(tmp.path(), &identity(), &settings).unwrap();
    store
        .commit(&BatchWrite {
            new_images: vec![with_features(new_image("a", 1, 1), 1.0)],
            ..Default::default()
        })
        .unwrap();
    assert!(store.features(0).unwrap().is_none());
    assert_eq!(store.counts().unwrap().feature_cache_bytes, 0);
    store.set_feature_cache(true).unwrap();
    drop(store);
    let store = Store::open_existing(tmp.path()).unwrap();
    assert!(store.feature_cache_enabled());
    store
        .commit(&BatchWrite {
            new_images: vec![with_features(new_image("b", 2, 2), 1.0)],
            ..Default::default()
        })
        .unwrap();
    assert!(store.features(1).unwrap().is_some());
    consistent(&store);
}

#[test]
fn feature_files_roll_at_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        feature_cache: true,
        feature_file_limit: 50,
    };
    let store = Store::create_or_open_with(tmp.path(), &identity(), &settings).unwrap();
    let images = (0..5)
        .map(|i| with_features(new_image(&format!("{i}"), i, i as u64), i as f32))
        .collect();
    store
        .commit(&BatchWrite {
            new_images: images,
            ..Default::default()
        })
        .unwrap();
    let files = std::fs::read_dir(tmp.path().join("features"))
        .unwrap()
        .count();
    assert_eq!(files, 3, "24-byte features, two per 50-byte file");
    for i in 0..5u64 {
        assert_eq!(
            store.features(i).unwrap().unwrap().data[0],
            half::f16::from_f32(i as f32)
        );
    }
    consistent(&store);
}

#[test]
fn odd_file_names_round_trip_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    let latin1 = PathBuf::from(std::ffi::OsStr::from_bytes(b"photos/caf\xe9.jpg"));
    let mut image = new_image("placeholder", 1, 1);
    image.info.path = latin1.clone();
    let mut emoji = new_image("photos/🐕 dog\n.jpg", 2, 2);
    emoji.info.captured_at = Some("2020:01:01 00:00:00".into());
    store
        .commit(&BatchWrite {
            new_images: vec![image, emoji],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.image_by_path(&latin1).unwrap().unwrap().path, latin1);
    assert_eq!(
        store.image(1).unwrap().unwrap().path,
        Path::new("photos/🐕 dog\n.jpg")
    );
    consistent(&store);
}

#[test]
fn change_log_prunes_and_replays_from_any_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    for i in 0..4 {
        store
            .commit(&BatchWrite {
                new_images: vec![new_image(&format!("{i}"), i, i as u64)],
                ..Default::default()
            })
            .unwrap();
    }
    let batches = |from| {
        store
            .changes_since(from)
            .map(|c| c.unwrap().batch)
            .collect::<Vec<_>>()
    };
    assert_eq!(batches(0), [1, 2, 3, 4]);
    assert_eq!(batches(2), [3, 4]);
    store.prune_changes(2).unwrap();
    assert_eq!(batches(0), [3, 4]);
    consistent(&store);
}

#[test]
fn status_counts_serialise_with_exactly_the_cli_keys() {
    let json = serde_json::to_value(StoreCounts::default()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "images",
        "vectors",
        "captions",
        "texts",
        "failed",
        "feature_cache_bytes",
    ];
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);
}

#[test]
fn golden_v1_store_opens_migrated_with_every_record() {
    use quarry_migrations::golden;
    let tmp = tempfile::tempdir().unwrap();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/tests/golden/v1");
    copy_dir(&golden_dir, tmp.path());
    let store = Store::open_existing(tmp.path()).unwrap();
    assert_eq!(store.migrated_from(), Some(1));
    let data = golden::v1_dataset();
    assert_eq!(
        store.model().retrieval.fingerprint,
        data.model.retrieval.fingerprint
    );
    assert_eq!(store.last_batch(), data.state.last_batch);
    for (expected, vectors) in &data.images {
        let image = store.image(expected.id).unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&image).unwrap(),
            serde_json::to_string(expected).unwrap()
        );
        assert_eq!(&store.vectors(expected.id).unwrap().unwrap(), vectors);
    }
    assert_eq!(store.images().count(), data.images.len());
    for (expected, embedding) in &data.texts {
        let text = store.text(expected.id).unwrap().unwrap();
        assert_eq!((&text.text, &text.embedding), (&expected.text, embedding));
    }
    let failures: Vec<FailureRecord> = store.failures().map(Result::unwrap).collect();
    assert_eq!(
        serde_json::to_string(&failures).unwrap(),
        serde_json::to_string(&data.failures).unwrap()
    );
    for (id, _, bits) in &data.features {
        let features = store.features(*id).unwrap().unwrap();
        assert_eq!(
            features
                .data
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            *bits
        );
    }
    let by_date: Vec<u64> = store
        .images_by_capture_time()
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(
        by_date,
        [4, 3, 1, 0],
        "1965 scan, 2019 copy, cat by its 2020 mtime, 2021 beach"
    );
    let changes: Vec<BatchChanges> = store.changes_since(0).map(Result::unwrap).collect();
    assert_eq!(
        serde_json::to_string(&changes).unwrap(),
        serde_json::to_string(&data.changes).unwrap()
    );
    consistent(&store);
    // The migrated store takes new batches with ids after the golden ones.
    let mut identity = identity();
    identity.retrieval = ModelFingerprint {
        name: data.model.retrieval.name.clone(),
        fingerprint: data.model.retrieval.fingerprint.clone(),
        embed_dim: golden::DIM,
        queries: golden::QUERIES,
        image_size: 224,
    };
    drop(store);
    let mut captioner = identity.retrieval.clone();
    captioner.fingerprint = data.model.captioner.unwrap().fingerprint;
    identity.captioner = Some(captioner);
    let store = Store::create_or_open(tmp.path(), &identity).unwrap();
    let receipt = store
        .commit(&BatchWrite {
            new_images: vec![new_image("new.jpg", 1, 1)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!((receipt.batch, receipt.image_ids[0]), (3, 5));
    consistent(&store);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_store_from_a_newer_quarry_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    drop(new_store(tmp.path()));
    // The store's own open: it waits for the lock the dropped store holds for a moment.
    let db = open_db(tmp.path()).unwrap();
    let newer = quarry_migrations::CURRENT_FORMAT_VERSION + 1;
    db.insert(quarry_migrations::FORMAT_VERSION_KEY, &newer.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
    drop(db);
    let err = Store::open_existing(tmp.path()).err().unwrap();
    assert!(matches!(err, StoreError::Migration { .. }), "{err}");
    assert!(err.to_string().contains("newer quarry"), "{err}");
    let err = Store::create_or_open(tmp.path(), &identity())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Migration { .. }), "{err}");
    let db = open_db(tmp.path()).unwrap();
    assert_eq!(quarry_migrations::read_version(&db).unwrap(), Some(newer));
}

#[test]
fn a_database_that_is_not_a_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(tmp.path().join("db"))
        .open()
        .unwrap();
    db.insert(b"someone else's", b"data").unwrap();
    drop(db);
    let err = Store::open_existing(tmp.path()).err().unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
}

/// Commit and read rates at the real sizes (32 × 256 vectors, 257 × 1408 f16 features).
/// `cargo test --release -p quarry --lib store::tests::commit_rate -- --ignored --nocapture`
#[test]
#[ignore = "measurement: writes about 190 MB"]
fn commit_rate_at_real_sizes() {
    use std::time::Instant;
    let (q, d, t, w) = (32, 256, 257, 1408);
    let tmp = tempfile::tempdir().unwrap();
    let mut model = identity();
    model.retrieval.queries = q;
    model.retrieval.embed_dim = d;
    let store = Store::create_or_open(tmp.path(), &model).unwrap();
    let features = ImageFeatures::from_f32(t, w, &vec![0.5; t * w]);
    let (batches, per_batch) = (8, 32);
    let start = Instant::now();
    for b in 0..batches {
        let images = (0..per_batch)
            .map(|i| {
                let n = (b * per_batch + i) as u64;
                let mut image = new_image(&format!("photos/{n}.jpg"), n as u128, n);
                image.vectors = vec![0.1; q * d];
                image.caption = Some(NewCaption {
                    text: format!("caption {n}"),
                    embedding: vec![0.2; d],
                });
                image.features = Some(features.clone());
                image
            })
            .collect();
        store
            .commit(&BatchWrite {
                new_images: images,
                ..Default::default()
            })
            .unwrap();
    }
    let commit = start.elapsed();
    let n = batches * per_batch;
    let start = Instant::now();
    for id in 0..n as u64 {
        assert!(store.vectors(id).unwrap().is_some());
    }
    let vectors = start.elapsed();
    let start = Instant::now();
    for id in 0..n as u64 {
        assert!(store.features(id).unwrap().is_some());
    }
    let read_features = start.elapsed();
    let counts = store.counts().unwrap();
    drop(store);
    let start = Instant::now();
    let store = Store::open_existing(tmp.path()).unwrap();
    let reopen = start.elapsed();
    assert_eq!(store.counts().unwrap().images, n as u64);
    println!(
        "{n} images in {batches} batches of {per_batch}: commit {:.1} ms/batch ({:.0} images/s incl. \
         features and fsync); vectors read {:.1} µs/image; features read {:.2} ms/image; \
         feature cache {} bytes/image; reopen {:.1} ms",
        commit.as_secs_f64() * 1e3 / batches as f64,
        n as f64 / commit.as_secs_f64(),
        vectors.as_secs_f64() * 1e6 / n as f64,
        read_features.as_secs_f64() * 1e3 / n as f64,
        counts.feature_cache_bytes / n as u64,
        reopen.as_secs_f64() * 1e3,
    );
}

#[test]
fn store_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    let tmp = tempfile::tempdir().unwrap();
    let store = new_store(tmp.path());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..5u64 {
                    let n = t * 10 + i;
                    let write = BatchWrite {
                        new_images: vec![new_image(&format!("{n}"), n as u128, n)],
                        ..Default::default()
                    };
                    store.commit(&write).unwrap();
                }
            });
        }
    });
    assert_eq!(store.last_batch(), 20);
    assert_eq!(store.counts().unwrap().images, 20);
    consistent(&store);
}
