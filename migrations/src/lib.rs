//! quarry-migrations: the store's format versions and the steps that upgrade one to the next.
//!
//! The store arrives with the indexer; until then there is no persisted format and so no
//! version to migrate. This crate exists now so that the workspace has its final shape and the
//! dependency direction (`quarry` → `quarry-migrations`, never back) is fixed from the start.

/// The store format version this build writes. No store has been written yet: 0.
pub const CURRENT_FORMAT_VERSION: u32 = 0;
