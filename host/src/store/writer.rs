//! The writer thread: one connection, group commit, answers after COMMIT.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{MAX_BATCH, StoreError};

/// What an operation hands back to the thread: whether it succeeded (else its
/// savepoint is rolled back) and how to answer its caller once the
/// transaction's fate is known.
struct Pending {
    ok: bool,
    answer: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

/// An operation. Given the connection (inside the group transaction) it runs
/// and returns its [`Pending`]; given an error (the transaction could not
/// begin) it answers its caller with that error at once.
type Op = Box<dyn FnOnce(Result<&Connection, StoreError>) -> Option<Pending> + Send>;

/// Sends operations to the writer thread.
#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    pub(super) fn spawn(conn: Connection, path: &Path) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name(super::WRITER_THREAD.into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot start the store thread: {e}"),
            })?;
        Ok(Writer { tx })
    }

    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f)?.await
    }

    /// Queues `f` now, before returning: operations run in the order they
    /// were submitted, so a caller that submits under its own lock orders
    /// them by that lock (the state ledger does). The future answers after
    /// the group's COMMIT, like [`Writer::call`].
    pub(super) fn submit<T, F>(
        &self,
        f: F,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return None;
                }
            };
            let result = f(conn);
            Some(Pending {
                ok: result.is_ok(),
                answer: Box::new(move |commit_error| {
                    let _ = reply.send(match commit_error {
                        None => result,
                        Some(e) => Err(e),
                    });
                }),
            })
        });
        self.tx.send(op).map_err(|_| StoreError::Closed)?;
        Ok(async move { answer.await.map_err(|_| StoreError::Closed)? })
    }

    /// Runs `f` (a read) in its turn on the writer thread and answers as
    /// soon as it ran, without waiting for the group's COMMIT: it sees every
    /// operation submitted before it, committed or not.
    pub(super) async fn call_uncommitted<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let _ = reply.send(result);
            Some(Pending {
                ok,
                answer: Box::new(|_| {}),
            })
        });
        self.tx.send(op).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The thread's loop: block for one op, take what else is waiting, run them
/// all in one transaction, commit, answer. Ends when every `Writer` is gone.
fn run(conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        run_batch(&conn, batch);
    }
}

fn run_batch(conn: &Connection, batch: Vec<Op>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        tracing::error!(error = %err, "store: cannot begin a transaction");
        for op in batch {
            op(Err(err.clone()));
        }
        return;
    }
    let mut pendings = Vec::with_capacity(batch.len());
    for op in batch {
        if let Err(e) = exec(conn, "SAVEPOINT op") {
            tracing::error!(error = %e, "store: savepoint failed");
        }
        let Some(pending) = op(Ok(conn)) else {
            continue;
        };
        let end = if pending.ok {
            exec(conn, "RELEASE op")
        } else {
            exec(conn, "ROLLBACK TO op").and_then(|()| exec(conn, "RELEASE op"))
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "store: ending a savepoint failed");
        }
        pendings.push(pending);
    }
    let commit_error = conn.execute_batch("COMMIT").err().map(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::from(e)
    });
    if let Some(e) = &commit_error {
        tracing::error!(error = %e, "store: commit failed; every operation in the batch fails");
    }
    for p in pendings {
        (p.answer)(commit_error.clone());
    }
}

/// Runs one statement from the connection's statement cache: the savepoint
/// statements run twice per operation, so they are parsed once, not each
/// time.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}
