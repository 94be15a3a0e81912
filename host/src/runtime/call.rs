//! One guest call: a fresh store under limits, run to an end, classified.
//!
//! Every call (handle, to-request, to-message, describe) gets its own
//! `Store`: a fresh, empty WASI context, a fresh effects buffer, its own
//! fuel, memory cap and deadline. Nothing survives a call except what it
//! returns, so one message can never see another's memory.
//!
//! How a guest is stopped:
//! - fuel: `set_fuel(limits.fuel)`; running out traps deterministically;
//! - wall clock: the epoch ticker makes the guest call back every tick; the
//!   callback traps (recording why) past the deadline or once `cancel`
//!   fired, and otherwise *yields* to tokio, so a long guest never hogs a
//!   worker thread;
//! - while the guest awaits a host import (`state-get`) no wasm runs, so the
//!   same deadline and token are also raced against the call future, which
//!   is dropped when they win. Time `state-get` spends waiting for another
//!   job's turn on a key (or loading it) is the host's, not the guest's: it
//!   moves the deadline out by as much ([`Deadline::extend`]); the wait
//!   itself is capped at the call's timeout (`host.rs`), so a call never
//!   sits in its sandbox for long doing nothing;
//! - memory: a `ResourceLimiter` refuses growth past the cap and records it,
//!   because the guest only sees `memory.grow` fail and aborts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::stderr::StderrTail;
use super::trap::{self, Facts, Failure, HostTrap, Interrupt};
use super::types::{Effects, Limits, PluginInfo, StateSource};

/// Largest table a guest may grow (the pooling allocator's default slot).
pub(super) const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Host resources (WASI streams, pollables...) a guest may hold at once.
/// Rust's std holds a handful; each entry is a host allocation.
pub(super) const MAX_RESOURCES: usize = 1000;

/// Bytes one `get-random-bytes` call may ask for (the host allocates them).
pub(super) const MAX_RANDOM: u64 = 64 * 1024;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// The store's data for one call: the guest's whole world.
pub(super) struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) stderr: StderrTail,
    /// For log lines and `StateSource::get`.
    pub(super) plugin: Arc<PluginInfo>,
    /// Set for handler calls, for log lines.
    pub(super) job_id: Option<String>,
    pub(super) max_log_lines: u32,
    pub(super) log_lines: u32,
    /// Bytes logged, bounded by `host::MAX_LOG_BYTES`.
    pub(super) log_bytes: usize,
    /// Set once the log caps were hit: the rest of the call's lines go.
    pub(super) log_dropped: bool,
    pub(super) effects: Effects,
    /// Bytes buffered in `effects`, bounded by `host::MAX_CALL_BYTES`.
    pub(super) effect_bytes: usize,
    /// Values read from the state source this call, so that a key reads the
    /// same all call long.
    pub(super) read_values: HashMap<String, Option<Vec<u8>>>,
    pub(super) state: Option<Arc<dyn StateSource>>,
    pub(super) deadline: Deadline,
    pub(super) limits: Limits,
    cancel: Option<CancellationToken>,
    pub(super) facts: Facts,
}

/// A call's wall-clock deadline, shared by the epoch callback, the race in
/// [`Guard`] and the `state-get` import (which moves it out by the time it
/// made the guest wait).
#[derive(Debug, Clone)]
pub(super) struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    after: Arc<AtomicU64>,
}

impl Deadline {
    /// `started + timeout`, saturating far in the future.
    fn new(started: Instant, timeout_ms: u64) -> Deadline {
        const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
        let after = Duration::from_millis(timeout_ms).min(FAR);
        Deadline {
            base: started,
            after: Arc::new(AtomicU64::new(
                u64::try_from(after.as_nanos()).unwrap_or(u64::MAX),
            )),
        }
    }

    fn at(&self) -> Instant {
        let after = Duration::from_nanos(self.after.load(Ordering::Relaxed));
        self.base.checked_add(after).unwrap_or(self.base)
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at()
    }

    /// Moves the deadline out by `by` (time the host may make the guest
    /// wait).
    pub(super) fn extend(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.after
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_add(by))
            })
            .ok();
    }

    /// Takes back part of an [`extend`](Self::extend) that was not used.
    /// (A [`Guard`] asleep until the later time keeps sleeping; the epoch
    /// callback enforces the earlier one as soon as wasm runs again.)
    pub(super) fn shorten(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.after
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(by))
            })
            .ok();
    }
}

/// What a call needs besides its arguments.
pub(super) struct CallSetup {
    pub(super) plugin: Arc<PluginInfo>,
    pub(super) limits: Limits,
    pub(super) max_log_lines: u32,
    pub(super) job_id: Option<String>,
    pub(super) state: Option<Arc<dyn StateSource>>,
    pub(super) cancel: Option<CancellationToken>,
}

/// A call in progress: the store plus its clock and budget.
pub(super) struct Call {
    pub(super) store: Store<CallState>,
    limits: Limits,
    started: Instant,
}

/// A finished call: its result, what it cost, what it left behind.
pub(super) struct Finished<R> {
    pub(super) result: Result<R, Failure>,
    pub(super) effects: Effects,
    pub(super) fuel_used: u64,
    pub(super) duration: Duration,
}

impl Call {
    /// A fresh store under `setup.limits`.
    pub(super) fn new(engine: &Engine, setup: CallSetup) -> Result<Call, Failure> {
        let started = Instant::now();
        let limits = setup.limits;
        let stderr = StderrTail::default();
        let state = CallState {
            wasi: sandbox(&stderr),
            table: resource_table(),
            limiter: Limiter::new(limits.memory_bytes),
            stderr,
            plugin: setup.plugin,
            job_id: setup.job_id,
            max_log_lines: setup.max_log_lines,
            log_lines: 0,
            log_bytes: 0,
            log_dropped: false,
            effects: Effects::default(),
            effect_bytes: 0,
            read_values: HashMap::new(),
            state: setup.state,
            deadline: Deadline::new(started, limits.timeout_ms),
            limits,
            cancel: setup.cancel,
            facts: Facts::default(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| Failure::Host(format!("cannot set fuel: {e}")))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(on_epoch);
        Ok(Call {
            store,
            limits,
            started,
        })
    }

    /// The deadline and token to race the call's work against.
    pub(super) fn guard(&self) -> Guard {
        let data = self.store.data();
        Guard {
            deadline: data.deadline.clone(),
            cancel: data.cancel.clone(),
        }
    }

    /// Turns the raced outcome into a result, the fuel it cost and the
    /// effects it buffered.
    pub(super) fn finish<R>(
        mut self,
        outcome: Result<wasmtime::Result<R>, Interrupt>,
    ) -> Finished<R> {
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.failure(&err)),
            Err(interrupt) => {
                self.store.data_mut().facts.interrupt = Some(interrupt);
                let err = wasmtime::Error::new(HostTrap::Interrupted);
                Err(self.failure(&err))
            }
        };
        let fuel_left = self.store.get_fuel().unwrap_or(0);
        Finished {
            result,
            effects: std::mem::take(&mut self.store.data_mut().effects),
            fuel_used: self.limits.fuel.saturating_sub(fuel_left),
            duration: self.started.elapsed(),
        }
    }

    fn failure(&self, err: &wasmtime::Error) -> Failure {
        let data = self.store.data();
        let stderr = data.stderr.text();
        let facts = Facts {
            memory_refused: data.limiter.memory_refused,
            table_refused: data.limiter.table_refused,
            ..data.facts.clone()
        };
        let failure = trap::classify(&facts, self.limits, err, &stderr);
        tracing::debug!(
            plugin = %data.plugin.name, job_id = data.job_id.as_deref(),
            error = %format!("{err:#}"), stderr = %stderr.trim_end(),
            "guest call failed"
        );
        failure
    }
}

/// What can cut a call short while it awaits the host.
pub(super) struct Guard {
    deadline: Deadline,
    cancel: Option<CancellationToken>,
}

impl Guard {
    /// Resolves to the work's result, or to why it was cut short (then the
    /// work, and the guest's fiber with it, is dropped).
    pub(super) async fn race<R>(
        self,
        work: impl Future<Output = wasmtime::Result<R>>,
    ) -> Result<wasmtime::Result<R>, Interrupt> {
        let cancelled = async {
            match &self.cancel {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            // The deadline may have moved while this slept.
            while !self.deadline.passed() {
                tokio::time::sleep_until(self.deadline.at().into()).await;
            }
        };
        tokio::select! {
            biased;
            result = work => Ok(result),
            () = deadline => Err(Interrupt::Deadline),
            () = cancelled => Err(Interrupt::Cancelled),
        }
    }
}

/// Runs every epoch tick while wasm executes.
fn on_epoch(mut ctx: wasmtime::StoreContextMut<'_, CallState>) -> wasmtime::Result<UpdateDeadline> {
    let data = ctx.data_mut();
    let interrupt = if data
        .cancel
        .as_ref()
        .is_some_and(CancellationToken::is_cancelled)
    {
        Some(Interrupt::Cancelled)
    } else if data.deadline.passed() {
        Some(Interrupt::Deadline)
    } else {
        None
    };
    match interrupt {
        Some(why) => {
            data.facts.interrupt = Some(why);
            Err(wasmtime::Error::new(HostTrap::Interrupted))
        }
        None => Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        )),
    }
}

/// The guest's WASI world: nothing. No preopened directories (no files), no
/// environment variables, no arguments, no sockets or name lookups, stdin
/// closed, stdout discarded, stderr captured (bounded). Clocks and random
/// stay: they leak nothing and guests' std needs them; one request for
/// random bytes is capped at [`MAX_RANDOM`].
fn sandbox(stderr: &StderrTail) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_RANDOM);
    b.build()
}

/// Caps the call's linear memory (all memories together) and tables, and
/// remembers refusing, since the guest only sees `memory.grow` return -1.
pub(super) struct Limiter {
    cap: usize,
    used: usize,
    memory_refused: bool,
    table_refused: bool,
}

impl Limiter {
    fn new(memory_bytes: u64) -> Limiter {
        Limiter {
            cap: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            used: 0,
            memory_refused: false,
            table_refused: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        if self.used.saturating_add(growth) > self.cap {
            self.memory_refused = true;
            return Ok(false);
        }
        if maximum.is_some_and(|max| desired > max) {
            // The module's own maximum: an ordinary failed grow.
            return Ok(false);
        }
        self.used += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_refused = true;
            return Ok(false);
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    // The pool's per-component maxima (engine.rs), per store: one
    // component instance per call.
    fn instances(&self) -> usize {
        super::engine::PER_COMPONENT.0 as usize
    }

    fn tables(&self) -> usize {
        super::engine::PER_COMPONENT.2 as usize
    }

    fn memories(&self) -> usize {
        super::engine::PER_COMPONENT.1 as usize
    }
}
