//! Recognising the disk's own failures in any error, whichever layer (sled, tantivy, the
//! feature files, the HNSW dumps, a thumbnail) ran into them, so that every front end can say
//! the one thing that helps: a full disk (free space, run again) or a failing one (check the
//! disk, run again). Either way nothing committed is lost and the work resumes.
//!
//! Why not a variant of each error type: the disk fails wherever the next write happens, and
//! several of the crates quarry writes through keep the OS error only as text (sled's `Error`
//! has no `source()`; tantivy and hnsw_rs wrap it in their own messages). Walking the chain for
//! an `io::Error` first and then reading the OS error code that Rust prints ("(os error 28)")
//! catches all of them with one rule.

use std::error::Error;
use std::io::ErrorKind;

/// A failure of the disk under the store, not of quarry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// No space left, or the user's quota is exhausted (`ENOSPC`, `EDQUOT`).
    Full,
    /// The disk reported an I/O error on a write or a sync (`EIO`): a dying disk, a NAS that
    /// lost its connection.
    Failed,
}

impl DiskFault {
    /// What to do about it, said after the error itself.
    pub fn hint(self) -> &'static str {
        match self {
            DiskFault::Full => {
                "the disk holding the store is full: free some space (or move the store to a \
                 larger disk), then index again — everything committed before the failure is \
                 kept, and indexing resumes where it stopped"
            }
            DiskFault::Failed => {
                "the disk holding the store reported an I/O error: check it (dmesg, the \
                 NAS's connection), then index again — everything committed before the failure \
                 is kept, and indexing resumes where it stopped"
            }
        }
    }

    fn of_code(code: i32) -> Option<Self> {
        match code {
            28 | 122 => Some(DiskFault::Full),
            5 => Some(DiskFault::Failed),
            _ => None,
        }
    }

    fn of_io(e: &std::io::Error) -> Option<Self> {
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(DiskFault::Full),
            _ => e.raw_os_error().and_then(Self::of_code),
        }
    }

    /// The fault an error message (all that is left of some errors) carries, from the OS error
    /// code as Rust prints it: "(os error 28)", or `Os { code: 28, .. }` where sled kept only
    /// the debug form of the error.
    pub fn in_message(message: &str) -> Option<Self> {
        [28, 122, 5]
            .into_iter()
            .find(|c| {
                message.contains(&format!("(os error {c})"))
                    || message.contains(&format!("Os {{ code: {c},"))
            })
            .and_then(Self::of_code)
    }

    /// The disk fault that caused `error` (or anything in its chain of causes), if any.
    pub fn cause_of(error: &(dyn Error + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(crate::store::StoreError::DiskFull { .. }) = store_error(e) {
                return Some(DiskFault::Full);
            }
            if let Some(fault) = e.downcast_ref::<std::io::Error>().and_then(Self::of_io) {
                return Some(fault);
            }
            if let Some(sled::Error::Io(io)) = e.downcast_ref::<sled::Error>() {
                if let Some(fault) = Self::of_io(io) {
                    return Some(fault);
                }
                // The store's flush that the disk never finished (`store::database`).
                if io.kind() == ErrorKind::TimedOut {
                    return Some(DiskFault::Failed);
                }
            }
            if let Some(fault) = Self::in_message(&e.to_string()) {
                return Some(fault);
            }
            next = e.source();
        }
        None
    }
}

/// The store error `e` is or wraps: `#[error(transparent)]` wrappers forward `source()` past
/// it, so a walk of the chain of causes never meets it on its own.
fn store_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a crate::store::StoreError> {
    use crate::indexing::IndexError;
    use crate::library::LibraryError;
    if let Some(s) = e.downcast_ref::<crate::store::StoreError>() {
        return Some(s);
    }
    if let Some(l) = e.downcast_ref::<LibraryError>() {
        return match l {
            LibraryError::Store(s) => Some(s),
            _ => None,
        };
    }
    match e.downcast_ref::<IndexError>() {
        Some(IndexError::Library(LibraryError::Store(s))) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing the index: {0}")]
    struct Wrapped(String);

    #[test]
    fn disk_faults_are_found_however_they_are_wrapped() {
        let enospc = std::io::Error::from_raw_os_error(28);
        assert_eq!(DiskFault::cause_of(&enospc), Some(DiskFault::Full));
        let sled_error = sled::Error::Io(std::io::Error::from_raw_os_error(28));
        assert_eq!(DiskFault::cause_of(&sled_error), Some(DiskFault::Full));
        // A crate that keeps only the text.
        let wrapped = Wrapped(enospc.to_string());
        assert_eq!(DiskFault::cause_of(&wrapped), Some(DiskFault::Full));
        let quota = std::io::Error::from_raw_os_error(122);
        assert_eq!(DiskFault::cause_of(&quota), Some(DiskFault::Full));
        let store = crate::store::StoreError::Io {
            path: "/s/features/000000.f16".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        assert_eq!(DiskFault::cause_of(&store), Some(DiskFault::Failed));
        let eio = Wrapped(std::io::Error::from_raw_os_error(5).to_string());
        assert_eq!(DiskFault::cause_of(&eio), Some(DiskFault::Failed));
        // sled 0.34 re-creates I/O errors from their debug form.
        let debug = Wrapped(format!("{:?}", std::io::Error::from_raw_os_error(5)));
        assert_eq!(DiskFault::cause_of(&debug), Some(DiskFault::Failed));
    }

    #[test]
    fn other_failures_are_not_disk_faults() {
        let not_found = std::io::Error::from(ErrorKind::NotFound);
        assert_eq!(DiskFault::cause_of(&not_found), None);
        let denied = std::io::Error::from_raw_os_error(13);
        assert_eq!(DiskFault::cause_of(&denied), None);
        assert_eq!(
            DiskFault::cause_of(&Wrapped("error 28 images".into())),
            None
        );
    }
}
