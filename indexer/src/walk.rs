//! Finding the photos under the folders a user names.
//!
//! `quarry index ~/Photos` must cope with what real libraries contain: symlinked folders (and
//! the occasional symlink loop), hidden folders of thumbnails, files whose names lie about their
//! content, files the user may not read, and names in every script. The walk never stops for
//! one bad file: anything wrong with a single file or folder becomes a [`FileProblem`] (path and
//! reason) and the walk goes on. Only unusable inputs — a root that does not exist, an invalid
//! exclude pattern — are errors.
//!
//! Decisions:
//! - **Content, not extension.** A file is an image when its first bytes say so ([`sniff`]).
//!   The extension only decides whether a non-image deserves a report: `holiday.jpg` that is
//!   really text (or empty) is a problem the user wants to hear about, while `notes.txt` is
//!   skipped silently (and counted).
//! - **Absolute, not canonical, paths.** Roots are made absolute against the current directory
//!   (`std::path::absolute`: `.` components removed, `..` kept) but symlinks are *not* resolved.
//!   A library reached through a symlink (`~/Photos -> /mnt/disk/photos`) keeps the path the
//!   user knows, search results show that path, and remounting the disk elsewhere while keeping
//!   the symlink does not make every file look moved.
//! - **Symlinks are followed, loops are not.** A link back to an ancestor folder is reported as
//!   a problem naming the link. A file reachable by several paths (a symlinked folder inside the
//!   library, hard links) is listed once, under the first path in sorted walk order, so it is not
//!   indexed twice; the others are counted in [`Walk::duplicate_paths`].
//! - **Hidden entries** (names starting with `.`) are skipped with everything below them unless
//!   [`WalkOptions::include_hidden`]; a root is always walked even if its own name is hidden.
//! - **Excludes** are globs (the `globset` syntax: `*`, `?`, `[..]`, `{a,b}`, `**`). Each is
//!   matched against both the absolute path and the path relative to its root; `*` also matches
//!   `/`, so `*.tmp` excludes every `.tmp` file at any depth and `*/Thumbnails` every folder named
//!   `Thumbnails`. An excluded folder is not entered. Roots themselves are never excluded.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::sniff::{sniff, ImageKind, Sniffed, SNIFF_LEN};

/// What to skip while walking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Glob patterns of files and folders to skip (see the module docs for how they match).
    pub excludes: Vec<String>,
    /// Walk hidden files and folders (names starting with `.`) too.
    pub include_hidden: bool,
}

/// An image file found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// Absolute path, symlinks not resolved.
    pub path: PathBuf,
    /// Size in bytes when listed.
    pub size: u64,
    /// Last modification time, nanoseconds since the Unix epoch (negative before 1970; 0 if the
    /// platform does not report it).
    pub modified_ns: i64,
    /// The format its content has.
    pub format: ImageKind,
}

/// A file or folder that could not be used, and why. The walk goes on after each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file or folder.
    pub path: PathBuf,
    /// What is wrong, in words for the user.
    pub reason: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The result of walking the roots.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// The roots walked, absolute: the part of the library this walk speaks for.
    pub roots: Vec<PathBuf>,
    /// Image files, sorted by path.
    pub files: Vec<FoundFile>,
    /// Files and folders that could not be used, sorted by path.
    pub problems: Vec<FileProblem>,
    /// Files skipped because their content is not an image and their name does not claim to be
    /// one (documents, videos, sidecar files), and special files (sockets, pipes, devices).
    pub skipped_non_images: u64,
    /// Further paths to a file already listed (symlinks into the library, hard links).
    pub duplicate_paths: u64,
}

/// Inputs the walk cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A root does not exist (or is a broken symlink).
    #[error("{path}: no such file or folder; check the path to index")]
    MissingRoot {
        /// The root as given, made absolute.
        path: PathBuf,
    },
    /// A root could not be made absolute (the current directory is unavailable).
    #[error("{path}: cannot be made absolute: {source}")]
    Absolute {
        /// The root as given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An exclude pattern is not a valid glob.
    #[error("invalid exclude pattern {pattern:?}: {reason}")]
    InvalidExclude {
        /// The pattern as given.
        pattern: String,
        /// The glob parser's explanation.
        reason: String,
    },
}

/// File name extensions that claim image content: a file so named whose content is not an
/// image is reported rather than skipped.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "gif", "bmp", "dib", "tif", "tiff",
    "heic", "heif", "avif", "jxl", "dng", "nef", "nrw", "arw", "srf", "sr2", "cr2", "pef",
];

/// Walks `roots` (files or folders) and lists the images under them. See the module docs.
pub fn walk_library(roots: &[PathBuf], opts: &WalkOptions) -> Result<Walk, WalkError> {
    let excludes = build_excludes(&opts.excludes)?;
    let mut absolute_roots = Vec::with_capacity(roots.len());
    for root in roots {
        let abs = std::path::absolute(root).map_err(|source| WalkError::Absolute {
            path: root.clone(),
            source,
        })?;
        match std::fs::metadata(&abs) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WalkError::MissingRoot { path: abs })
            }
            // Exists but cannot be examined (e.g. a parent folder without search permission):
            // walkdir reports it below as a problem.
            _ => absolute_roots.push(abs),
        }
    }

    let mut walk = Walk::default();
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for root in &absolute_roots {
        let entries = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || keep_entry(e, root, opts, &excludes));
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    walk.problems.push(walk_problem(&err, root));
                    continue;
                }
            };
            let file_type = entry.file_type();
            if file_type.is_dir() {
                continue;
            }
            if !file_type.is_file() {
                walk.skipped_non_images += 1;
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) => {
                    walk.problems.push(walk_problem(&err, root));
                    continue;
                }
            };
            if !seen.insert(file_identity(entry.path(), &meta)) {
                walk.duplicate_paths += 1;
                continue;
            }
            candidates.push(Candidate {
                path: entry.path().to_path_buf(),
                size: meta.len(),
                modified_ns: modified_ns(&meta),
                named_explicitly: entry.depth() == 0,
            });
        }
    }

    // Sniffing opens every file: in parallel, since on network or spinning disks the latency
    // of opens dominates.
    let classified: Vec<Classified> = candidates.into_par_iter().map(classify).collect();
    for c in classified {
        match c {
            Classified::Image(f) => walk.files.push(f),
            Classified::Problem(p) => walk.problems.push(p),
            Classified::Skipped => walk.skipped_non_images += 1,
        }
    }
    walk.files.sort_by(|a, b| a.path.cmp(&b.path));
    walk.problems.sort_by(|a, b| a.path.cmp(&b.path));
    walk.roots = absolute_roots;
    Ok(walk)
}

fn build_excludes(patterns: &[String]) -> Result<GlobSet, WalkError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| WalkError::InvalidExclude {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| WalkError::InvalidExclude {
        pattern: patterns.join(" "),
        reason: e.to_string(),
    })
}

fn keep_entry(
    entry: &walkdir::DirEntry,
    root: &Path,
    opts: &WalkOptions,
    excludes: &GlobSet,
) -> bool {
    if !opts.include_hidden && is_hidden(entry.file_name()) {
        return false;
    }
    if excludes.is_empty() {
        return true;
    }
    let path = entry.path();
    let relative = path.strip_prefix(root).unwrap_or(path);
    !(excludes.is_match(path) || excludes.is_match(relative))
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn walk_problem(err: &walkdir::Error, root: &Path) -> FileProblem {
    let path = err.path().unwrap_or(root).to_path_buf();
    let reason = if let Some(ancestor) = err.loop_ancestor() {
        format!(
            "symbolic link loop: leads back to {}; not followed",
            ancestor.display()
        )
    } else if let Some(io) = err.io_error() {
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && io.kind() == std::io::ErrorKind::NotFound {
            "broken symbolic link: its target does not exist".to_string()
        } else {
            format!("cannot read: {io}")
        }
    } else {
        err.to_string()
    };
    FileProblem { path, reason }
}

/// What identifies a file across the paths that reach it.
#[derive(Debug, PartialEq, Eq, Hash)]
enum FileIdentity {
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg_attr(unix, allow(dead_code))]
    Path(PathBuf),
}

fn file_identity(path: &Path, meta: &std::fs::Metadata) -> FileIdentity {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        FileIdentity::Inode(meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        FileIdentity::Path(path.to_path_buf())
    }
}

/// Modification time in nanoseconds since the Unix epoch, as the store compares it.
pub(crate) fn modified_ns(meta: &std::fs::Metadata) -> i64 {
    let Ok(modified) = meta.modified() else {
        return 0;
    };
    match modified.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

struct Candidate {
    path: PathBuf,
    size: u64,
    modified_ns: i64,
    /// A file given as a root: the user asked for it, so a non-image is reported.
    named_explicitly: bool,
}

enum Classified {
    Image(FoundFile),
    Problem(FileProblem),
    Skipped,
}

fn classify(c: Candidate) -> Classified {
    let problem = |reason: String| {
        Classified::Problem(FileProblem {
            path: c.path.clone(),
            reason,
        })
    };
    let head = match read_head(&c.path) {
        Ok(head) => head,
        Err(e) => return problem(format!("cannot read: {e}")),
    };
    match sniff(&head) {
        Sniffed::Image(format) => Classified::Image(FoundFile {
            path: c.path,
            size: c.size,
            modified_ns: c.modified_ns,
            format,
        }),
        Sniffed::NotImage if c.named_explicitly || claims_image(&c.path) => {
            if head.is_empty() {
                problem("empty file (0 bytes): not an image".to_string())
            } else {
                problem(format!(
                    "content is not an image in a known format (it starts with {})",
                    describe_head(&head)
                ))
            }
        }
        Sniffed::NotImage => Classified::Skipped,
    }
}

/// Whether a file would be indexed, or reported, by a walk of its folder: its name claims an
/// image format or its content is one. A watcher names changed files one by one, and a file
/// named explicitly is reported when it is not an image; this keeps a `notes.txt` saved into
/// a watched library silent, as a walk would.
pub fn is_image_candidate(path: &Path) -> bool {
    claims_image(path)
        || read_head(path).is_ok_and(|head| matches!(sniff(&head), Sniffed::Image(_)))
}

fn claims_image(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// "text" for printable content, else the first bytes in hex: enough to recognise an HTML
/// error page or a truncated download.
fn describe_head(head: &[u8]) -> String {
    let text = std::str::from_utf8(head)
        .is_ok_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()));
    if text {
        let shown: String = String::from_utf8_lossy(head).chars().take(24).collect();
        format!("text {shown:?}")
    } else {
        let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    fn names(walk: &Walk, root: &Path) -> Vec<String> {
        walk.files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn problem<'a>(walk: &'a Walk, path: &Path) -> &'a FileProblem {
        walk.problems
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem for {}: {:?}", path.display(), walk.problems))
    }

    #[test]
    fn images_are_recognised_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("photo.jpg"), testutil::jpeg(8, 6)).unwrap();
        std::fs::write(root.join("renamed.txt"), testutil::png(5, 5)).unwrap();
        std::fs::write(root.join("no_extension"), testutil::jpeg(4, 4)).unwrap();
        std::fs::write(root.join("fake.JPG"), "<html>404 not found</html>").unwrap();
        std::fs::write(root.join("empty.png"), "").unwrap();
        std::fs::write(root.join("notes.txt"), "shopping list").unwrap();
        std::fs::write(root.join("empty.txt"), "").unwrap();
        std::fs::write(
            root.join("phone.heic"),
            b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
        )
        .unwrap();

        let walk = walk_library(&[root.to_path_buf()], &WalkOptions::default()).unwrap();
        assert_eq!(
            names(&walk, root),
            ["no_extension", "phone.heic", "photo.jpg", "renamed.txt"]
        );
        let formats: Vec<_> = walk.files.iter().map(|f| f.format).collect();
        assert_eq!(
            formats,
            [
                ImageKind::Jpeg,
                ImageKind::Heic,
                ImageKind::Jpeg,
                ImageKind::Png
            ]
        );
        assert_eq!(
            walk.skipped_non_images, 2,
            "notes.txt and empty.txt skipped silently"
        );
        assert_eq!(walk.problems.len(), 2, "{:?}", walk.problems);
        assert!(problem(&walk, &root.join("fake.JPG"))
            .reason
            .contains("not an image"));
        assert!(problem(&walk, &root.join("fake.JPG"))
            .reason
            .contains("<html>"));
        assert!(problem(&walk, &root.join("empty.png"))
            .reason
            .contains("empty file"));
        let photo = &walk.files[2];
        assert_eq!(photo.size, testutil::jpeg(8, 6).len() as u64);
        assert!(photo.modified_ns > 0);
        assert!(photo.path.is_absolute());
    }

    #[test]
    fn hidden_entries_are_skipped_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(".library");
        std::fs::create_dir_all(root.join(".thumbnails")).unwrap();
        std::fs::create_dir_all(root.join("album")).unwrap();
        std::fs::write(root.join(".thumbnails/t.png"), testutil::png(2, 2)).unwrap();
        std::fs::write(root.join(".hidden.png"), testutil::png(2, 2)).unwrap();
        std::fs::write(root.join("album/a.png"), testutil::png(2, 2)).unwrap();

        let walk = walk_library(std::slice::from_ref(&root), &WalkOptions::default()).unwrap();
        assert_eq!(
            names(&walk, &root),
            ["album/a.png"],
            "a hidden root is still walked"
        );
        let all = WalkOptions {
            include_hidden: true,
            ..Default::default()
        };
        let walk = walk_library(std::slice::from_ref(&root), &all).unwrap();
        assert_eq!(
            names(&walk, &root),
            [".hidden.png", ".thumbnails/t.png", "album/a.png"]
        );
    }

    #[test]
    fn excludes_match_relative_and_absolute_paths_and_prune_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lib");
        for sub in ["2020/Thumbnails", "2021/raw", "2021/keep"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for file in [
            "2020/Thumbnails/t.png",
            "2020/a.png",
            "2020/a.tmp",
            "2021/raw/r.png",
            "2021/keep/k.png",
        ] {
            std::fs::write(root.join(file), testutil::png(2, 2)).unwrap();
        }
        let opts = WalkOptions {
            excludes: vec![
                "*/Thumbnails".into(),
                "*.tmp".into(),
                format!("{}/2021/raw", root.display()),
            ],
            include_hidden: false,
        };
        let walk = walk_library(std::slice::from_ref(&root), &opts).unwrap();
        assert_eq!(names(&walk, &root), ["2020/a.png", "2021/keep/k.png"]);

        let bad = WalkOptions {
            excludes: vec!["a[".into()],
            include_hidden: false,
        };
        let err = walk_library(std::slice::from_ref(&root), &bad).unwrap_err();
        assert!(matches!(err, WalkError::InvalidExclude { .. }), "{err}");
        assert!(err.to_string().contains("a["), "{err}");
    }

    #[test]
    fn missing_root_is_an_error_and_relative_roots_become_absolute() {
        let err = walk_library(
            &[PathBuf::from("/definitely/not/here/photos")],
            &WalkOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, WalkError::MissingRoot { .. }), "{err}");
        assert!(err.to_string().contains("/definitely/not/here/photos"));

        // The crate's own folder, named relatively: paths come back absolute and unresolved.
        let walk = walk_library(&[PathBuf::from("./src")], &WalkOptions::default()).unwrap();
        assert!(walk.files.is_empty());
        assert!(
            walk.skipped_non_images > 3,
            "the .rs files are counted as skipped"
        );
    }

    #[test]
    fn a_file_root_is_walked_and_a_non_image_file_root_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("one.webp.bak");
        let txt = dir.path().join("readme");
        std::fs::write(&img, testutil::png(3, 3)).unwrap();
        std::fs::write(&txt, "text").unwrap();
        let walk = walk_library(&[img.clone(), txt.clone()], &WalkOptions::default()).unwrap();
        assert_eq!(walk.files.len(), 1);
        assert_eq!(walk.files[0].path, img);
        assert!(problem(&walk, &txt).reason.contains("not an image"));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_loops_reported_and_duplicates_listed_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lib");
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b/x.png"), testutil::png(2, 2)).unwrap();
        std::fs::write(outside.join("y.png"), testutil::png(2, 2)).unwrap();
        symlink(&outside, root.join("linked")).unwrap();
        symlink(root.join("a"), root.join("a/b/loop")).unwrap();
        symlink(root.join("a/b/x.png"), root.join("z_alias.png")).unwrap();
        symlink(dir.path().join("gone.png"), root.join("broken.png")).unwrap();

        let walk = walk_library(std::slice::from_ref(&root), &WalkOptions::default()).unwrap();
        assert_eq!(names(&walk, &root), ["a/b/x.png", "linked/y.png"]);
        assert_eq!(walk.duplicate_paths, 1, "z_alias.png is x.png again");
        let looped = problem(&walk, &root.join("a/b/loop"));
        assert!(looped.reason.contains("loop"), "{looped}");
        let broken = problem(&walk, &root.join("broken.png"));
        assert!(broken.reason.contains("broken symbolic link"), "{broken}");
        // Paths keep the symlink the user walked through.
        assert_eq!(walk.files[1].path, root.join("linked/y.png"));
    }

    #[test]
    fn odd_unicode_names_work() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let names_in = [
            "Ünïcödé 写真 🐕.png",
            "line\nbreak.png",
            "tab\tand space .jpg",
        ];
        for name in names_in {
            std::fs::write(root.join(name), testutil::png(2, 2)).unwrap();
        }
        let walk = walk_library(&[root.to_path_buf()], &WalkOptions::default()).unwrap();
        assert!(walk.problems.is_empty(), "{:?}", walk.problems);
        let mut expected: Vec<_> = names_in.iter().map(|n| root.join(n)).collect();
        expected.sort();
        let found: Vec<_> = walk.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(found, expected);
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_files_and_folders_are_problems_and_the_walk_goes_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("locked")).unwrap();
        std::fs::write(root.join("locked/in.png"), testutil::png(2, 2)).unwrap();
        std::fs::write(root.join("secret.png"), testutil::png(2, 2)).unwrap();
        std::fs::write(root.join("ok.png"), testutil::png(2, 2)).unwrap();
        let lock = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        lock(&root.join("secret.png"), 0o000);
        lock(&root.join("locked"), 0o000);
        if testutil::permissions_are_bypassed(&root.join("secret.png")) {
            lock(&root.join("locked"), 0o755);
            eprintln!("SKIPPED unreadable-file assertions: running with privileges that ignore file permissions (root)");
            return;
        }
        let walk = walk_library(&[root.to_path_buf()], &WalkOptions::default()).unwrap();
        lock(&root.join("locked"), 0o755);
        assert_eq!(names(&walk, root), ["ok.png"]);
        assert!(problem(&walk, &root.join("secret.png"))
            .reason
            .contains("cannot read"));
        assert!(problem(&walk, &root.join("locked"))
            .reason
            .contains("cannot read"));
    }
}
