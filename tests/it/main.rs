//! Integration tests: the real `sluice` binary, real SQLite files in temp
//! dirs, real plugins compiled to wasm32-wasip2. One test binary (faster to
//! link) with shared fixtures in `util`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod nats;
mod otel;
mod same_site;
mod util;

mod api;
mod bench;
mod budget;
mod cluster;
mod crash;
mod crashloop;
mod cron;
mod dashboard;
mod debounce;
mod dev;
mod effects;
mod examples;
mod failures;
mod faults;
mod flow;
mod flow_slots;
mod isolation;
mod jetstream;
mod jetstream_priority;
mod lifecycle;
mod mapper_outputs;
mod new;
mod producers;
mod python;
mod rejects;
mod reload;
mod replay;
mod sandbox;
mod schedules;
mod send;
mod shared_state;
mod shared_state_faults;
mod shared_state_move;
mod shared_state_reads;
mod startup;
mod state;
mod trace_context;
mod unique;
mod unique_replace;
mod wire;
mod wit;
