//! What changed in the library since the last run, so that a re-run does only the work needed.
//!
//! `quarry index ~/Photos` is run again and again over tens of thousands of files. The second run
//! over an unchanged library must read no file content and do no model work; moving a folder
//! must re-embed nothing; a file that failed last time (truncated download, unreadable) is tried
//! again every run. The store supplies what it knows ([`KnownFile`]); [`plan_changes`] compares
//! it with a fresh [`Walk`] and returns a [`ChangePlan`] with explicit lists.
//!
//! Rules, in order:
//! 1. A walked file whose path, size and mtime equal those of a known, non-failed file is
//!    **unchanged** and is not read at all.
//! 2. Every other walked file is hashed ([`ContentHash`], streamed, in parallel). At a known
//!    path: previously failed → **retry**; same hash → **touched** (metadata only: update the
//!    record, no model work); other hash → **modified**.
//! 3. A known, non-failed path that is gone (not walked and not reported as a problem) is a
//!    **move** source: a new path with its hash is **moved** from it (pairs taken in path order
//!    when several files share content).
//! 4. A new path whose hash is that of a live indexed file (unchanged, touched, or a move target)
//!    is **copied** from it: its embeddings can be copied instead of recomputed.
//! 5. Everything else new is **new**; gone paths not consumed by moves are **deleted**.
//! 6. A known path that still exists but could not be examined this run (a walk problem, a
//!    file inside a folder that was a walk problem, or a read error while hashing) is
//!    **unavailable**: neither deleted nor re-embedded, so a temporarily unreadable file or
//!    folder does not vanish from search.
//! 7. Only known files under the walk's roots are compared: indexing `~/Photos/2020` after
//!    `~/Photos` deletes nothing outside `2020`. Known files outside the roots are assumed
//!    still there and can be copy sources.
//!
//! Two new files with the same content are both `new` (neither is indexed yet); the store may
//! still deduplicate the model work by hash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::hash::ContentHash;
use crate::walk::{FileProblem, FoundFile, Walk};

/// A file as the store recorded it after the previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    /// Absolute path, as the walk reports it.
    pub path: PathBuf,
    /// Size in bytes when indexed.
    pub size: u64,
    /// Modification time when indexed, nanoseconds since the Unix epoch.
    pub modified_ns: i64,
    /// Hash of the content that was indexed (or that failed).
    pub content_hash: ContentHash,
    /// The file could not be indexed last time; it is retried on every run.
    pub failed: bool,
}

/// A walked file with the hash of its current content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedFile {
    /// The file as walked; `size` is the number of bytes hashed.
    pub file: FoundFile,
    /// Hash of the content now.
    pub content_hash: ContentHash,
}

/// A known file whose content changed in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modified {
    /// The file with its new content hash.
    pub file: HashedFile,
    /// The hash that was indexed before.
    pub previous_hash: ContentHash,
}

/// A known file that now lives at another path (same content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The path it was indexed under, now gone.
    pub from: PathBuf,
    /// The file at its new path.
    pub to: HashedFile,
}

/// A new path whose content is already indexed under another, still present, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// A path holding this content after the plan is applied (apply moves before copies: the
    /// source may be a move target).
    pub source: PathBuf,
    /// The new file.
    pub to: HashedFile,
}

/// Everything that differs between the store and the library, each list sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangePlan {
    /// Files never seen: embed.
    pub new: Vec<HashedFile>,
    /// Known paths with new content: embed again, replacing the old record.
    pub modified: Vec<Modified>,
    /// Known content at a new path: update the path, no model work.
    pub moved: Vec<Moved>,
    /// Known content at an additional path: copy the record, no model work.
    pub copied: Vec<Copied>,
    /// New paths whose content another file of this run also brings (a new, modified or
    /// retried file, the `source`): that file is embedded once and these copy its record
    /// afterwards. Apply them after the model work; a source that fails leaves them to the
    /// next run.
    pub duplicates: Vec<Copied>,
    /// Same path and content, new size/mtime record (e.g. `touch`): update metadata only.
    pub touched: Vec<HashedFile>,
    /// Files that failed last time: try again.
    pub retry: Vec<HashedFile>,
    /// Known files that are gone: remove from the store and from search.
    pub deleted: Vec<KnownFile>,
    /// Known files present but not examinable this run: leave their records as they are.
    pub unavailable: Vec<PathBuf>,
    /// Known files with the same path, size and mtime: nothing to do (not read).
    pub unchanged: u64,
    /// Files that could not be hashed (each also in `unavailable` when it was known).
    pub problems: Vec<FileProblem>,
}

impl ChangePlan {
    /// The files that need decoding and the model: new, modified and retried ones.
    pub fn to_embed(&self) -> impl Iterator<Item = &HashedFile> {
        self.new
            .iter()
            .chain(self.modified.iter().map(|m| &m.file))
            .chain(self.retry.iter())
    }

    /// Whether the run has no model work to do.
    pub fn needs_no_model_work(&self) -> bool {
        self.new.is_empty() && self.modified.is_empty() && self.retry.is_empty()
    }

    /// Whether the store needs no change at all.
    pub fn is_empty(&self) -> bool {
        self.needs_no_model_work()
            && self.moved.is_empty()
            && self.copied.is_empty()
            && self.duplicates.is_empty()
            && self.touched.is_empty()
            && self.deleted.is_empty()
    }
}

/// Compares a fresh walk with what the store knows (see the module docs for the rules). Hashes
/// files in parallel on rayon's global pool.
pub fn plan_changes(walk: &Walk, known: &[KnownFile]) -> ChangePlan {
    let in_scope = |path: &Path| walk.roots.iter().any(|root| path.starts_with(root));
    let (known, out_of_scope): (Vec<&KnownFile>, Vec<&KnownFile>) =
        known.iter().partition(|k| in_scope(&k.path));
    let known_by_path: HashMap<&Path, &KnownFile> =
        known.iter().map(|k| (k.path.as_path(), *k)).collect();
    let mut plan = ChangePlan::default();
    let problem_paths: HashSet<&Path> = walk.problems.iter().map(|p| p.path.as_path()).collect();
    let mut present: HashSet<&Path> = problem_paths.clone();
    // Content indexed under a path that stays: sources for copies.
    let mut live: HashMap<ContentHash, PathBuf> = HashMap::new();
    for k in out_of_scope.iter().filter(|k| !k.failed) {
        live.entry(k.content_hash).or_insert_with(|| k.path.clone());
    }
    let mut to_hash = Vec::new();
    for file in &walk.files {
        present.insert(&file.path);
        match known_by_path.get(file.path.as_path()) {
            Some(k) if !k.failed && k.size == file.size && k.modified_ns == file.modified_ns => {
                plan.unchanged += 1;
                live.entry(k.content_hash).or_insert_with(|| k.path.clone());
            }
            _ => to_hash.push(file),
        }
    }
    for p in &walk.problems {
        if known_by_path.contains_key(p.path.as_path()) {
            plan.unavailable.push(p.path.clone());
        }
    }

    let hashed: Vec<_> = to_hash
        .par_iter()
        .map(|file| (*file, ContentHash::of_file(&file.path)))
        .collect();
    let mut candidates = Vec::new();
    for (file, result) in hashed {
        let (content_hash, len) = match result {
            Ok(ok) => ok,
            Err(e) => {
                plan.problems.push(FileProblem {
                    path: file.path.clone(),
                    reason: format!("cannot read: {e}"),
                });
                if known_by_path.contains_key(file.path.as_path()) {
                    plan.unavailable.push(file.path.clone());
                }
                continue;
            }
        };
        let hashed = HashedFile {
            file: FoundFile {
                size: len,
                ..file.clone()
            },
            content_hash,
        };
        match known_by_path.get(file.path.as_path()) {
            Some(k) if k.failed => plan.retry.push(hashed),
            Some(k) if k.content_hash == content_hash => {
                live.entry(content_hash).or_insert_with(|| k.path.clone());
                plan.touched.push(hashed);
            }
            Some(k) => plan.modified.push(Modified {
                file: hashed,
                previous_hash: k.content_hash,
            }),
            None => candidates.push(hashed),
        }
    }

    // Known paths inside a folder the walk could not read: unavailable, not gone.
    for k in &known {
        let path = k.path.as_path();
        if !present.contains(path) && path.ancestors().skip(1).any(|a| problem_paths.contains(a)) {
            plan.unavailable.push(k.path.clone());
            present.insert(path);
        }
    }
    // Known paths that are gone: non-failed ones can be the source of a move.
    let mut gone: Vec<&KnownFile> = known
        .iter()
        .copied()
        .filter(|k| !present.contains(k.path.as_path()))
        .collect();
    gone.sort_by(|a, b| a.path.cmp(&b.path));
    let mut move_sources: HashMap<ContentHash, VecDeque<&KnownFile>> = HashMap::new();
    for k in gone.iter().filter(|k| !k.failed) {
        move_sources.entry(k.content_hash).or_default().push_back(k);
    }
    let mut moved_from: HashSet<&Path> = HashSet::new();
    // Content this run embeds: the first file to bring it is embedded, later ones copy it.
    let mut embedding: HashMap<ContentHash, PathBuf> = HashMap::new();
    let mut changed: Vec<&HashedFile> = plan
        .modified
        .iter()
        .map(|m| &m.file)
        .chain(&plan.retry)
        .collect();
    changed.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    for f in changed {
        embedding
            .entry(f.content_hash)
            .or_insert_with(|| f.file.path.clone());
    }
    candidates.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    for hashed in candidates {
        let hash = hashed.content_hash;
        if let Some(source) = move_sources.get_mut(&hash).and_then(VecDeque::pop_front) {
            moved_from.insert(&source.path);
            live.entry(hash).or_insert_with(|| hashed.file.path.clone());
            plan.moved.push(Moved {
                from: source.path.clone(),
                to: hashed,
            });
        } else if let Some(source) = live.get(&hash) {
            plan.copied.push(Copied {
                source: source.clone(),
                to: hashed,
            });
        } else if let Some(source) = embedding.get(&hash) {
            plan.duplicates.push(Copied {
                source: source.clone(),
                to: hashed,
            });
        } else {
            embedding.insert(hash, hashed.file.path.clone());
            plan.new.push(hashed);
        }
    }
    plan.deleted = gone
        .into_iter()
        .filter(|k| !moved_from.contains(k.path.as_path()))
        .cloned()
        .collect();

    plan.new.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    plan.modified
        .sort_by(|a, b| a.file.file.path.cmp(&b.file.file.path));
    plan.touched.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    plan.retry.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    plan.unavailable.sort();
    plan.unavailable.dedup();
    plan.problems.sort_by(|a, b| a.path.cmp(&b.path));
    plan
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::testutil;
    use crate::walk::{walk_library, WalkOptions};

    fn walk(root: &Path) -> Walk {
        walk_library(&[root.to_path_buf()], &WalkOptions::default()).unwrap()
    }

    /// What the store would know after indexing `walk` successfully.
    fn known_after(walk: &Walk) -> Vec<KnownFile> {
        walk.files
            .iter()
            .map(|f| KnownFile {
                path: f.path.clone(),
                size: f.size,
                modified_ns: f.modified_ns,
                content_hash: ContentHash::of_file(&f.path).unwrap().0,
                failed: false,
            })
            .collect()
    }

    fn paths(files: &[HashedFile]) -> Vec<&Path> {
        files.iter().map(|h| h.file.path.as_path()).collect()
    }

    fn set_mtime(path: &Path, secs_ago: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    #[test]
    fn unchanged_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), testutil::png(3, 3)).unwrap();
        let first = walk(dir.path());
        let mut known = known_after(&first);
        // A wrong stored hash would show up as "modified" if the file were read.
        known[0].content_hash = ContentHash(7);
        let plan = plan_changes(&walk(dir.path()), &known);
        assert_eq!(plan.unchanged, 1);
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn new_modified_touched_deleted_and_retry_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for (name, side) in [
            ("keep", 2),
            ("edit", 3),
            ("touch", 4),
            ("gone", 5),
            ("bad", 6),
        ] {
            std::fs::write(p(&format!("{name}.png")), testutil::png(side, side)).unwrap();
            set_mtime(&p(&format!("{name}.png")), 1000);
        }
        let mut known = known_after(&walk(dir.path()));
        known
            .iter_mut()
            .find(|k| k.path == p("bad.png"))
            .unwrap()
            .failed = true;

        std::fs::write(p("edit.png"), testutil::png(9, 9)).unwrap();
        set_mtime(&p("touch.png"), 10);
        std::fs::remove_file(p("gone.png")).unwrap();
        std::fs::write(p("fresh.png"), testutil::png(11, 11)).unwrap();

        let plan = plan_changes(&walk(dir.path()), &known);
        assert_eq!(plan.unchanged, 1, "keep.png");
        assert_eq!(paths(&plan.new), [p("fresh.png")]);
        assert_eq!(plan.modified.len(), 1);
        assert_eq!(plan.modified[0].file.file.path, p("edit.png"));
        assert_eq!(
            plan.modified[0].file.content_hash,
            ContentHash::of_bytes(&testutil::png(9, 9))
        );
        assert_eq!(
            plan.modified[0].previous_hash,
            ContentHash::of_bytes(&testutil::png(3, 3))
        );
        assert_eq!(paths(&plan.touched), [p("touch.png")]);
        assert_eq!(
            paths(&plan.retry),
            [p("bad.png")],
            "failed files are retried even unchanged"
        );
        let deleted: Vec<_> = plan.deleted.iter().map(|k| k.path.clone()).collect();
        assert_eq!(deleted, [p("gone.png")]);
        assert!(plan.moved.is_empty() && plan.copied.is_empty());
        let embed: Vec<_> = plan.to_embed().map(|h| h.file.path.clone()).collect();
        assert_eq!(embed, [p("fresh.png"), p("edit.png"), p("bad.png")]);
    }

    #[test]
    fn a_moved_folder_re_embeds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lib");
        std::fs::create_dir_all(root.join("2020/summer")).unwrap();
        for i in 0..5 {
            std::fs::write(
                root.join(format!("2020/summer/{i}.png")),
                testutil::png(2 + i, 2),
            )
            .unwrap();
        }
        // Two files with identical content: both moves must pair up one to one.
        std::fs::write(root.join("2020/summer/dup.png"), testutil::png(2, 2)).unwrap();
        let known = known_after(&walk(&root));
        std::fs::rename(root.join("2020"), root.join("archive-2020")).unwrap();

        let plan = plan_changes(&walk(&root), &known);
        assert!(plan.needs_no_model_work(), "{plan:?}");
        assert_eq!(plan.moved.len(), 6);
        assert!(plan.deleted.is_empty() && plan.copied.is_empty());
        let mut from: Vec<_> = plan.moved.iter().map(|m| m.from.clone()).collect();
        from.sort();
        from.dedup();
        assert_eq!(from.len(), 6, "each old path is used once");
        let known_hash: HashMap<&Path, ContentHash> = known
            .iter()
            .map(|k| (k.path.as_path(), k.content_hash))
            .collect();
        for m in &plan.moved {
            // Pairs follow path order, so equal contents keep their own names.
            let rel = m.from.strip_prefix(root.join("2020")).unwrap();
            assert_eq!(m.to.file.path, root.join("archive-2020").join(rel));
            assert_eq!(known_hash[m.from.as_path()], m.to.content_hash);
        }
    }

    #[test]
    fn copies_of_live_files_are_copied_not_new() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.png"), testutil::png(4, 4)).unwrap();
        let known = known_after(&walk(dir.path()));
        std::fs::copy(p("a.png"), p("b.png")).unwrap();
        let plan = plan_changes(&walk(dir.path()), &known);
        assert_eq!(plan.copied.len(), 1);
        assert_eq!(plan.copied[0].source, p("a.png"));
        assert_eq!(plan.copied[0].to.file.path, p("b.png"));
        assert!(plan.needs_no_model_work());
        assert_eq!(plan.unchanged, 1);
    }

    #[test]
    fn identical_new_files_are_embedded_once_and_the_rest_copied_after() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.png"), testutil::png(4, 4)).unwrap();
        std::fs::write(p("m.png"), testutil::png(5, 5)).unwrap();
        let known = known_after(&walk(dir.path()));
        // m.png changes to the content of the new n.png and o.png; c.png and b.png are new
        // and identical to each other.
        std::fs::write(p("c.png"), testutil::png(6, 6)).unwrap();
        std::fs::write(p("b.png"), testutil::png(6, 6)).unwrap();
        std::fs::write(p("m.png"), testutil::png(7, 7)).unwrap();
        std::fs::write(p("o.png"), testutil::png(7, 7)).unwrap();
        std::fs::write(p("n.png"), testutil::png(7, 7)).unwrap();
        set_mtime(&p("m.png"), 5);
        let plan = plan_changes(&walk(dir.path()), &known);
        assert_eq!(paths(&plan.new), [p("b.png")]);
        assert_eq!(plan.modified.len(), 1);
        let duplicates: Vec<(PathBuf, PathBuf)> = plan
            .duplicates
            .iter()
            .map(|d| (d.source.clone(), d.to.file.path.clone()))
            .collect();
        assert_eq!(
            duplicates,
            [
                (p("b.png"), p("c.png")),
                (p("m.png"), p("n.png")),
                (p("m.png"), p("o.png"))
            ]
        );
        assert!(plan.copied.is_empty());
        assert_eq!(plan.to_embed().count(), 2);
    }

    #[test]
    fn known_files_with_problems_are_unavailable_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.png"), testutil::png(4, 4)).unwrap();
        let known = known_after(&walk(dir.path()));
        // The file still exists but the walk could not use it this time.
        let mut now = walk(dir.path());
        now.files.clear();
        now.problems.push(FileProblem {
            path: p("a.png"),
            reason: "cannot read: Permission denied".into(),
        });
        let plan = plan_changes(&now, &known);
        assert_eq!(plan.unavailable, [p("a.png")]);
        assert!(plan.deleted.is_empty());
        // A file that vanishes between the walk and hashing is a problem, also unavailable.
        let mut stale = walk(dir.path());
        stale.files[0].size += 1;
        std::fs::remove_file(p("a.png")).unwrap();
        let plan = plan_changes(&stale, &known);
        assert_eq!(plan.problems.len(), 1);
        assert_eq!(plan.unavailable, [p("a.png")]);
        assert!(plan.deleted.is_empty());
    }

    #[test]
    fn files_in_an_unreadable_folder_are_unavailable_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::create_dir(p("album")).unwrap();
        std::fs::write(p("album/a.png"), testutil::png(4, 4)).unwrap();
        let known = known_after(&walk(dir.path()));
        let mut now = walk(dir.path());
        now.files.clear();
        now.problems.push(FileProblem {
            path: p("album"),
            reason: "cannot read: Permission denied".into(),
        });
        let plan = plan_changes(&now, &known);
        assert_eq!(plan.unavailable, [p("album/a.png")]);
        assert!(plan.deleted.is_empty(), "{plan:?}");
    }

    #[test]
    fn only_files_under_the_walked_roots_are_compared() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for sub in ["2020", "2021"] {
            std::fs::create_dir(p(sub)).unwrap();
        }
        std::fs::write(p("2020/a.png"), testutil::png(4, 4)).unwrap();
        std::fs::write(p("2021/b.png"), testutil::png(5, 5)).unwrap();
        let known = known_after(&walk(dir.path()));
        // A copy of a file outside the walked root is still a copy.
        std::fs::write(p("2021/a-copy.png"), testutil::png(4, 4)).unwrap();
        let plan = plan_changes(&walk(&p("2021")), &known);
        assert!(
            plan.deleted.is_empty(),
            "2020 is not part of this walk: {plan:?}"
        );
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.copied.len(), 1);
        assert_eq!(plan.copied[0].source, p("2020/a.png"));
        assert!(plan.new.is_empty());
    }

    #[test]
    fn failed_files_that_vanish_are_deleted_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.png"), testutil::png(4, 4)).unwrap();
        let mut known = known_after(&walk(dir.path()));
        known[0].failed = true;
        std::fs::rename(p("a.png"), p("b.png")).unwrap();
        let plan = plan_changes(&walk(dir.path()), &known);
        assert_eq!(
            paths(&plan.new),
            [p("b.png")],
            "a failed file is not known content"
        );
        assert_eq!(plan.deleted.len(), 1);
        assert!(plan.moved.is_empty());
    }
}
