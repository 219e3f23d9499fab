//! Opens the committed golden store of every old format version, migrates a copy to the
//! current version, and checks every record.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use quarry_migrations::{golden, v1, v2, CURRENT_FORMAT_VERSION, FORMAT_VERSION_KEY};

fn golden_dir(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(version)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn all_entries(db: &sled::Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.iter()
        .map(|e| e.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

#[test]
fn golden_v1_store_is_small() {
    let size = dir_size(&golden_dir("v1"));
    assert!(
        size > 0 && size < 2 << 20,
        "golden v1 store is {size} bytes; keep it under 2 MiB"
    );
}

#[test]
fn golden_v1_store_migrates_to_current_with_every_record_intact() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&golden_dir("v1"), tmp.path());
    let db = sled::Config::new()
        .path(tmp.path().join("db"))
        .open()
        .unwrap();
    assert_eq!(quarry_migrations::read_version(&db).unwrap(), Some(1));

    // The golden bytes are exactly what the frozen v1 layout writes for the dataset.
    let data = golden::v1_dataset();
    for (record, vectors) in &data.images {
        let raw = db
            .get(v1::keys::with_id(v1::keys::IMAGE, record.id))
            .unwrap()
            .unwrap();
        let stored: v1::ImageRecord = serde_json::from_slice(&raw).unwrap();
        assert_eq!(&stored, record);
        let raw = db
            .get(v1::keys::with_id(v1::keys::VECTORS, record.id))
            .unwrap()
            .unwrap();
        assert_eq!(raw.as_ref(), v1::f32_bytes(vectors).as_slice());
    }
    let before = all_entries(&db);

    let report = quarry_migrations::upgrade(&db).unwrap();
    assert_eq!((report.from, report.to), (1, CURRENT_FORMAT_VERSION));
    assert_eq!(
        quarry_migrations::read_version(&db).unwrap(),
        Some(CURRENT_FORMAT_VERSION)
    );
    let after = all_entries(&db);

    // v1 → v2 adds one date key per image and changes nothing else but the version.
    let mut dates: Vec<(i64, u64)> = Vec::new();
    for (key, value) in &after {
        if let Some(date) = v2::parse_date_key(key) {
            assert!(value.is_empty());
            dates.push(date);
        } else if key.as_slice() != FORMAT_VERSION_KEY {
            assert_eq!(
                before.get(key),
                Some(value),
                "key {:?} changed",
                String::from_utf8_lossy(key)
            );
        }
    }
    assert_eq!(after.len(), before.len() + data.images.len());
    let mut expected: Vec<(i64, u64)> = data
        .images
        .iter()
        .map(|(r, _)| (v2::image_date(r.captured_at_s, r.modified_ns), r.id))
        .collect();
    expected.sort();
    assert_eq!(dates, expected, "date keys iterate oldest first");
    assert_eq!(
        dates.first().map(|d| d.1),
        Some(4),
        "the 1965 scan sorts first"
    );

    // A second upgrade is a no-op.
    assert!(!quarry_migrations::upgrade(&db).unwrap().upgraded());
}
