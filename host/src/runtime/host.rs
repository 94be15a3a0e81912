//! The host side of the WIT imports: `log`, `effects`, and WASI's view.
//!
//! Effects are only *buffered* here, into the call's [`Effects`]; the pump
//! applies them if the call succeeds. Every buffer is bounded so that a
//! plugin can fail its own call but never exhaust the host: exceeding a
//! bound traps the guest with a message that names the bound, and that
//! failure is permanent (retrying the same input would exceed it again).
//!
//! **What is charged.** Every byte a guest makes the host hold until the
//! call ends counts against [`MAX_CALL_BYTES`], including the bookkeeping
//! per entry ([`POST_OVERHEAD`], [`HEADER_OVERHEAD`]: an empty header
//! costs the host a `(String, String)`), so a flood of empty values is as
//! bounded as one huge value. What the host only passes through (a log
//! line, a progress note that replaces the last one) has its own cap.
//! What a call returns (result, cursor, a mapper's output) is checked in
//! `plugin.rs` with the caps below; a value lifted from the guest is never
//! larger than the guest's own memory cap. Outside this file: random bytes
//! and resource table entries are capped in `call.rs`.

use std::borrow::Cow;
use std::collections::btree_map::Entry;

use wasmtime_wasi::{WasiCtxView, WasiView};

use super::bindings::{handler, mapper};
use super::call::CallState;
use super::trap::{HostTrap, Interrupt, truncate};
use super::types::{Post, Progress, StateReadError};
use crate::message::MessageKind;
use crate::state::int;

use handler::sluice::plugin::effects;

/// Posts one call may buffer.
pub(super) const MAX_POSTS: usize = 10_000;
/// Bytes of one post's body.
pub(super) const MAX_POST_BODY: usize = 1024 * 1024;
/// Bytes of one state value.
pub(super) const MAX_STATE_VALUE: usize = 1024 * 1024;
/// Bytes of one state key.
pub(super) const MAX_STATE_KEY: usize = 512;
/// Distinct state keys one call may read or write.
pub(super) const MAX_STATE_KEYS: usize = 10_000;
/// Bytes one call may hold in the host: posts, state writes and the values
/// it read, together. Without it, 10,000 posts of 1 MiB would be 10 GiB.
pub const MAX_CALL_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of one log line or progress note; longer ones are cut.
pub(super) const MAX_LINE: usize = 4096;
/// Headers on one post (or on one message a mapper makes).
pub(super) const MAX_HEADERS: usize = 64;
/// Bytes of a post's request name.
pub(super) const MAX_REQUEST_NAME: usize = 256;
/// Bytes of log lines one call may write; the rest are dropped.
pub(super) const MAX_LOG_BYTES: usize = 256 * 1024;
/// Bytes of a handler's result.
pub(super) const MAX_RESULT: usize = 1024 * 1024;
/// Bytes of a continuation's cursor (it travels in a message header).
pub(super) const MAX_CURSOR: usize = 4096;
/// Bytes of the request body a mapper makes of a message.
pub(super) const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;
/// Longest delay a post or a continuation may ask for (a year): longer ones
/// would overflow the time arithmetic of the transports.
pub(super) const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;
/// What the host holds per buffered post besides its bytes.
pub(super) const POST_OVERHEAD: usize = std::mem::size_of::<Post>();
/// What the host holds per header besides its bytes.
pub(super) const HEADER_OVERHEAD: usize = std::mem::size_of::<(String, String)>();

/// The `tracing` target of plugin log lines, for filtering
/// (`RUST_LOG=sluice::plugin=debug`).
const LOG_TARGET: &str = "sluice::plugin";

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl handler::sluice::plugin::types::Host for CallState {}
impl mapper::sluice::plugin::types::Host for CallState {}

impl handler::sluice::plugin::log::Host for CallState {
    fn log(
        &mut self,
        level: handler::sluice::plugin::log::Level,
        message: String,
    ) -> wasmtime::Result<()> {
        use handler::sluice::plugin::log::Level as L;
        let level = match level {
            L::Trace => tracing::Level::TRACE,
            L::Debug => tracing::Level::DEBUG,
            L::Info => tracing::Level::INFO,
            L::Warn => tracing::Level::WARN,
            L::Error => tracing::Level::ERROR,
        };
        self.log_line(level, &message);
        Ok(())
    }
}

/// `tracing` wants its level at compile time.
macro_rules! plugin_event {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            tracing::Level::TRACE => tracing::event!(target: LOG_TARGET, tracing::Level::TRACE, $($rest)*),
            tracing::Level::DEBUG => tracing::event!(target: LOG_TARGET, tracing::Level::DEBUG, $($rest)*),
            tracing::Level::INFO => tracing::event!(target: LOG_TARGET, tracing::Level::INFO, $($rest)*),
            tracing::Level::WARN => tracing::event!(target: LOG_TARGET, tracing::Level::WARN, $($rest)*),
            tracing::Level::ERROR => tracing::event!(target: LOG_TARGET, tracing::Level::ERROR, $($rest)*),
        }
    };
}

impl CallState {
    /// Logs one plugin line, up to the call's caps on lines and bytes (then
    /// one warning, and the rest are dropped: a noisy plugin is not failed
    /// for it). Control characters are escaped by the log formatter
    /// (`crate::logfmt`), so a line cannot forge another.
    fn log_line(&mut self, level: tracing::Level, message: &str) {
        let (plugin, version) = (&self.plugin.name, &self.plugin.version);
        let job_id = self.job_id.as_deref();
        let bytes = message.len().min(MAX_LINE);
        if self.log_dropped {
            return;
        }
        if self.log_lines >= self.max_log_lines
            || self.log_bytes.saturating_add(bytes) > MAX_LOG_BYTES
        {
            tracing::warn!(
                target: LOG_TARGET, plugin = %plugin, version = %version, job_id,
                "plugin logged more than {} lines or {MAX_LOG_BYTES} bytes in one call; dropping the rest",
                self.max_log_lines
            );
            self.log_dropped = true;
            return;
        }
        self.log_lines += 1;
        self.log_bytes += bytes;
        let message: Cow<'_, str> = if message.len() > MAX_LINE {
            Cow::Owned(truncate(message, MAX_LINE))
        } else {
            Cow::Borrowed(message)
        };
        plugin_event!(level, plugin = %plugin, version = %version, job_id, message = %message);
    }

    /// Counts `bytes` against [`MAX_CALL_BYTES`].
    fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.effect_bytes = self.effect_bytes.saturating_add(bytes);
        if self.effect_bytes > MAX_CALL_BYTES {
            return limit(format!(
                "too much data buffered: a call may hold at most {MAX_CALL_BYTES} bytes of posts, headers, state and progress"
            ));
        }
        Ok(())
    }

    /// Distinct state keys the call touched, counting a key read and
    /// written twice (a bound, not an exact count).
    fn state_keys(&self) -> usize {
        self.effects.state_writes.len() + self.read_values.len() + self.effects.state_adds.len()
    }

    /// Buffers a state write (`None`: delete), last write wins; it replaces
    /// a pending add on the key.
    fn write_state(&mut self, key: String, value: Option<Vec<u8>>) -> wasmtime::Result<()> {
        check_key(&key)?;
        self.effects.state_adds.remove(&key);
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        let distinct = self.state_keys();
        match self.effects.state_writes.entry(key) {
            Entry::Occupied(mut e) => {
                let old = e.key().len() + e.get().as_ref().map_or(0, Vec::len);
                self.effect_bytes = self.effect_bytes.saturating_sub(old);
                e.insert(value);
            }
            Entry::Vacant(e) => {
                if distinct >= MAX_STATE_KEYS {
                    return limit(format!(
                        "too many state keys: a call may touch at most {MAX_STATE_KEYS}"
                    ));
                }
                e.insert(value);
            }
        }
        self.charge(size)
    }
}

impl effects::Host for CallState {
    fn post(
        &mut self,
        channel: String,
        body: String,
        options: effects::PostOptions,
    ) -> wasmtime::Result<()> {
        if self.effects.posts.len() >= MAX_POSTS {
            return limit(format!(
                "too many posts: a call may post at most {MAX_POSTS} messages"
            ));
        }
        if body.len() > MAX_POST_BODY {
            return limit(format!(
                "post body of {} bytes is over the limit of {MAX_POST_BODY} bytes",
                body.len()
            ));
        }
        if let Err(e) = crate::names::check_channel(&channel) {
            return limit(format!("post: {e}"));
        }
        if options.headers.len() > MAX_HEADERS {
            return limit(format!(
                "post with {} headers: a post may carry at most {MAX_HEADERS}",
                options.headers.len()
            ));
        }
        // Checked here, where the guest can be told which header and why,
        // rather than failing (or worse) on the wire after the commit.
        for (name, value) in &options.headers {
            if let Err(reason) = crate::message::check_header(name, value) {
                return limit(format!("post to {channel}: {reason}"));
            }
        }
        let name_len = options.name.as_ref().map_or(channel.len(), String::len);
        if name_len > MAX_REQUEST_NAME {
            return limit(format!(
                "post request name of {name_len} bytes is over the limit of {MAX_REQUEST_NAME} bytes"
            ));
        }
        if options.delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return limit(format!(
                "post delay of {} ms is over the limit of {MAX_DELAY_MS} ms (a year)",
                options.delay_ms.unwrap_or_default()
            ));
        }
        let headers: usize = options
            .headers
            .iter()
            .map(|(k, v)| HEADER_OVERHEAD + k.len() + v.len())
            .sum();
        self.charge(POST_OVERHEAD + channel.len() + name_len + body.len() + headers)?;
        self.effects.posts.push(Post {
            name: options.name.unwrap_or_else(|| channel.clone()),
            channel,
            body,
            kind: match options.kind {
                effects::MessageKind::Command => MessageKind::Command,
                effects::MessageKind::Event => MessageKind::Event,
            },
            headers: options.headers,
            delay_ms: options.delay_ms,
            launch_at_ms: options.launch_at_ms,
            expires_at_ms: options.expires_at_ms,
        });
        Ok(())
    }

    /// Only the last progress is kept: its note (cut to [`MAX_LINE`])
    /// replaces the last one's in the budget.
    fn progress(&mut self, percent: u8, note: Option<String>) -> wasmtime::Result<()> {
        let note = note.map(|n| {
            if n.len() > MAX_LINE {
                truncate(&n, MAX_LINE)
            } else {
                n
            }
        });
        let old = self
            .effects
            .progress
            .as_ref()
            .and_then(|p| p.note.as_ref())
            .map_or(0, String::len);
        self.effect_bytes = self.effect_bytes.saturating_sub(old);
        self.charge(note.as_ref().map_or(0, String::len))?;
        self.effects.progress = Some(Progress {
            percent: percent.min(100),
            note,
        });
        Ok(())
    }

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        check_key(&key)?;
        if let Some(written) = self.effects.state_writes.get(&key) {
            return Ok(written.clone());
        }
        if let Some(read) = self.read_values.get(&key) {
            return Ok(read.clone());
        }
        if self.state_keys() >= MAX_STATE_KEYS {
            return limit(format!(
                "too many state keys: a call may touch at most {MAX_STATE_KEYS}"
            ));
        }
        let Some(source) = self.state.clone() else {
            return fault("no state store for this call".into());
        };
        // A read never waits for another job's turn (`StateSource::get`);
        // loading a value is the host's time, not charged to the guest's
        // deadline, and capped at the call's timeout. A key another job
        // holds (or a load past the cap) gives up the sandbox: the pump
        // runs the job again holding the turn, taken outside it.
        self.facts.state_wait = Some(key.clone());
        let began = std::time::Instant::now();
        let cap = std::time::Duration::from_millis(self.limits.timeout_ms);
        self.deadline.extend(cap);
        let read = tokio::time::timeout(cap, source.get(&key)).await;
        self.deadline.shorten(cap.saturating_sub(began.elapsed()));
        self.facts.state_wait = None;
        let (value, version) = match read {
            Err(_) | Ok(Err(StateReadError::Busy)) => {
                self.facts.interrupt = Some(Interrupt::Deadline);
                self.facts.state_wait = Some(key);
                return Err(wasmtime::Error::new(HostTrap::Interrupted));
            }
            Ok(Ok(read)) => read,
            Ok(Err(StateReadError::Store(e))) => {
                let message = format!("state store: {e}");
                self.facts.host_fault = Some(message.clone());
                return fault(message);
            }
        };
        self.charge(key.len() + value.as_ref().map_or(0, Vec::len))?;
        self.effects.state_reads.insert(key.clone(), version);
        self.read_values.insert(key.clone(), value.clone());
        // An add made before this read: the call now sees (and writes) the
        // sum, and its commit checks the version it read.
        if let Some(delta) = self.effects.state_adds.remove(&key) {
            let sum = sum_or_invalid(&key, value.as_deref(), delta)?;
            self.write_state(key, Some(sum.clone()))?;
            return Ok(Some(sum));
        }
        Ok(value)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        if value.len() > MAX_STATE_VALUE {
            return limit(format!(
                "state value of {} bytes is over the limit of {MAX_STATE_VALUE} bytes",
                value.len()
            ));
        }
        self.write_state(key, Some(value))
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.write_state(key, None)
    }

    fn state_add(&mut self, key: String, delta: i64) -> wasmtime::Result<()> {
        check_key(&key)?;
        // On a key this call wrote or read, the add applies to what it sees.
        let seen = match self.effects.state_writes.get(&key) {
            Some(written) => Some(written.clone()),
            None => self.read_values.get(&key).cloned(),
        };
        if let Some(seen) = seen {
            let sum = sum_or_invalid(&key, seen.as_deref(), delta)?;
            return self.write_state(key, Some(sum));
        }
        if !self.effects.state_adds.contains_key(&key) {
            if self.state_keys() >= MAX_STATE_KEYS {
                return limit(format!(
                    "too many state keys: a call may touch at most {MAX_STATE_KEYS}"
                ));
            }
            self.charge(key.len() + 8)?;
        }
        let pending = self.effects.state_adds.entry(key.clone()).or_insert(0);
        match pending.checked_add(delta) {
            Some(total) => {
                *pending = total;
                Ok(())
            }
            None => invalid(format!(
                "state-add on key {key:?}: the adds of this call overflow a 64-bit integer"
            )),
        }
    }
}

/// `value + delta` for `state-add`, or a trap that fails the job for good.
fn sum_or_invalid(key: &str, value: Option<&[u8]>, delta: i64) -> wasmtime::Result<Vec<u8>> {
    match int::add(value, delta) {
        Some(sum) => Ok(sum),
        None => invalid(format!(
            "state-add on key {key:?}: its value is not an integer, or adding {delta} overflows"
        )),
    }
}

/// Traps the guest for asking the impossible: the job is dead-lettered.
fn invalid<T>(message: String) -> wasmtime::Result<T> {
    Err(wasmtime::Error::new(HostTrap::Invalid(message)))
}

fn check_key(key: &str) -> wasmtime::Result<()> {
    if key.len() > MAX_STATE_KEY {
        return limit(format!(
            "state key of {} bytes is over the limit of {MAX_STATE_KEY} bytes",
            key.len()
        ));
    }
    Ok(())
}

/// Traps the guest for exceeding a bound.
fn limit<T>(message: String) -> wasmtime::Result<T> {
    Err(wasmtime::Error::new(HostTrap::GuestLimit(message)))
}

/// Fails the call as the host's fault (retried, not the plugin's).
fn fault<T>(message: String) -> wasmtime::Result<T> {
    Err(wasmtime::Error::new(HostTrap::HostFault(message)))
}
