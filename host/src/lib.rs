//! Sluice: a worker host for WebAssembly message handlers.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map. `main.rs`
//! only parses the command line and calls into this library.

pub mod api;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod flow;
pub mod idle;
pub mod logfmt;
pub mod message;
pub mod metrics;
pub mod names;
pub mod pump;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod state;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod transport;
