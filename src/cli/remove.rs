//! `quarry remove`: take files or whole folders out of a store (and out of search).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use quarry::library::Library;
use quarry::store::BatchWrite;

/// Arguments of `remove`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store folder.
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Files or folders to remove (everything indexed under a folder goes).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut library = Library::open_existing(&args.store)?;
    let targets: Vec<PathBuf> = args
        .paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut write = BatchWrite::default();
    for known in library.store().known_files()? {
        if !targets.iter().any(|t| known.path.starts_with(t)) {
            continue;
        }
        match known.image {
            Some(id) => write.removals.push(id),
            None => write.clear_failures.push(known.path),
        }
    }
    let removed = write.removals.len();
    let cleared = write.clear_failures.len();
    if write.is_empty() {
        eprintln!("nothing indexed under the given paths");
        return Ok(ExitCode::from(1));
    }
    library.commit(&write)?;
    library.checkpoint()?;
    println!("removed {removed} images and {cleared} failure records");
    Ok(ExitCode::SUCCESS)
}
