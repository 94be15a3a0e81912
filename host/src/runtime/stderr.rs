//! A guest's stderr, captured in memory and bounded.
//!
//! Why: a Rust guest that panics prints `panicked at <location>:\n<message>`
//! to stderr and then traps; the message is the most useful thing an
//! operator can see in a dead letter. Why not wasmtime-wasi's
//! `MemoryOutputPipe`: once full it fails the guest's writes (and Rust's
//! `eprintln!` then panics about stderr instead of the real problem), and it
//! keeps the head, while a panic message is at the tail. This pipe accepts
//! every write and keeps only the last [`TAIL_BYTES`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much of the end of stderr is kept.
pub(super) const TAIL_BYTES: usize = 16 * 1024;

/// Cheap to clone: the store's WASI context and the call share one buffer.
/// The buffer is allocated on the first write, so a quiet guest costs one
/// small `Arc`.
#[derive(Clone, Default)]
pub(super) struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    /// The kept tail, as text.
    pub(super) fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if bytes.len() >= TAIL_BYTES {
            buf.clear();
            buf.extend_from_slice(&bytes[bytes.len() - TAIL_BYTES..]);
            return;
        }
        buf.extend_from_slice(bytes);
        // Trim in batches so a chatty guest costs amortised O(1) per byte.
        if buf.len() > 2 * TAIL_BYTES {
            let excess = buf.len() - TAIL_BYTES;
            buf.drain(..excess);
        }
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready; the tail bound applies after the write.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_tail() {
        let tail = StderrTail::default();
        for i in 0..10_000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        tail.push(b"panicked at src/lib.rs:1:1:\nboom\n");
        let text = tail.text();
        assert!(text.len() <= 2 * TAIL_BYTES);
        assert!(text.ends_with("panicked at src/lib.rs:1:1:\nboom\n"));
        tail.push(&vec![b'x'; TAIL_BYTES + 5]);
        assert_eq!(tail.text().len(), TAIL_BYTES);
    }
}
