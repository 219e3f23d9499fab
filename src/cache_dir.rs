//! Where quarry keeps files it can always recreate: the evaluation's embedding cache, the
//! unpacked built-in demo models and the demo's workspace.
//!
//! One rule for all of them, so a user who moves the cache (a small home partition, a shared
//! machine) moves everything with one variable.

use std::path::PathBuf;

/// quarry's cache folder: `$QUARRY_CACHE_DIR`, else `$XDG_CACHE_HOME/quarry`, else
/// `$HOME/.cache/quarry`, else `quarry` in the system's temporary folder. Empty variables
/// count as unset. The folder is not created here.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("QUARRY_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("quarry");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache/quarry");
    }
    std::env::temp_dir().join("quarry")
}
