//! quarry-migrations: the store's format versions and the steps that upgrade one to the next.
//!
//! A quarry store (`DIR/db`, a sled database) carries its format version under
//! [`FORMAT_VERSION_KEY`]. When the store module opens a store it calls [`upgrade`]: a store of
//! an older version is brought to [`CURRENT_FORMAT_VERSION`] by running each step in order, a
//! store of a newer version (written by a newer quarry) is refused with a message saying so.
//!
//! Each version has one file holding a *frozen* copy of what its steps need of that layout:
//! [`v1`] is the first layout in full (keys and record types, as written by quarry 0.1's
//! first store), [`v2`] adds the date index. A frozen file never changes once released; the
//! store module's live layout must agree with the newest one (the store's tests check it).
//!
//! Every step is one atomic sled batch that also stamps the new version, followed by a flush,
//! so a crash mid-migration leaves the store at the old version (the step re-runs) or at the
//! new one, never in between. The golden stores of every old version are under
//! `migrations/tests/golden/`, made by `cargo run -p quarry-migrations --example make_golden`
//! from the frozen layouts, and opened and migrated by the tests.

pub mod golden;
pub mod v1;
pub mod v2;

/// The store format version this build writes.
pub const CURRENT_FORMAT_VERSION: u32 = 2;

/// The oldest store format version this build can upgrade.
pub const OLDEST_SUPPORTED_VERSION: u32 = 1;

/// The key (in sled's default tree) holding the format version as a big-endian `u32`. The same
/// in every version, so any quarry can tell which version a store has.
pub const FORMAT_VERSION_KEY: &[u8] = b"meta:format_version";

/// Why a store's format could not be read or upgraded.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The store was written by a newer quarry than this one.
    #[error(
        "the store has format version {found}, but this quarry reads versions up to \
         {current}: it was written by a newer quarry; use that version (or newer) to open it"
    )]
    TooNew {
        /// The version found in the store.
        found: u32,
        /// [`CURRENT_FORMAT_VERSION`].
        current: u32,
    },
    /// The store is older than any version this build can upgrade.
    #[error(
        "the store has format version {found}, older than the oldest this quarry can upgrade \
         ({oldest}); re-index into a new store"
    )]
    TooOld {
        /// The version found in the store.
        found: u32,
        /// [`OLDEST_SUPPORTED_VERSION`].
        oldest: u32,
    },
    /// The database holds data but no format version: not a quarry store.
    #[error("the database holds data but no format version: it is not a quarry store")]
    MissingVersion,
    /// The stored version is not the one the caller said to migrate from.
    #[error("asked to migrate from format version {expected}, but the store has version {found}")]
    WrongStart {
        /// The version the caller passed.
        expected: u32,
        /// The version in the store.
        found: u32,
    },
    /// A record could not be decoded with its version's layout.
    #[error("format version {version}: {what}")]
    Corrupt {
        /// The layout version used to read.
        version: u32,
        /// What could not be read, naming the key.
        what: String,
    },
    /// The database itself failed (I/O, corruption reported by sled).
    #[error("database: {0}")]
    Database(#[from] sled::Error),
}

/// One upgrade step: from `from` to `from + 1`.
struct Step {
    from: u32,
    /// The writes of the step, built from the store at version `from`; the version stamp is
    /// added by [`migrate`].
    build: fn(&sled::Db) -> Result<sled::Batch, MigrationError>,
}

/// Every step, in order. The step to version N lives in the file of version N.
const STEPS: &[Step] = &[Step {
    from: 1,
    build: v2::upgrade_from_v1,
}];

/// What [`upgrade`] or [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The version the store had.
    pub from: u32,
    /// The version it has now.
    pub to: u32,
}

impl MigrationReport {
    /// Whether any step ran.
    pub fn upgraded(&self) -> bool {
        self.from != self.to
    }
}

/// The store's format version, `None` for a database with no version key.
pub fn read_version(db: &sled::Db) -> Result<Option<u32>, MigrationError> {
    match db.get(FORMAT_VERSION_KEY)? {
        None => Ok(None),
        Some(raw) => {
            let bytes: [u8; 4] = raw
                .as_ref()
                .try_into()
                .map_err(|_| MigrationError::Corrupt {
                    version: 0,
                    what: format!("format version value has {} bytes, expected 4", raw.len()),
                })?;
            Ok(Some(u32::from_be_bytes(bytes)))
        }
    }
}

/// Adds the version stamp `version` to `batch`, so that the stamp lands atomically with the
/// rest of the batch (used by steps and by the store when it creates a new store).
pub fn stamp_version(batch: &mut sled::Batch, version: u32) {
    batch.insert(FORMAT_VERSION_KEY, &version.to_be_bytes());
}

/// Upgrades the store from version `from` to [`CURRENT_FORMAT_VERSION`], running each step in
/// order. Each step is one atomic batch carrying the new version stamp, flushed before the
/// next one starts. Refuses a `from` that is not the store's version, or out of range.
pub fn migrate(db: &sled::Db, from: u32) -> Result<MigrationReport, MigrationError> {
    check_supported(from)?;
    let mut version = from;
    for step in STEPS.iter().filter(|s| s.from >= from) {
        let found = read_version(db)?.ok_or(MigrationError::MissingVersion)?;
        if found != step.from || version != step.from {
            return Err(MigrationError::WrongStart {
                expected: step.from,
                found,
            });
        }
        let mut batch = (step.build)(db)?;
        stamp_version(&mut batch, step.from + 1);
        db.apply_batch(batch)?;
        db.flush()?;
        version = step.from + 1;
    }
    debug_assert_eq!(version, CURRENT_FORMAT_VERSION);
    Ok(MigrationReport { from, to: version })
}

/// Reads the store's version and brings it to [`CURRENT_FORMAT_VERSION`]. A store of a newer
/// version is refused ([`MigrationError::TooNew`]); a database without a version key but with
/// data is not a store ([`MigrationError::MissingVersion`]). An empty database is left alone
/// (the caller creates a new store): the report then says `from == to == CURRENT`.
pub fn upgrade(db: &sled::Db) -> Result<MigrationReport, MigrationError> {
    match read_version(db)? {
        None if db.is_empty() => Ok(MigrationReport {
            from: CURRENT_FORMAT_VERSION,
            to: CURRENT_FORMAT_VERSION,
        }),
        None => Err(MigrationError::MissingVersion),
        Some(found) => migrate(db, found),
    }
}

fn check_supported(found: u32) -> Result<(), MigrationError> {
    if found > CURRENT_FORMAT_VERSION {
        return Err(MigrationError::TooNew {
            found,
            current: CURRENT_FORMAT_VERSION,
        });
    }
    if found < OLDEST_SUPPORTED_VERSION {
        return Err(MigrationError::TooOld {
            found,
            oldest: OLDEST_SUPPORTED_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        (dir, db)
    }

    #[test]
    fn steps_are_contiguous_and_reach_current() {
        let mut expected = OLDEST_SUPPORTED_VERSION;
        for step in STEPS {
            assert_eq!(step.from, expected, "steps must be in order with no gap");
            expected += 1;
        }
        assert_eq!(expected, CURRENT_FORMAT_VERSION);
    }

    #[test]
    fn newer_store_is_refused_and_left_untouched() {
        let (_dir, db) = temp_db();
        db.insert(
            FORMAT_VERSION_KEY,
            &(CURRENT_FORMAT_VERSION + 1).to_be_bytes(),
        )
        .unwrap();
        let err = upgrade(&db).unwrap_err();
        assert!(matches!(err, MigrationError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer quarry"), "{err}");
        assert_eq!(read_version(&db).unwrap(), Some(CURRENT_FORMAT_VERSION + 1));
    }

    #[test]
    fn data_without_version_is_not_a_store() {
        let (_dir, db) = temp_db();
        db.insert(b"something", b"else").unwrap();
        assert!(matches!(upgrade(&db), Err(MigrationError::MissingVersion)));
    }

    #[test]
    fn empty_database_and_current_store_need_nothing() {
        let (_dir, db) = temp_db();
        assert!(!upgrade(&db).unwrap().upgraded());
        db.insert(FORMAT_VERSION_KEY, &CURRENT_FORMAT_VERSION.to_be_bytes())
            .unwrap();
        let report = upgrade(&db).unwrap();
        assert!(!report.upgraded());
        assert_eq!(report.to, CURRENT_FORMAT_VERSION);
    }

    #[test]
    fn migrate_refuses_a_wrong_start_version() {
        let (_dir, db) = temp_db();
        db.insert(FORMAT_VERSION_KEY, &CURRENT_FORMAT_VERSION.to_be_bytes())
            .unwrap();
        assert!(matches!(
            migrate(&db, 1),
            Err(MigrationError::WrongStart { .. })
        ));
    }
}
