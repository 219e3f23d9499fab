//! quarry's integration tests, one binary (link time is the cost that matters on 2 cores).

mod captioning;
mod cli;
mod folder_errors;
mod parity;
mod serve;
mod support;
