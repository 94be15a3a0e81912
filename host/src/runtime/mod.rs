//! Runs plugins: the one place that knows wasmtime.
//!
//! A [`Runtime`] owns the single wasmtime `Engine` (pooling allocator, fuel,
//! epoch interruption) and its epoch ticker. [`Runtime::load`] turns the
//! bytes of a `.wasm` component into a [`Plugin`]: compiled once, linked once
//! (`InstancePre`), described and validated. Every call on a plugin then runs
//! in a fresh, sandboxed instance with its own fuel, memory cap and
//! wall-clock deadline, and comes back as plain data ([`CallReport`],
//! [`MapFailure`]) that the pump acts on.
//!
//! What this module must NOT know: SQLite and NATS. Committed plugin state
//! arrives through the [`StateSource`] trait, and a handler's effects are
//! only buffered here ([`Effects`]); applying them is the pump's and the
//! store's job.
//!
//! Files, one concept each:
//! - `engine.rs`: [`Runtime`], [`RuntimeConfig`], the engine and its ticker;
//! - `load.rs`: [`Runtime::load`]: compile, detect the world, link,
//!   describe, validate;
//! - `cache.rs`: compiled components on disk, keyed by content and engine
//!   settings, so restarts and swaps back do not recompile;
//! - `plugin.rs`: [`Plugin`] and its calls;
//! - `validate.rs`: what a plugin may say about itself;
//! - `admission.rs`: the host-wide budget of sandboxed calls, shared
//!   fairly between (plugin, channel) lanes; the pool holds exactly that
//!   many instances;
//! - `call.rs`: one call's store, limits, deadline and cancellation;
//! - `trap.rs`: why a call failed, from wasmtime's error and what the call
//!   recorded;
//! - `host.rs`: the host imports (log, effects) and the WASI view;
//! - `stderr.rs`: the bounded capture of a guest's stderr;
//! - `bindings.rs`: the code generated from `wit/sluice.wit`;
//! - `types.rs`: the plain data that crosses this module's boundary.

mod admission;
mod bindings;
mod cache;
mod call;
mod engine;
mod host;
mod load;
mod plugin;
mod stderr;
mod trap;
pub mod types;
mod validate;

pub use admission::AdmissionStats;
pub use cache::CacheStats;
pub use engine::{Runtime, RuntimeConfig, RuntimeError, SandboxStats, default_calls};
pub use host::MAX_CALL_BYTES;
pub use load::{LoadError, sha256_hex};
pub use plugin::Plugin;
pub use types::*;
