//! Why a call failed: from wasmtime's error plus what the call recorded.
//!
//! wasmtime reports most stops as a bare `Trap`; several of ours look alike
//! from the outside, so the call records the cause where it knows it (the
//! epoch callback records a deadline or cancellation, the resource limiter a
//! refused `memory.grow`, the `state-get` import a store failure) and this
//! module reads those facts first, then the error chain, then the guest's
//! stderr.
//!
//! Stack overflow has two faces. If the wasm (native) stack runs out,
//! wasmtime traps with `Trap::StackOverflow`. But Rust guests (and C ones)
//! keep most frames on a *shadow stack* at the start of linear memory
//! (`--stack-first`), growing down towards address 0: overflowing it wraps
//! the 32-bit stack pointer to just below 4 GiB, and the next access to the
//! frame is out of bounds. That trap is `MemoryOutOfBounds`, so such a trap
//! is classified as a stack overflow when either
//! - wasmtime's fault context puts the address in the top
//!   [`WRAPPED_STACK_WINDOW`] of the 32-bit space, past the memory's end (no
//!   legitimate pointer lives there: memories are capped far below 4 GiB);
//!   or, since an access made by `memory.fill`/`memory.copy` (Rust's
//!   `memset` with bulk memory, e.g. zeroing a local array) carries no
//!   address,
//! - the trap's backtrace is at least [`RECURSION_FRAMES`] deep and its
//!   innermost frames cycle through at most [`RECURSION_DISTINCT`]
//!   functions: a recursion.
//!
//! Anything else out of bounds stays `Other`: so does a shadow-stack
//! overflow by one huge frame, without recursion, whose first access is a
//! bulk-memory instruction (a rare case: no address, no telling pattern).

use super::types::{Limits, TrapKind};

/// Addresses at or above `4 GiB - this` mean a wrapped stack pointer.
const WRAPPED_STACK_WINDOW: u64 = 16 * 1024 * 1024;

/// Innermost frames a backtrace needs for [`looks_recursive`]; below
/// wasmtime's default cap of 20 captured frames.
pub(super) const RECURSION_FRAMES: usize = 16;

/// Most distinct functions among those frames for them to be a recursion.
const RECURSION_DISTINCT: usize = 3;

/// Panic messages are cut to this many bytes.
const MAX_PANIC_BYTES: usize = 2048;

/// What stopped a call from the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupt {
    /// The wall-clock budget ran out.
    Deadline,
    /// The caller's cancellation token fired.
    Cancelled,
}

/// Errors the host raises inside a guest call. They travel through wasmtime
/// as the root of the error chain.
#[derive(Debug, thiserror::Error)]
pub(super) enum HostTrap {
    /// The guest exceeded an effect bound (too many posts, a huge value...).
    #[error("{0}")]
    GuestLimit(String),
    /// The host failed to serve an import (e.g. the state store).
    #[error("{0}")]
    HostFault(String),
    /// The guest asked for something that can never work (e.g. adding to a
    /// state value that is not an integer): the job fails for good.
    #[error("{0}")]
    Invalid(String),
    /// Stopped by the epoch callback; the cause is in [`Facts::interrupt`].
    #[error("interrupted by the host")]
    Interrupted,
}

/// What the call recorded while it ran.
#[derive(Debug, Default, Clone)]
pub(super) struct Facts {
    pub(super) interrupt: Option<Interrupt>,
    pub(super) memory_refused: bool,
    pub(super) table_refused: bool,
    pub(super) host_fault: Option<String>,
    /// Set while `state-get` waits for a key (its turn, or a load): a
    /// deadline that strikes then is the host's wait, not the guest's.
    pub(super) state_wait: Option<String>,
}

/// A failed call, before it becomes a `CallFailure` or a `MapFailure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// The guest was stopped or crashed.
    Trap(TrapKind),
    /// The guest exceeded a bound on what it may make the host hold (too
    /// many posts, a value too large, too many resources...). The same
    /// input would exceed it again, so it is a permanent failure.
    Limit(String),
    /// The host could not run the call.
    Host(String),
    /// The guest asked for the impossible ([`HostTrap::Invalid`]).
    Invalid(String),
    /// The deadline passed while the host made the guest wait for a state
    /// key's turn.
    StateWait(String),
}

/// Classifies a failed call. `stderr` is the tail of the guest's stderr.
pub(super) fn classify(
    facts: &Facts,
    limits: Limits,
    err: &wasmtime::Error,
    stderr: &str,
) -> Failure {
    match facts.interrupt {
        Some(Interrupt::Cancelled) => return Failure::Trap(TrapKind::Cancelled),
        Some(Interrupt::Deadline) if facts.state_wait.is_some() => {
            return Failure::StateWait(facts.state_wait.clone().unwrap_or_default());
        }
        Some(Interrupt::Deadline) => {
            return Failure::Trap(TrapKind::Deadline {
                timeout_ms: limits.timeout_ms,
            });
        }
        None => {}
    }
    if let Some(fault) = &facts.host_fault {
        return Failure::Host(fault.clone());
    }
    if let Some(limit) = guest_limit(err) {
        return Failure::Limit(limit);
    }
    if let Some(HostTrap::Invalid(m)) = err.downcast_ref::<HostTrap>() {
        return Failure::Invalid(m.clone());
    }
    if let Some(pool) = err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return Failure::Host(format!("instance pool exhausted: {pool}"));
    }
    if facts.memory_refused {
        return Failure::Trap(TrapKind::MemoryLimit {
            memory_bytes: limits.memory_bytes,
        });
    }
    let kind = match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => TrapKind::OutOfFuel { fuel: limits.fuel },
        Some(wasmtime::Trap::StackOverflow) => TrapKind::StackOverflow,
        Some(wasmtime::Trap::MemoryOutOfBounds) if wrapped_stack(err) || recursion(err) => {
            TrapKind::StackOverflow
        }
        _ => match panic_message(stderr) {
            Some(msg) => TrapKind::Panic(msg),
            None if facts.table_refused => {
                return Failure::Limit(format!(
                    "table limit exceeded (at most {} elements)",
                    super::call::MAX_TABLE_ELEMENTS
                ));
            }
            None => TrapKind::Other(err.root_cause().to_string()),
        },
    };
    Failure::Trap(kind)
}

/// The bound a guest exceeded, if that is what stopped it: one of ours
/// ([`HostTrap::GuestLimit`]), a full resource table, or WASI's cap on one
/// request for random bytes (known by its message, pinned by a test).
fn guest_limit(err: &wasmtime::Error) -> Option<String> {
    if let Some(HostTrap::GuestLimit(m)) = err.downcast_ref::<HostTrap>() {
        return Some(m.clone());
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        err.downcast_ref::<wasmtime::component::ResourceTableError>()
    {
        return Some(format!(
            "too many host resources: a call may hold at most {}",
            super::call::MAX_RESOURCES
        ));
    }
    let root = err.root_cause().to_string();
    if root.starts_with("requested len ") && root.contains(" exceeds limit ") {
        return Some(format!(
            "random bytes: one request may ask for at most {} bytes",
            super::call::MAX_RANDOM
        ));
    }
    None
}

/// True when the error carries wasmtime's fault context ("memory fault at
/// wasm address 0x.. in linear memory of size 0x..") with an address in the
/// wrapped-stack window, past the end of memory.
fn wrapped_stack(err: &wasmtime::Error) -> bool {
    err.chain().any(|cause| {
        let text = cause.to_string();
        let Some((addr, size)) = parse_fault(&text) else {
            return false;
        };
        addr >= (1u64 << 32) - WRAPPED_STACK_WINDOW && addr >= size
    })
}

/// True when the trap's backtrace shows a recursion.
fn recursion(err: &wasmtime::Error) -> bool {
    let Some(trace) = err.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return false;
    };
    let frames: Vec<(u32, Option<&str>)> = trace
        .frames()
        .iter()
        .take(RECURSION_FRAMES)
        .map(|f| (f.func_index(), f.module().name()))
        .collect();
    looks_recursive(&frames)
}

/// At least [`RECURSION_FRAMES`] frames (innermost first) drawn from at
/// most [`RECURSION_DISTINCT`] functions.
fn looks_recursive<K: PartialEq>(frames: &[K]) -> bool {
    if frames.len() < RECURSION_FRAMES {
        return false;
    }
    let mut distinct: Vec<&K> = Vec::new();
    for f in &frames[..RECURSION_FRAMES] {
        if !distinct.contains(&f) {
            if distinct.len() == RECURSION_DISTINCT {
                return false;
            }
            distinct.push(f);
        }
    }
    true
}

fn parse_fault(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("memory fault at wasm address 0x")?;
    let (addr, rest) = rest.split_once(' ')?;
    let size = rest.strip_prefix("in linear memory of size 0x")?;
    let size = size.split(|c: char| !c.is_ascii_hexdigit()).next()?;
    Some((
        u64::from_str_radix(addr, 16).ok()?,
        u64::from_str_radix(size, 16).ok()?,
    ))
}

/// The message of the last Rust panic printed to stderr: the text after the
/// `panicked at <location>:` line, up to std's `note:` line, trimmed and cut
/// to 2 KiB. Falls back to the location line for an empty message.
pub(super) fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let rest = &stderr[at..];
    let (location, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let message = if after.starts_with("note: ") {
        ""
    } else {
        after.split("\nnote: ").next().unwrap_or(after)
    };
    let message = message.trim();
    let message = if message.is_empty() {
        location.trim().trim_end_matches(':')
    } else {
        message
    };
    Some(truncate(message, MAX_PANIC_BYTES))
}

/// `s` cut to at most `max` bytes on a char boundary, marked with "…".
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        fuel: 1000,
        memory_bytes: 1 << 20,
        timeout_ms: 50,
    };

    fn trap(t: wasmtime::Trap) -> wasmtime::Error {
        wasmtime::Error::from(t)
    }

    fn kind(facts: &Facts, err: &wasmtime::Error, stderr: &str) -> Failure {
        classify(facts, LIMITS, err, stderr)
    }

    #[test]
    fn traps_map_to_kinds() {
        let none = Facts::default();
        let fuel = TrapKind::OutOfFuel { fuel: 1000 };
        assert_eq!(
            kind(&none, &trap(wasmtime::Trap::OutOfFuel), ""),
            Failure::Trap(fuel)
        );
        assert_eq!(
            kind(&none, &trap(wasmtime::Trap::StackOverflow), ""),
            Failure::Trap(TrapKind::StackOverflow)
        );
        let other = kind(&none, &trap(wasmtime::Trap::UnreachableCodeReached), "");
        assert_eq!(
            other,
            Failure::Trap(TrapKind::Other(
                "wasm trap: wasm `unreachable` instruction executed".into()
            ))
        );
    }

    #[test]
    fn recorded_facts_win() {
        let err = trap(wasmtime::Trap::UnreachableCodeReached);
        let mut facts = Facts {
            memory_refused: true,
            ..Facts::default()
        };
        let mem = TrapKind::MemoryLimit {
            memory_bytes: 1 << 20,
        };
        assert_eq!(
            kind(&facts, &err, "memory allocation failed"),
            Failure::Trap(mem)
        );
        facts.host_fault = Some("state store: disk I/O error".into());
        assert_eq!(
            kind(&facts, &err, ""),
            Failure::Host("state store: disk I/O error".into())
        );
        facts.interrupt = Some(Interrupt::Deadline);
        let deadline = TrapKind::Deadline { timeout_ms: 50 };
        assert_eq!(kind(&facts, &err, ""), Failure::Trap(deadline));
        facts.interrupt = Some(Interrupt::Cancelled);
        assert_eq!(kind(&facts, &err, ""), Failure::Trap(TrapKind::Cancelled));
    }

    #[test]
    fn wrapped_shadow_stack_is_a_stack_overflow() {
        let none = Facts::default();
        let oob = |addr: &str| {
            trap(wasmtime::Trap::MemoryOutOfBounds).context(format!(
                "memory fault at wasm address {addr} in linear memory of size 0x110000"
            ))
        };
        assert_eq!(
            kind(&none, &oob("0xfffffff8"), ""),
            Failure::Trap(TrapKind::StackOverflow)
        );
        assert_eq!(
            kind(&none, &oob("0x100000010"), ""),
            Failure::Trap(TrapKind::StackOverflow)
        );
        // An ordinary out-of-bounds access just past the end of memory.
        assert_eq!(
            kind(&none, &oob("0x110008"), ""),
            Failure::Trap(TrapKind::Other(
                "wasm trap: out of bounds memory access".into()
            ))
        );
        // No fault context at all.
        assert!(matches!(
            kind(&none, &trap(wasmtime::Trap::MemoryOutOfBounds), ""),
            Failure::Trap(TrapKind::Other(_))
        ));
    }

    #[test]
    fn exceeded_bounds_are_limits() {
        let none = Facts::default();
        let err = wasmtime::Error::new(HostTrap::GuestLimit("too many posts".into()));
        assert_eq!(
            kind(&none, &err, ""),
            Failure::Limit("too many posts".into())
        );
        let full = wasmtime::Error::new(wasmtime::component::ResourceTableError::Full);
        assert!(matches!(kind(&none, &full, ""), Failure::Limit(m) if m.contains("resources")));
        // wasmtime-wasi 48's message for an oversized get-random-bytes.
        let random = wasmtime::Error::msg("requested len 1048576 exceeds limit 65536");
        assert!(matches!(kind(&none, &random, ""), Failure::Limit(m) if m.contains("random")));
        let table = Facts {
            table_refused: true,
            ..Facts::default()
        };
        let err = trap(wasmtime::Trap::UnreachableCodeReached);
        assert!(matches!(kind(&table, &err, ""), Failure::Limit(m) if m.contains("table")));
    }

    #[test]
    fn panic_after_unreachable() {
        let stderr = "noise\nthread '<unnamed>' panicked at src/lib.rs:42:9:\nboom: bad input\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let err = trap(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(
            kind(&Facts::default(), &err, stderr),
            Failure::Trap(TrapKind::Panic("boom: bad input".into()))
        );
    }

    #[test]
    fn panic_message_extraction() {
        assert_eq!(panic_message("all good\n"), None);
        assert_eq!(
            panic_message(
                "panicked at a.rs:1:1:\nfirst\npanicked at b.rs:2:2:\n  second\nline two\n"
            ),
            Some("second\nline two".into())
        );
        assert_eq!(
            panic_message("panicked at a.rs:1:1:\n"),
            Some("panicked at a.rs:1:1".into())
        );
        assert_eq!(
            panic_message("panicked at a.rs:1:1:\nnote: run with RUST_BACKTRACE=1\n"),
            Some("panicked at a.rs:1:1".into())
        );
        let long = format!("panicked at a.rs:1:1:\n{}", "é".repeat(4000));
        let msg = panic_message(&long).unwrap_or_default();
        assert!(msg.len() <= MAX_PANIC_BYTES && msg.ends_with('…'));
    }

    #[test]
    fn recursion_pattern() {
        assert!(looks_recursive(&[7u32; 20]));
        let mutual: Vec<u32> = (0..20).map(|i| i % 2).collect();
        assert!(looks_recursive(&mutual));
        assert!(!looks_recursive(&[7u32; 5]));
        let chain: Vec<u32> = (0..20).collect();
        assert!(!looks_recursive(&chain));
    }

    #[test]
    fn fault_text_parses() {
        assert_eq!(
            parse_fault("memory fault at wasm address 0xfffffff0 in linear memory of size 0x20000"),
            Some((0xffff_fff0, 0x20000))
        );
        assert_eq!(parse_fault("out of bounds memory access"), None);
    }
}
