//! The one wasmtime `Engine` of a host, its epoch ticker and the linkers.
//!
//! One engine because compiled code, the instance pool and the epoch counter
//! are per engine: every plugin version shares them. The engine is built
//! for the per-message path: a pooling allocator (instantiation is a slot
//! reuse, not an mmap), fuel (deterministic budgets), epoch interruption
//! (wall-clock deadlines and fair yielding at a few ns per check).
//!
//! The ticker is a plain thread that bumps the epoch every `epoch_tick`. It
//! holds only a `Weak<Engine>`, so it exits by itself once the runtime and
//! every plugin (each holds the runtime) are gone.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::admission::{Admission, AdmissionStats};
use super::bindings::{handler, mapper};
use super::cache::{CacheStats, CompileCache};
use super::call::CallState;
use super::types::Limits;

const MIB: u64 = 1024 * 1024;

/// Frames kept in a trap's backtrace (wasmtime's default; at least
/// `trap::RECURSION_FRAMES`).
const BACKTRACE_FRAMES: NonZeroUsize = NonZeroUsize::MIN.saturating_add(19);
const _: () = assert!(BACKTRACE_FRAMES.get() >= super::trap::RECURSION_FRAMES);

/// Core instances, memories and tables one component instance may hold.
/// A Python component (componentize-py: CPython, libc and their shims
/// linked as separate core modules) holds 14 core instances; a core
/// instance slot is bookkeeping only (no memory is reserved for it).
pub(super) const PER_COMPONENT: (u32, u32, u32) = (16, 2, 4);

/// The sandbox's gauges: the call budget and the instance pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SandboxStats {
    /// The host-wide call budget.
    pub calls: AdmissionStats,
    /// Linear memories in use now (one per running call of a Rust plugin).
    pub memories_in_use: u64,
    /// Pool slots not in use whose pages were kept resident for the next
    /// call.
    pub warm_slots: u64,
    /// Bytes those unused slots keep resident (memories, tables, stacks).
    pub idle_resident_bytes: u64,
}

/// Engine-wide settings; per-plugin limits come from [`Limits`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The operator's ceiling (`[limits]`) for a plugin without its own
    /// (`[plugin.NAME]`, applied with `Plugin::with_ceiling`). A plugin may
    /// ask for less in `describe()`, never for more.
    pub ceiling: Limits,
    /// The largest memory cap of any plugin: the size of one pooling slot
    /// (config sets it to the largest configured memory ceiling).
    /// `describe()` runs with this much memory, so a plugin whose own
    /// ceiling is above `ceiling.memory_bytes` can still be loaded.
    pub max_memory_bytes: u64,
    /// How many sandboxed calls may run at once, host-wide (`[sandbox]
    /// calls`): the admission budget and the instance pool's capacity.
    pub max_instances: u32,
    /// How often the epoch advances: the granularity of deadlines,
    /// cancellation and yielding to tokio.
    pub epoch_tick: Duration,
    /// Log lines a single call may emit; the rest are dropped with one
    /// warning. Each line is also truncated at 4 KiB.
    pub max_log_lines_per_call: u32,
    /// After this long without a sandboxed call, the daemon gives free heap
    /// memory back to the kernel (`[sandbox] idle_release`; `idle.rs`).
    pub idle_release: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ceiling: Limits {
                fuel: 5_000_000_000,
                memory_bytes: 64 * MIB,
                timeout_ms: 10_000,
            },
            max_memory_bytes: 256 * MIB,
            max_instances: default_calls(),
            epoch_tick: Duration::from_millis(5),
            max_log_lines_per_call: 1000,
            idle_release: Duration::from_secs(5),
        }
    }
}

/// The default budget of sandboxed calls at once: 8 per core, between 8
/// and 64. Calls are CPU-bound (a guest has no I/O but state reads), so a
/// few per core keep every core busy while one waits for a read; more only
/// add resident slots (see README, Memory).
pub fn default_calls() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(8))
        .unwrap_or(u32::MAX)
        .clamp(8, 64)
}

/// The runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is out of range.
    #[error("runtime config: {0}")]
    Config(String),
    /// wasmtime refused the configuration (e.g. no virtual memory for the
    /// instance pool).
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(String),
}

/// Loads plugins; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Runtime(pub(super) Arc<Shared>);

/// What every plugin version of one runtime shares.
pub(super) struct Shared {
    /// Held by plugins too, so the ticker runs while any call can.
    pub(super) engine: Arc<Engine>,
    pub(super) config: RuntimeConfig,
    /// WASI p2 + `log` + `effects`.
    pub(super) handler_linker: Linker<CallState>,
    /// WASI p2 + `log`: a mapper has no effects.
    pub(super) mapper_linker: Linker<CallState>,
    /// Compiled components on disk, if this runtime has a cache dir.
    pub(super) cache: Option<CompileCache>,
    /// Every call waits here for one of `max_instances` tickets.
    pub(super) admission: Arc<Admission>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine, its instance pool and linkers, and starts the
    /// epoch ticker. Every load compiles (no cache).
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        Runtime::build(config, None)
    }

    /// Like [`Runtime::new`], with a compile cache in `cache_dir` (created
    /// on first use): loading a component compiled before by an engine with
    /// the same settings reads it instead of compiling it. See `cache.rs`.
    pub fn with_cache(config: RuntimeConfig, cache_dir: PathBuf) -> Result<Runtime, RuntimeError> {
        Runtime::build(config, Some(cache_dir))
    }

    fn build(config: RuntimeConfig, cache_dir: Option<PathBuf>) -> Result<Runtime, RuntimeError> {
        check_config(&config)?;
        let engine = Arc::new(
            Engine::new(&engine_config(&config)?)
                .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?,
        );
        let handler_linker = handler_linker(&engine)?;
        let mapper_linker = mapper_linker(&engine)?;
        start_ticker(Arc::downgrade(&engine), config.epoch_tick)?;
        let cache = cache_dir.map(|dir| CompileCache::new(dir, &engine));
        let admission = Admission::new(config.max_instances as usize);
        Ok(Runtime(Arc::new(Shared {
            engine,
            config,
            handler_linker,
            mapper_linker,
            cache,
            admission,
        })))
    }

    /// The settings this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.0.config
    }

    /// The call budget (size, calls running and waiting) and what the
    /// instance pool keeps resident, for `/metrics` and `sluice bench`.
    pub fn sandbox_stats(&self) -> SandboxStats {
        let pool = self.0.engine.pooling_allocator_metrics();
        let resident = pool.as_ref().map_or(0, |p| {
            let stacks = p.unused_stack_bytes_resident().unwrap_or(0);
            p.unused_memory_bytes_resident() + p.unused_table_bytes_resident() + stacks
        });
        SandboxStats {
            calls: self.0.admission.stats(),
            memories_in_use: pool.as_ref().map_or(0, |p| p.memories() as u64),
            warm_slots: pool
                .as_ref()
                .map_or(0, |p| u64::from(p.unused_warm_memories())),
            idle_resident_bytes: resident as u64,
        }
    }

    /// Compile cache hits and misses so far (zeros without a cache).
    pub fn cache_stats(&self) -> CacheStats {
        self.0
            .cache
            .as_ref()
            .map(CompileCache::stats)
            .unwrap_or_default()
    }

    /// Removes cache entries of other engine settings, and entries unused
    /// for `max_age` whose content hash is not in `keep` (the plugins in
    /// use). Returns how many files went.
    pub fn prune_cache(&self, keep: &[&str], max_age: Duration) -> usize {
        self.0.cache.as_ref().map_or(0, |c| c.prune(keep, max_age))
    }
}

fn check_config(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    let bad = |m: &str| Err(RuntimeError::Config(m.to_owned()));
    if config.max_instances == 0 {
        return bad("max_instances must be at least 1");
    }
    if config.max_memory_bytes < 64 * 1024 || config.max_memory_bytes > 4 * 1024 * MIB {
        return bad("max_memory_bytes must be between 64 KiB and 4 GiB");
    }
    if config.epoch_tick.is_zero() {
        return bad("epoch_tick must be above zero");
    }
    let d = config.ceiling;
    if d.fuel == 0 || d.memory_bytes == 0 || d.timeout_ms == 0 {
        return bad("the ceiling limits must be above zero");
    }
    let max = Limits::HARD_MAX;
    if d.fuel > max.fuel || d.timeout_ms > max.timeout_ms {
        return bad("a ceiling limit is above its hard maximum");
    }
    if d.memory_bytes > config.max_memory_bytes {
        return bad("the memory ceiling is above max_memory_bytes");
    }
    Ok(())
}

/// The knobs that matter, and why.
fn engine_config(config: &RuntimeConfig) -> Result<Config, RuntimeError> {
    let too_big = |_| RuntimeError::Config("max_memory_bytes does not fit in usize".into());
    let max_memory = usize::try_from(config.max_memory_bytes).map_err(too_big)?;
    let n = config.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    // One component instance per call, and admission (admission.rs) lets
    // at most `n` calls in; each component may hold at most the
    // per-component maxima, and the totals are `n` times those, so the
    // pool cannot run dry and one plugin cannot take another's share. A
    // Rust component holds ~3 core instances (main, shim, fixups), one
    // memory and a table or two; a Python one 14 core instances; the rest
    // is room for components made with the wasip1 adapter.
    pool.total_component_instances(n)
        .max_core_instances_per_component(PER_COMPONENT.0)
        .max_memories_per_component(PER_COMPONENT.1)
        .max_tables_per_component(PER_COMPONENT.2)
        .total_core_instances(n.saturating_mul(PER_COMPONENT.0))
        .total_memories(n.saturating_mul(PER_COMPONENT.1))
        .total_tables(n.saturating_mul(PER_COMPONENT.2))
        .total_stacks(n)
        .max_memory_size(max_memory)
        // When a call ends, reset up to 1 MiB of what it dirtied with
        // memset (the pages stay resident: no page faults on the next call)
        // and give the rest back with madvise. It costs up to 1 MiB of RSS
        // per warm slot, hence the cap on unused warm slots.
        .linear_memory_keep_resident(MIB as usize)
        .table_keep_resident(64 * 1024)
        .max_unused_warm_slots(32)
        // Find the dirtied pages with the PAGEMAP_SCAN ioctl (Linux 6.7+;
        // without it wasmtime falls back to resetting the FIRST 1 MiB).
        // That fallback is what made a plainly built plugin slow: rustc
        // links wasm32-wasip2 with a 1 MiB stack placed first in memory,
        // so its data and heap lie past the first 1 MiB and were given back
        // and faulted in again on every call (38.5 us per call for
        // bench-amounts, against 11.4 us for the same kind of handler
        // linked with a 256 KiB stack). With the scan only the few pages a
        // call wrote are reset, wherever they are: 11.0 us for the plain
        // build, 9.8 us for the 256 KiB one (`sluice bench`, p50).
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut cfg = Config::new();
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(true)
        .epoch_interruption(true)
        .wasm_component_model(true)
        // Trap backtraces tell a shadow-stack overflow by its recursion
        // (see trap.rs), so they must be kept and deep enough; skip their
        // DWARF lookups whatever the environment says.
        .wasm_backtrace_max_frames(Some(BACKTRACE_FRAMES))
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    Ok(cfg)
}

fn handler_linker(engine: &Engine) -> Result<Linker<CallState>, RuntimeError> {
    let mut linker = Linker::new(engine);
    let link = |e: wasmtime::Error| RuntimeError::Engine(format!("linking host imports: {e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    handler::HandlerPlugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
        .map_err(link)?;
    Ok(linker)
}

fn mapper_linker(engine: &Engine) -> Result<Linker<CallState>, RuntimeError> {
    let mut linker = Linker::new(engine);
    let link = |e: wasmtime::Error| RuntimeError::Engine(format!("linking host imports: {e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    mapper::MapperPlugin::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
        .map_err(link)?;
    Ok(linker)
}

/// Bumps the epoch until the engine is dropped.
fn start_ticker(engine: Weak<Engine>, tick: Duration) -> Result<(), RuntimeError> {
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
        .map_err(|e| RuntimeError::Ticker(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense_config() {
        let mut c = RuntimeConfig {
            max_instances: 0,
            ..RuntimeConfig::default()
        };
        assert!(matches!(check_config(&c), Err(RuntimeError::Config(_))));
        c.max_instances = 4;
        c.ceiling.memory_bytes = c.max_memory_bytes + 1;
        assert!(matches!(check_config(&c), Err(RuntimeError::Config(_))));
        assert!(check_config(&RuntimeConfig::default()).is_ok());
    }
}
