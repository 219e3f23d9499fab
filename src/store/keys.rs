//! The live key layout: format version [`quarry_migrations::CURRENT_FORMAT_VERSION`].
//!
//! The keys are taken from the frozen layouts of the migrations crate (version 1's keys plus
//! version 2's date index), so the store cannot drift from the layout its migrations
//! produce. A layout change is a new version file there, then a switch here.

pub(crate) use quarry_migrations::v1::keys::{
    hash, with_bytes, with_id, CHANGES, FAILURE, FEATURES, HASH, IMAGE, MODEL, PATH, SETTINGS,
    STATE, TEXT, TEXT_EMBEDDING, VECTORS,
};
pub(crate) use quarry_migrations::v2::{date_key, parse_date_key, DATE};

/// The id at the end of an `img:`/`txt:`/`chg:`-style key.
pub(crate) fn trailing_id(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The content hash and image id of a `hash:` key.
pub(crate) fn parse_hash_key(key: &[u8]) -> Option<(u128, u64)> {
    let rest = key.strip_prefix(HASH)?;
    if rest.len() != 24 {
        return None;
    }
    let hash = u128::from_be_bytes(rest[..16].try_into().ok()?);
    Some((hash, u64::from_be_bytes(rest[16..].try_into().ok()?)))
}

/// `f32` values from little-endian bytes; `None` when the length is not a multiple of 4.
pub(crate) fn f32_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

pub(crate) use quarry_migrations::v1::f32_bytes;
