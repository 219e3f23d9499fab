//! quarry's integration tests, one binary (link time is the cost that matters on 2 cores).

mod api_contract;
mod captioning;
mod cli;
mod demo;
mod demo_quality;
mod eval;
mod faults;
mod folder_errors;
mod fuzz_files;
mod fuzz_store;
mod fuzz_uploads;
mod hub;
mod indexing;
mod parity;
mod serve;
mod served_search;
mod support;
mod training;
mod watch;
mod web;

/// Counts each thread's largest allocation for the fuzz tests (see `fuzz_files`).
#[global_allocator]
static THREAD_PEAK: fuzz_files::ThreadPeak = fuzz_files::ThreadPeak;
