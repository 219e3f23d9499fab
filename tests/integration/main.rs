//! quarry's integration tests, one binary (link time is the cost that matters on 2 cores).

mod api_contract;
mod captioning;
mod cli;
mod demo;
mod demo_quality;
mod eval;
mod folder_errors;
mod hub;
mod indexing;
mod parity;
mod serve;
mod served_search;
mod support;
mod training;
mod watch;
mod web;
