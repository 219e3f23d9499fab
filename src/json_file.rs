//! Small JSON files that model folders carry (fitted weights, calibrations), written so that a
//! reader never sees half of one: to `NAME.json.partial`, then renamed over `NAME.json`.

use std::fs;
use std::path::Path;

use serde::Serialize;

/// Writes `value` as pretty JSON with a final newline to `path`, atomically.
pub fn write_pretty(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let partial = path.with_extension("json.partial");
    fs::write(&partial, json + "\n")?;
    fs::rename(&partial, path)
}
