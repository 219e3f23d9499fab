//! The `quarry` command: parses arguments, calls the library, prints. All logic lives in the
//! library; this binary is the only place that uses `anyhow` and prints.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
