//! The reader thread: one read-only connection for the queries operators
//! run (job lists, the dashboard's overview, a job's posts).
//!
//! Why apart from the writer: every writer operation waits for the group
//! commit, and a page of the dashboard polled every two seconds must not
//! queue behind (or hold up) the commits of the message path. Under WAL a
//! reader sees the last committed state without blocking the writer, and
//! because the writer answers only after COMMIT, a caller that wrote
//! something and then reads it here sees its write.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::StoreError;

type Op = Box<dyn FnOnce(&Connection) + Send>;

/// Sends queries to the reader thread.
#[derive(Clone)]
pub(super) struct Reader {
    tx: mpsc::Sender<Op>,
}

impl Reader {
    /// Opens a read-only connection on `path` (already migrated by the
    /// writer's connection) and starts its thread.
    pub(super) fn spawn(path: &Path, busy: std::time::Duration) -> Result<Reader, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(format!("cannot open a reader: {e}")))?;
        conn.busy_timeout(busy)
            .map_err(|e| open_err(e.to_string()))?;
        conn.set_prepared_statement_cache_capacity(super::migrations::STATEMENT_CACHE);
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("sluice-store-read".into())
            .spawn(move || {
                while let Ok(op) = rx.recv() {
                    op(&conn);
                }
            })
            .map_err(|e| open_err(format!("cannot start the reader thread: {e}")))?;
        Ok(Reader { tx })
    }

    /// Runs `f` in its own read transaction (a consistent snapshot).
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let result = conn
                .execute_batch("BEGIN DEFERRED")
                .map_err(StoreError::from)
                .and_then(|()| f(conn));
            let _ = conn.execute_batch("COMMIT");
            let _ = reply.send(result);
        });
        self.tx.send(op).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}
