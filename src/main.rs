//! The `quarry` command: parses arguments, calls the library, prints. All logic lives in the
//! library; this binary is the only place that uses `anyhow` and prints.

mod cli;

/// candle allocates a fresh buffer for every tensor op; glibc returns large ones to the OS and
/// page-faults them back in on the next op. mimalloc keeps them, which measured ~10 % faster on
/// the real-size ViT.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}
