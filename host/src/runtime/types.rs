//! Plain data that crosses the runtime boundary: what a plugin says about
//! itself, what a call is given, and what it leaves behind.
//!
//! The pump acts on these; nothing here knows about wasmtime.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::{Headers, MessageKind};

/// Handler or mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Does the work for the messages of its channels.
    Handler,
    /// Turns a channel's wire messages into requests and back.
    Mapper,
}

impl PluginKind {
    /// Lowercase name for logs, rows and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Handler => "handler",
            PluginKind::Mapper => "mapper",
        }
    }
}

/// Per-call sandbox limits as a plugin asks for them in `describe()`
/// (`None`: nothing asked, the operator's ceiling applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LimitsSpec {
    /// Fuel units per call.
    pub fuel: Option<u64>,
    /// Largest linear memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock budget per call, milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Per-call sandbox limits with every field set: an operator's ceiling, or
/// the limits in force for every call of one plugin version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel units per call (roughly 7e9 per second on a 2-core dev box).
    pub fuel: u64,
    /// Largest linear memory, bytes.
    pub memory_bytes: u64,
    /// Wall-clock budget per call, milliseconds.
    pub timeout_ms: u64,
}

impl Limits {
    /// Hard maxima: no ceiling may be set above these. Fuel: about 25
    /// minutes of guest CPU; memory: all a 32-bit linear memory can
    /// address; wall clock: one hour (longer work is what `continue`
    /// slices are for).
    pub const HARD_MAX: Limits = Limits {
        fuel: 10_000_000_000_000,
        memory_bytes: 4 << 30,
        timeout_ms: 3_600_000,
    };

    /// The limits a plugin's calls run under: what it asked for, capped by
    /// the operator's `ceiling`; a field it did not ask for gets the
    /// ceiling. A plugin may ask for less, never for more.
    pub fn resolve(ceiling: Limits, ask: LimitsSpec) -> Limits {
        let pick = |ask: Option<u64>, ceiling: u64| ask.map_or(ceiling, |a| a.min(ceiling));
        Limits {
            fuel: pick(ask.fuel, ceiling.fuel),
            memory_bytes: pick(ask.memory_bytes, ceiling.memory_bytes),
            timeout_ms: pick(ask.timeout_ms, ceiling.timeout_ms),
        }
    }

    /// The fields where `ask` wanted more than these limits give, by name.
    pub fn capped(&self, ask: LimitsSpec) -> Vec<&'static str> {
        let over = |a: Option<u64>, got: u64| a.is_some_and(|a| a > got);
        [
            ("fuel", over(ask.fuel, self.fuel)),
            ("memory", over(ask.memory_bytes, self.memory_bytes)),
            ("timeout", over(ask.timeout_ms, self.timeout_ms)),
        ]
        .into_iter()
        .filter_map(|(name, over)| over.then_some(name))
        .collect()
    }
}

/// What `describe()` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Unique among loaded plugins.
    pub name: String,
    /// Recorded on every job this plugin runs.
    pub version: String,
    /// Handler or mapper.
    pub kind: PluginKind,
    /// Channels handled or mapped.
    pub channels: Vec<String>,
    /// What the plugin asked for (the limits in force are
    /// `Plugin::limits`).
    pub limits: LimitsSpec,
}

/// What the host tells a handler about the message it handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContext {
    /// The job's id.
    pub job_id: String,
    /// The message's id.
    pub message_id: String,
    /// The channel it came on.
    pub channel: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// The message's headers.
    pub headers: Headers,
    /// Set when this call continues a job that returned `continue`.
    pub cursor: Option<String>,
}

/// A successful handler call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Finished, with an optional result (JSON by convention).
    Done {
        /// The handler's result.
        result: Option<String>,
    },
    /// Partial completion: record the cursor, call again after the delay.
    Continue {
        /// Where the next slice starts.
        cursor: String,
        /// Milliseconds to wait before the next slice.
        delay_ms: u64,
    },
}

/// A post effect: a message for a channel, sent only if the call commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Target channel.
    pub channel: String,
    /// Request type name (defaults to the channel name).
    pub name: String,
    /// JSON body as the handler wrote it (the target channel's mapper, if
    /// any, turns it into the wire body).
    pub body: String,
    /// Command or event.
    pub kind: MessageKind,
    /// Headers to add.
    pub headers: Headers,
    /// Deliver no earlier than this many ms after commit.
    pub delay_ms: Option<u64>,
    /// Deliver no earlier than this Unix time (ms).
    pub launch_at_ms: Option<u64>,
    /// Drop (job expired) if not started by this Unix time (ms).
    pub expires_at_ms: Option<u64>,
}

/// Progress reported by a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0..=100.
    pub percent: u8,
    /// Optional note.
    pub note: Option<String>,
}

/// Everything a handler asked of the host during one call, buffered. It is
/// applied only if the call succeeds, in one transaction with the job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Posts, in call order.
    pub posts: Vec<Post>,
    /// The last progress reported, if any.
    pub progress: Option<Progress>,
    /// Key -> new value (`None`: delete), last write wins.
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Key -> delta for `state-add`s on keys the call neither read nor
    /// wrote (an add to a key it did is folded into its write). Applied at
    /// commit without a read version.
    pub state_adds: BTreeMap<String, i64>,
    /// Key -> version the call read (0: never written). The commit fails
    /// with a conflict if any changed since (optimistic concurrency), and
    /// the call runs again.
    pub state_reads: BTreeMap<String, i64>,
}

/// Per-plugin state as one call sees it, to answer `state-get`. Made by
/// the pump for each job (`crate::state::Session`: it knows the plugin);
/// the runtime never touches SQLite itself.
pub trait StateSource: Send + Sync {
    /// The value of `key` (`None`: absent) and its version (0: never
    /// written). Never waits for another job's turn on the key: a call
    /// holds a sandbox ticket, and a ticket holder that waited for a job
    /// that waits for a ticket would stall both (see `crate::state`).
    fn get(&self, key: &str) -> StateFuture<'_>;
}

/// Why [`StateSource::get`] gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateReadError {
    /// Another job holds the key's turn and this call holds none: the call
    /// gives up its sandbox and runs again once it holds the turn.
    Busy,
    /// The state store failed.
    Store(String),
}

/// What [`StateSource::get`] returns: the value and its version, or why it
/// could not be read. (An alias only; implementations may spell the full
/// type.)
pub type StateFuture<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(Option<Vec<u8>>, i64), StateReadError>>
            + Send
            + 'a,
    >,
>;

/// Why a call failed. Guest errors are data; the rest are plugin faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// The handler returned `retryable(msg)`.
    Retryable(String),
    /// The handler returned `permanent(msg)`.
    Permanent(String),
    /// The guest was stopped or crashed.
    Trap(TrapKind),
    /// The host could not run the call (e.g. instance pool exhausted, state
    /// unreadable). Not the plugin's fault: retried.
    Host(String),
    /// The call read a state key whose turn another job holds (or its
    /// read outlasted the call's timeout). Not the plugin's fault: the job
    /// runs again, taking the turn before its sandbox starts.
    StateWait {
        /// The key it waited for.
        key: String,
    },
}

/// How a guest was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrapKind {
    /// Used up its fuel budget.
    OutOfFuel {
        /// The budget it had.
        fuel: u64,
    },
    /// Ran past its wall-clock budget.
    Deadline {
        /// The budget it had.
        timeout_ms: u64,
    },
    /// Tried to grow memory past its cap.
    MemoryLimit {
        /// The cap.
        memory_bytes: u64,
    },
    /// The guest panicked; its panic message as printed to stderr.
    Panic(String),
    /// Wasm stack exhausted, or the guest's shadow stack ran off the start of
    /// its memory (which shows up as an out-of-bounds access).
    StackOverflow,
    /// Stopped by the host (cancellation, shutdown).
    Cancelled,
    /// Any other trap, with wasmtime's description.
    Other(String),
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapKind::OutOfFuel { fuel } => write!(f, "out of fuel (budget {fuel} units)"),
            TrapKind::Deadline { timeout_ms } => {
                write!(f, "deadline exceeded (wall-clock limit {timeout_ms} ms)")
            }
            TrapKind::MemoryLimit { memory_bytes } => {
                write!(f, "memory limit exceeded (cap {memory_bytes} bytes)")
            }
            TrapKind::Panic(msg) => write!(f, "panic: {msg}"),
            TrapKind::StackOverflow => write!(f, "stack overflow"),
            TrapKind::Cancelled => write!(f, "cancelled by the host"),
            TrapKind::Other(msg) => write!(f, "trap: {msg}"),
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Retryable(m) => write!(f, "retryable error: {m}"),
            CallFailure::Permanent(m) => write!(f, "permanent error: {m}"),
            CallFailure::Trap(t) => t.fmt(f),
            CallFailure::Host(m) => write!(f, "host error: {m}"),
            CallFailure::StateWait { key } => write!(
                f,
                "deadline passed while waiting for the turn of state key {key:?}"
            ),
        }
    }
}

/// The result of one handler call with what it cost.
#[derive(Debug)]
pub struct CallReport {
    /// Success or why not.
    pub result: Result<Outcome, CallFailure>,
    /// Buffered effects; meaningful only when `result` is `Ok`.
    pub effects: Effects,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// Wall-clock time of instantiate + call.
    pub duration: Duration,
}

/// Why a mapper call produced no request or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapFailure {
    /// The mapper returned `err(reason)`: the input is poison, never retried.
    Rejected(String),
    /// The mapper was stopped or crashed.
    Trap(TrapKind),
    /// The host could not run the call (e.g. instance pool exhausted).
    Host(String),
}

impl std::fmt::Display for MapFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapFailure::Rejected(m) => write!(f, "rejected: {m}"),
            MapFailure::Trap(t) => t.fmt(f),
            MapFailure::Host(m) => write!(f, "host error: {m}"),
        }
    }
}
