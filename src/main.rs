//! The `quarry` command: parses arguments, calls the library, prints. All logic lives in the
//! library; this binary is the only place that uses `anyhow` and prints.

mod cli;

/// candle allocates a fresh buffer for every tensor op; glibc returns large ones to the OS and
/// page-faults them back in on the next op. mimalloc keeps them, which measured ~10 % faster on
/// the real-size ViT.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pin_thread_count();
    cli::run()
}

/// candle 0.11 asks for its thread count before every CPU matmul, and without
/// `RAYON_NUM_THREADS` that means reading and parsing `/proc/cpuinfo` each time: 6 % of all
/// CPU time of a search that re-ranks with the demo model (perf, `quarry eval-search`). Its
/// answer cannot change during a run, so it is asked once here, before any thread starts, and
/// kept in the variable candle (and rayon) read; a value the user set is left alone.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // No other thread exists yet, so nothing reads the environment concurrently.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
