//! The sled database, closed without a panic when the disk has failed.
//!
//! sled 0.34 syncs its log file once more when the last handle is dropped and unwraps the
//! result (`Log::drop`), so a disk that fails fsync turns an error quarry already reported into
//! a panic in whatever drops the store — at the end of a run, or in the error path of an open.
//! [`Database`] tries the same sync first and, when it fails or a write already failed, leaves
//! the database for the OS to close at exit. Nothing is lost by skipping sled's last sync:
//! every acknowledged commit was synced by the commit itself.
//!
//! sled also writes its log on its own I/O threads, and when a sync fails there, a later
//! `flush` waits forever (found by the failing-fsync test). [`Database::flush`] therefore
//! waits at most [`FLUSH_TIMEOUT`] on a helper thread; past it the disk counts as failed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest a flush may take: a batch's records are well under a megabyte, which even a slow
/// NAS syncs in a few seconds.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A sled database (dereferences to [`sled::Db`]) that never panics when dropped.
pub(crate) struct Database {
    db: sled::Db,
    /// sled's log file, the one its drop syncs.
    log: PathBuf,
    /// A write or sync failed: no more I/O may reach sled (it can also hang in `flush` then).
    failed: AtomicBool,
}

impl Database {
    /// Wraps the database opened from the folder `db_dir`.
    pub(crate) fn new(db: sled::Db, db_dir: &Path) -> Self {
        Self {
            db,
            log: db_dir.join("db"),
            failed: AtomicBool::new(false),
        }
    }

    /// Records that the disk failed a write: the drop then skips sled's final sync.
    pub(crate) fn mark_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// sled's `flush` (write and fsync everything), given up after [`FLUSH_TIMEOUT`]: then the
    /// database counts as failed and the flush thread is left waiting (it holds a handle of
    /// its own, so it never touches freed memory).
    pub(crate) fn flush(&self) -> sled::Result<usize> {
        let db = self.db.clone();
        let (done, result) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || {
                let _ = done.send(db.flush());
            });
        if let Err(e) = spawned {
            return Err(sled::Error::Io(e));
        }
        match result.recv_timeout(FLUSH_TIMEOUT) {
            Ok(flushed) => flushed,
            Err(_) => {
                self.mark_failed();
                Err(sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the disk did not finish a sync within {} s",
                        FLUSH_TIMEOUT.as_secs()
                    ),
                )))
            }
        }
    }
}

impl std::ops::Deref for Database {
    type Target = sled::Db;
    fn deref(&self) -> &sled::Db {
        &self.db
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let healthy = !self.failed.load(Ordering::SeqCst)
            && self.flush().is_ok()
            && std::fs::File::open(&self.log)
                .and_then(|log| log.sync_all())
                .is_ok();
        if !healthy {
            // One more handle that is never dropped: sled's drop (and its unwrap) never runs.
            std::mem::forget(self.db.clone());
        }
    }
}
