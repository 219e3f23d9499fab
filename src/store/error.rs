//! Errors of the store, worded for the person running quarry: each names the store folder or
//! the file concerned and says what to do.

use std::path::PathBuf;

/// Everything that can go wrong opening, reading or writing a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (an indexing run, a server) has the store open.
    #[error(
        "the store {dir} is in use by another quarry process (an indexing run or a server); \
         wait for it to finish or stop it, then try again"
    )]
    InUse {
        /// The store folder.
        dir: PathBuf,
    },
    /// There is no store in the folder (for commands that do not create one).
    #[error("no quarry store in {dir}: create one with `quarry index PATH... --store {dir}`")]
    NotFound {
        /// The folder given.
        dir: PathBuf,
    },
    /// The folder holds something that is not a quarry store, or a damaged one.
    #[error("{dir} is not a usable quarry store: {reason}")]
    NotAStore {
        /// The folder given.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store was made with other models than the ones given.
    #[error("{message}")]
    ModelMismatch {
        /// The store folder.
        dir: PathBuf,
        /// Which models made the store, which were given, and how to re-index.
        message: String,
    },
    /// The store's format could not be upgraded (e.g. it was written by a newer quarry).
    #[error("store {dir}: {source}")]
    Migration {
        /// The store folder.
        dir: PathBuf,
        /// Why.
        source: quarry_migrations::MigrationError,
    },
    /// A batch handed to [`crate::store::Store::commit`] is inconsistent (a caller bug: wrong
    /// vector length, unknown id, a path indexed twice). Nothing was written.
    #[error("invalid store batch: {0}")]
    InvalidBatch(String),
    /// Reading or writing a file of the store failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database failed (I/O error or corruption reported by sled).
    #[error("store database {dir}: {source}")]
    Database {
        /// The database folder (`DIR/db`).
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The disk failed a write or a sync earlier in this process (not for lack of space), so
    /// the store takes no more writes until it is reopened (see `Store::commit`).
    #[error(
        "the disk failed a write to the store {dir} earlier ({why}); nothing more is written to \
         it by this process: check the disk, then restart quarry, which reopens the store from \
         what reached the disk (everything acknowledged before the failure is kept)"
    )]
    WritesStopped {
        /// The store folder.
        dir: PathBuf,
        /// The first failure.
        why: String,
    },
    /// Writing would leave less than the reserve free on the store's disk (see `space`):
    /// nothing was written.
    #[error(
        "the disk holding the store {dir} is (nearly) full: {free_mb} MB free, and quarry keeps \
         {needed_mb} MB free before writing so the store's database can never be cut short",
        free_mb = free >> 20,
        needed_mb = needed.div_ceil(1 << 20)
    )]
    DiskFull {
        /// The store folder.
        dir: PathBuf,
        /// Bytes free on its disk.
        free: u64,
        /// Bytes that must be free to write.
        needed: u64,
    },
    /// sled found its files damaged (a checksum failed): the records cannot be trusted.
    #[error(
        "the store's database in {dir} is damaged ({source}): restore the store folder from a \
         backup, or index the photos again into a new store (`quarry index PATH... --store \
         NEW`); the photos themselves are untouched"
    )]
    DatabaseDamaged {
        /// The store folder (its `db` folder is the damaged part).
        dir: PathBuf,
        /// sled's report.
        source: sled::Error,
    },
    /// A stored value could not be decoded.
    #[error("store {dir} is damaged: {what}")]
    Corrupt {
        /// The store folder.
        dir: PathBuf,
        /// What could not be read, naming the key or file.
        what: String,
    },
}

impl StoreError {
    /// Whether the person running quarry can fix this (wrong folder, store busy, other
    /// model), as opposed to a damaged store or a bug.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::InUse { .. }
                | StoreError::NotFound { .. }
                | StoreError::NotAStore { .. }
                | StoreError::ModelMismatch { .. }
                | StoreError::DiskFull { .. }
                | StoreError::DatabaseDamaged { .. }
                | StoreError::Migration { .. }
        )
    }
}
