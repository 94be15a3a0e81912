//! Test plugin (not an example): every call must start on the memory the
//! module was built with, whatever the previous call in the same sandbox
//! slot left behind. The host recycles pool slots and resets only what a
//! call dirtied (`PAGEMAP_SCAN`), keeping up to `linear_memory_keep_resident`
//! bytes resident and giving the rest back; this plugin checks all of it.
//!
//! Each call reports what it found, then dirties everything it checked:
//! an initialised static (data segment), a zeroed static (bss), a fresh
//! heap allocation larger than the resident window, and pages it grows
//! itself. Request: `{"grow_pages": u32}` (pages of 64 KiB to grow, beyond
//! the heap). Result: `{"data_fresh", "bss_fresh", "heap_zero",
//! "grown_zero": bool, "pages_at_start": u32}`.

use std::sync::atomic::{AtomicU64, Ordering};

use sluice_sdk::prelude::*;

const SEED: u64 = 0x5eed_5eed_5eed_5eed;

/// Initialised: lives in the data segment.
static INITIALISED: AtomicU64 = AtomicU64::new(SEED);
/// Zero: lives in bss.
static ZEROED: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];

/// Larger than the host's resident window (1 MiB), so part of it is reset
/// by memset and part by giving the pages back.
const HEAP_BYTES: usize = 3 << 20;

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    grow_pages: u32,
}

struct TestFreshMemory;

impl Handler for TestFreshMemory {
    type Request = Probe;

    fn describe() -> Describe {
        Describe::handler("test-fresh-memory", "0.1.0").channel("test.fresh")
    }

    fn handle(_ctx: &mut Context, req: Probe) -> Result<Outcome, Error> {
        let pages_at_start = pages();
        let data_fresh = INITIALISED.load(Ordering::Relaxed) == SEED;
        let bss_fresh = ZEROED.iter().all(|v| v.load(Ordering::Relaxed) == 0);
        // The allocator hands out fresh pages as zeroed memory (calloc
        // skips the memset for memory it just grew): they must be zero.
        let mut heap = vec![0u8; HEAP_BYTES];
        let heap_zero = heap.iter().all(|b| *b == 0);
        heap.fill(0xab);
        std::hint::black_box(&heap);
        let grown_zero = grow_and_dirty(req.grow_pages.min(64));
        INITIALISED.store(0, Ordering::Relaxed);
        for v in &ZEROED {
            v.store(u64::MAX, Ordering::Relaxed);
        }
        Outcome::done_with(&serde_json::json!({
            "data_fresh": data_fresh,
            "bss_fresh": bss_fresh,
            "heap_zero": heap_zero,
            "grown_zero": grown_zero,
            "pages_at_start": pages_at_start,
        }))
    }
}

#[cfg(target_arch = "wasm32")]
fn pages() -> usize {
    core::arch::wasm32::memory_size(0)
}

/// Grows memory by `n` pages, checks they read as zero, then writes to
/// every byte of them.
#[cfg(target_arch = "wasm32")]
fn grow_and_dirty(n: u32) -> bool {
    if n == 0 {
        return true;
    }
    let old = core::arch::wasm32::memory_grow(0, n as usize);
    if old == usize::MAX {
        return false;
    }
    let start = old * 65536;
    let len = n as usize * 65536;
    // SAFETY: the pages [old, old + n) were just added to linear memory and
    // nothing else (the allocator included) knows about them.
    let grown = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    let zero = grown.iter().all(|b| *b == 0);
    grown.fill(0xcd);
    zero
}

// Native builds (unit tests, clippy) have no linear memory to look at.
#[cfg(not(target_arch = "wasm32"))]
fn pages() -> usize {
    0
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_and_dirty(_n: u32) -> bool {
    true
}

sluice_sdk::export_handler!(TestFreshMemory);
