//! Format version 2, frozen: version 1 plus a date index, and the step from version 1.
//!
//! Version 1 could order images by date only by reading every record. Version 2 adds
//!
//! | key | value |
//! |---|---|
//! | `date:` seconds (`i64`, sign bit flipped, BE), image id `u64` BE | empty |
//!
//! so that "newest first" is a range scan. The seconds are the EXIF capture time when the
//! image has one, else the file's modification time (floored to seconds), so every image is
//! in the index. Everything else is unchanged from [`crate::v1`].

use crate::{v1, MigrationError};

/// This layout's version number.
pub const VERSION: u32 = 2;

/// Prefix of the date index.
pub const DATE: &[u8] = b"date:";

/// The date index key of an image dated `seconds` with id `id`. Flipping the sign bit makes
/// the big-endian bytes of an `i64` sort in numeric order, before 1970 included.
pub fn date_key(seconds: i64, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(DATE.len() + 16);
    key.extend_from_slice(DATE);
    key.extend_from_slice(&((seconds as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Reads `(seconds, id)` back from a [`date_key`]; `None` for a key of another shape.
pub fn parse_date_key(key: &[u8]) -> Option<(i64, u64)> {
    let rest = key.strip_prefix(DATE)?;
    if rest.len() != 16 {
        return None;
    }
    let seconds = (u64::from_be_bytes(rest[..8].try_into().ok()?) ^ (1 << 63)) as i64;
    let id = u64::from_be_bytes(rest[8..].try_into().ok()?);
    Some((seconds, id))
}

/// The date of an image for the index: capture time, else modification time in seconds.
pub fn image_date(captured_at_s: Option<i64>, modified_ns: i64) -> i64 {
    captured_at_s.unwrap_or_else(|| modified_ns.div_euclid(1_000_000_000))
}

/// The step 1 → 2: one date key per image record.
pub(crate) fn upgrade_from_v1(db: &sled::Db) -> Result<sled::Batch, MigrationError> {
    let mut batch = sled::Batch::default();
    for entry in db.scan_prefix(v1::keys::IMAGE) {
        let (key, value) = entry?;
        let record: v1::ImageRecord =
            serde_json::from_slice(&value).map_err(|e| MigrationError::Corrupt {
                version: v1::VERSION,
                what: format!("image record {}: {e}", String::from_utf8_lossy(&key)),
            })?;
        let date = image_date(record.captured_at_s, record.modified_ns);
        batch.insert(date_key(date, record.id), &[] as &[u8]);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_keys_sort_by_time_then_id_across_the_epoch() {
        let dates = [
            (-5_000_000_000i64, 3u64),
            (-1, 9),
            (0, 1),
            (0, 2),
            (1_700_000_000, 0),
        ];
        let keys: Vec<Vec<u8>> = dates.iter().map(|&(s, id)| date_key(s, id)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (key, expected) in keys.iter().zip(dates) {
            assert_eq!(parse_date_key(key), Some(expected));
        }
    }

    #[test]
    fn image_date_prefers_capture_time_and_floors_mtime() {
        assert_eq!(image_date(Some(42), 7_000_000_000), 42);
        assert_eq!(image_date(None, 7_900_000_000), 7);
        assert_eq!(image_date(None, -1), -1);
    }
}
