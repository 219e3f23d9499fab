//! Free space quarry keeps on the store's disk, and the check before every write.
//!
//! Why a reserve: sled 0.34 does not survive a completely full disk. A snapshot it writes at
//! open, or while committing, is cut short by `ENOSPC`, and the next open then reports
//! "Read corrupted data" — the whole store lost, not just the batch that failed (found by the
//! disk-full fault test, `tests/integration/faults.rs`). So quarry never writes the disk full
//! itself: every write, and every open (sled writes at open), first checks that at least
//! [`RESERVE_BYTES`] stay free, and otherwise stops with [`StoreError::DiskFull`], before
//! anything is written. Another program can still fill the disk; that case is reported as a
//! full disk too (see `crate::disk_faults`).

use std::path::Path;

use super::StoreError;

/// Space left free on the store's disk: room for sled's snapshot and log segments, one batch
/// of features (32 ViT-g images ≈ 23 MB) and tantivy's segment merges.
pub const RESERVE_BYTES: u64 = 64 << 20;

/// Free bytes on the disk holding `path` (or its nearest existing parent); `None` if the
/// system cannot say.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    fs2::available_space(existing).ok()
}

/// `Ok` when writing `bytes` more under `dir` leaves the reserve free.
pub fn ensure_room(dir: &Path, bytes: u64) -> Result<(), StoreError> {
    match free_bytes(dir) {
        Some(free) if free < RESERVE_BYTES.saturating_add(bytes) => Err(StoreError::DiskFull {
            dir: dir.to_owned(),
            free,
            needed: RESERVE_BYTES.saturating_add(bytes),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_checked_against_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("the temp disk says its free space");
        assert!(free > 0);
        // A folder that does not exist yet is checked on its parent's disk.
        assert_eq!(
            free_bytes(&dir.path().join("new/store")).map(|_| ()),
            Some(())
        );
        match ensure_room(dir.path(), u64::MAX / 2) {
            Err(StoreError::DiskFull { needed, .. }) => assert!(needed > free),
            other => panic!("asking for more than the disk holds: {other:?}"),
        }
    }
}
