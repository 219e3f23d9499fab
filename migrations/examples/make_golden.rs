//! Regenerates the golden store of every old format version under `tests/golden/`.
//!
//! `cargo run --release -p quarry-migrations --example make_golden` (from anywhere). The
//! frozen layouts never change, so this only has to run when a version is added (add its
//! writer here) or a golden folder is lost; existing folders are left alone.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden");
    let v1 = root.join("v1");
    if v1.exists() {
        println!("{} exists; delete it first to regenerate", v1.display());
    } else {
        quarry_migrations::golden::write_v1(&v1)?;
        println!("wrote {}", v1.display());
    }
    Ok(())
}
