//! Watched library folders: what changed, in batches worth an indexing run.
//!
//! The operating system reports changes (inotify on Linux, FSEvents on macOS, through
//! `notify`); this module turns that stream into batches of paths for
//! [`crate::indexing::index_changes`], so that a photo copied into a library of 100 000 is
//! indexed without walking the other 99 999.
//!
//! * **A file still being written is not taken.** A path is ready once no event has touched it
//!   for the settle time, its size and modification time held still over that time, and (on
//!   Linux, which reports it) its writer has closed it: a camera import or a network copy that
//!   stalls keeps the file open, and the decoder would otherwise read half a photo (and record
//!   it as failed).
//! * **Large copies are batched.** A batch is handed out when everything pending has settled,
//!   or, while a long copy keeps adding files, every `max_wait` with what has settled so far,
//!   so the first photos of a 10 000-photo import are searchable within seconds.
//! * **Moves keep both ends.** A rename reports the old and the new path; both go in the same
//!   batch, so the run sees a file vanish and the same content appear and moves the record
//!   instead of embedding it again.
//! * **Overflow means rescan.** When the kernel's event queue overflows, events were lost; the
//!   batch says [`WatchBatch::Rescan`] and the caller walks the roots in full.
//!
//! Hidden entries (a name starting with `.`) are ignored, as the walk ignores them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Why folders could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A folder to watch does not exist.
    #[error("cannot watch {path}: no such file or folder")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The watch could not be set up (a missing folder, or the OS's watch limit).
    #[error(
        "cannot watch {path}: {reason} (on Linux, a library with very many folders may need a \
         higher fs.inotify.max_user_watches)"
    )]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The OS's explanation.
        reason: String,
    },
}

impl WatchError {
    /// Whether the user can fix it (a mistyped folder) rather than the system's limits.
    pub fn is_user_error(&self) -> bool {
        matches!(self, WatchError::Missing { .. })
    }
}

/// What changed since the last batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// These paths (files or folders, existing or gone) changed.
    Changed(Vec<PathBuf>),
    /// Events were lost: walk every root again.
    Rescan,
}

/// How long changes must be quiet before they are handed out.
#[derive(Debug, Clone, Copy)]
pub struct WatchTiming {
    /// A path is ready when untouched, and its size unchanged, for this long.
    pub settle: Duration,
    /// While changes keep coming, what has settled is handed out at least this often.
    pub max_wait: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        Self {
            settle: Duration::from_millis(1500),
            max_wait: Duration::from_secs(10),
        }
    }
}

/// A pending path: when it was last touched, and the size and time it had then.
#[derive(Debug, Clone, Copy)]
struct Pending {
    touched: Instant,
    first: Instant,
    stamp: Option<(u64, Option<SystemTime>)>,
    /// A writer has it open (created or written, not yet closed; Linux reports closes).
    open_for_write: bool,
}

/// How long a file left open by its writer, untouched, is waited for before it is taken anyway
/// (a writer that never closes, or a platform that does not report closes).
const OPEN_WRITER_PATIENCE: Duration = Duration::from_secs(30);

/// Watches folders recursively and hands out settled batches of changed paths.
pub struct FolderWatcher {
    _watcher: RecommendedWatcher,
    events: Receiver<notify::Result<notify::Event>>,
    settler: Settler,
}

impl std::fmt::Debug for FolderWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatcher")
            .field("settler", &self.settler)
            .finish()
    }
}

impl FolderWatcher {
    /// Starts watching `roots` (folders, recursively).
    pub fn new(roots: &[PathBuf], timing: WatchTiming) -> Result<Self, WatchError> {
        let (tx, events) = channel();
        let mut watcher = notify::recommended_watcher(tx).map_err(|e| WatchError::Watch {
            path: roots.first().cloned().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let roots: Vec<PathBuf> = roots
            .iter()
            .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
            .collect();
        for root in &roots {
            if !root.exists() {
                return Err(WatchError::Missing { path: root.clone() });
            }
            watcher
                .watch(root, RecursiveMode::Recursive)
                .map_err(|e| WatchError::Watch {
                    path: root.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Self {
            _watcher: watcher,
            events,
            settler: Settler::new(roots, timing),
        })
    }

    /// Waits for the next batch; polls `stop` a few times a second and returns `None` once it
    /// says so.
    pub fn next_batch(&mut self, stop: &dyn Fn() -> bool) -> Option<WatchBatch> {
        loop {
            if stop() {
                return None;
            }
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(event) => {
                    self.settler.note(event, Instant::now());
                    // Drain what else is queued before judging.
                    while let Ok(event) = self.events.try_recv() {
                        self.settler.note(event, Instant::now());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
            if let Some(batch) = self.settler.take(Instant::now()) {
                return Some(batch);
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

fn hidden(path: &Path, roots: &[PathBuf]) -> bool {
    let relative = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok())
        .unwrap_or(path);
    relative
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
}

/// The batching rules of the module docs, apart from the operating system: fed events, asked
/// for batches, at times the caller gives (so they can be tested without waiting).
#[derive(Debug)]
struct Settler {
    timing: WatchTiming,
    pending: HashMap<PathBuf, Pending>,
    rescan: bool,
    /// The watched folders, absolute: hidden components are judged below them (a library
    /// inside a hidden folder is still watched).
    roots: Vec<PathBuf>,
}

impl Settler {
    fn new(roots: Vec<PathBuf>, timing: WatchTiming) -> Self {
        Self {
            timing,
            pending: HashMap::new(),
            rescan: false,
            roots,
        }
    }

    fn note(&mut self, event: notify::Result<notify::Event>, now: Instant) {
        let event = match event {
            Ok(event) => event,
            Err(_) => {
                // The watcher itself failed (a queue overflow is reported so on some systems).
                self.rescan = true;
                return;
            }
        };
        if event.need_rescan() {
            self.rescan = true;
        }
        let open_for_write = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
            EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                Some(cfg!(target_os = "linux"))
            }
            _ => None,
        };
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            EventKind::Other => {
                self.rescan |= event.paths.is_empty();
                !event.paths.is_empty()
            }
            _ => true,
        };
        if !relevant {
            return;
        }
        for path in event.paths {
            if hidden(&path, &self.roots) {
                continue;
            }
            let entry = self.pending.entry(path.clone()).or_insert(Pending {
                touched: now,
                first: now,
                stamp: None,
                open_for_write: false,
            });
            entry.touched = now;
            entry.stamp = stamp(&path);
            if let Some(open) = open_for_write {
                entry.open_for_write = open;
            }
        }
    }

    /// A rescan when events were lost; else the settled paths, once all pending ones have
    /// settled or the oldest has waited `max_wait`.
    fn take(&mut self, now: Instant) -> Option<WatchBatch> {
        if self.rescan {
            self.rescan = false;
            self.pending.clear();
            return Some(WatchBatch::Rescan);
        }
        if self.pending.is_empty() {
            return None;
        }
        let settle = self.timing.settle;
        let mut settled = Vec::new();
        for (path, p) in self.pending.iter_mut() {
            let quiet = now.saturating_duration_since(p.touched);
            if quiet < settle || (p.open_for_write && quiet < OPEN_WRITER_PATIENCE) {
                continue;
            }
            // Quiet long enough: still the size and time it had when last touched?
            let current = stamp(path);
            if current == p.stamp {
                settled.push(path.clone());
            } else {
                p.touched = now;
                p.stamp = current;
            }
        }
        let all = settled.len() == self.pending.len();
        let overdue = self
            .pending
            .values()
            .any(|p| now.saturating_duration_since(p.first) >= self.timing.max_wait);
        if settled.is_empty() || !(all || overdue) {
            return None;
        }
        for path in &settled {
            self.pending.remove(path);
        }
        settled.sort();
        Some(WatchBatch::Changed(settled))
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{DataChange, Flag, ModifyKind, RemoveKind};
    use notify::Event;

    use super::*;

    const TIMING: WatchTiming = WatchTiming {
        settle: Duration::from_secs(1),
        max_wait: Duration::from_secs(10),
    };

    fn event(kind: EventKind, paths: &[&Path]) -> notify::Result<Event> {
        Ok(paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(p.to_path_buf())))
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    fn changed(batch: Option<WatchBatch>) -> Vec<PathBuf> {
        match batch {
            Some(WatchBatch::Changed(paths)) => paths,
            other => panic!("expected changed paths, got {other:?}"),
        }
    }

    #[test]
    fn a_file_is_handed_out_once_quiet_closed_and_no_longer_growing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.jpg");
        std::fs::write(&file, b"half").unwrap();
        let mut s = Settler::new(vec![dir.path().to_path_buf()], TIMING);
        let t0 = Instant::now();
        s.note(event(EventKind::Create(CreateKind::File), &[&file]), t0);
        assert_eq!(s.take(secs(t0, 0.5)), None, "not quiet yet");
        if cfg!(target_os = "linux") {
            assert_eq!(s.take(secs(t0, 5.0)), None, "still open for writing");
            s.note(
                event(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &[&file],
                ),
                secs(t0, 5.0),
            );
            s.note(
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &[&file],
                ),
                secs(t0, 5.0),
            );
        }
        // Grows without an event (a writer on another machine): the size check holds it back.
        std::fs::write(&file, b"half and the rest").unwrap();
        assert_eq!(
            s.take(secs(t0, 6.5)),
            None,
            "the size changed since the last event"
        );
        assert_eq!(changed(s.take(secs(t0, 8.0))), std::slice::from_ref(&file));
        assert_eq!(s.take(secs(t0, 9.0)), None, "handed out once");
        // Without a close on platforms that report closes, patience runs out eventually.
        s.note(
            event(EventKind::Create(CreateKind::File), &[&file]),
            secs(t0, 10.0),
        );
        assert_eq!(changed(s.take(secs(t0, 10.0 + 31.0))), [file]);
    }

    #[test]
    fn a_long_copy_is_handed_out_in_batches_and_both_ends_of_a_move_together() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, gone) = (
            dir.path().join("a.png"),
            dir.path().join("b.png"),
            dir.path().join("old.png"),
        );
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let mut s = Settler::new(vec![dir.path().to_path_buf()], TIMING);
        let t0 = Instant::now();
        let renamed = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::Both));
        s.note(event(renamed, &[&gone, &a]), t0);
        // `b` keeps being written: `a` and the vanished `old.png` wait for it...
        for k in 0..9 {
            s.note(
                event(EventKind::Modify(ModifyKind::Any), &[&b]),
                secs(t0, f64::from(k)),
            );
            assert_eq!(s.take(secs(t0, f64::from(k) + 0.5)), None, "at {k} s");
        }
        // ...until the oldest has waited max_wait: then what settled goes, together.
        s.note(
            event(EventKind::Modify(ModifyKind::Any), &[&b]),
            secs(t0, 10.0),
        );
        assert_eq!(changed(s.take(secs(t0, 10.2))), [a, gone]);
        assert_eq!(changed(s.take(secs(t0, 11.5))), [b]);
    }

    #[test]
    fn lost_events_and_watcher_errors_ask_for_a_full_walk() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        let mut s = Settler::new(vec![dir.path().to_path_buf()], TIMING);
        let t0 = Instant::now();
        s.note(event(EventKind::Remove(RemoveKind::File), &[&file]), t0);
        s.note(Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)), t0);
        assert_eq!(s.take(t0), Some(WatchBatch::Rescan));
        assert_eq!(
            s.take(secs(t0, 5.0)),
            None,
            "the walk covers what was pending"
        );
        s.note(Err(notify::Error::generic("queue overflow")), t0);
        assert_eq!(s.take(t0), Some(WatchBatch::Rescan));
    }

    #[test]
    fn hidden_entries_and_reads_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(".library-in-a-hidden-folder");
        let mut s = Settler::new(vec![root.clone()], TIMING);
        let t0 = Instant::now();
        s.note(
            event(
                EventKind::Create(CreateKind::File),
                &[&root.join(".DS_Store"), &root.join(".thumbs/a.jpg")],
            ),
            t0,
        );
        s.note(
            event(
                EventKind::Access(AccessKind::Read),
                &[&root.join("photo.jpg")],
            ),
            t0,
        );
        assert_eq!(s.take(secs(t0, 60.0)), None);
        s.note(
            event(
                EventKind::Remove(RemoveKind::File),
                &[&root.join("photo.jpg")],
            ),
            t0,
        );
        assert_eq!(changed(s.take(secs(t0, 2.0))), [root.join("photo.jpg")]);
    }
}
