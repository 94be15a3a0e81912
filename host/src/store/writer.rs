//! The writer thread: one connection, group commit, answers after COMMIT.
//!
//! Each operation runs inside a SAVEPOINT of its own, so one that fails
//! undoes only its own writes. An operation that writes with at most one
//! statement (a claim, an effect-free finish) needs none: SQLite undoes a
//! failed statement by itself and leaves the transaction open. Those run
//! bare ([`Writer::submit_single`]), which saves two statements per job on
//! a drain (README, "Latest figures").

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

/// What an operation runs. Given the connection (inside the group
/// transaction) it runs and returns its [`Pending`]; given an error (the
/// transaction could not begin) it answers its caller with that error at
/// once.
type Run = Box<dyn FnOnce(Result<&Connection, StoreError>) -> Option<Pending> + Send>;

/// An operation and whether it needs a savepoint of its own.
struct Op {
    run: Run,
    /// False only for an operation that writes with at most one statement.
    savepoint: bool,
}

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
        self.submit_op(f, true)
    }

    /// [`Writer::submit`] for an operation that writes with at most one
    /// statement and can fail only in that statement: it runs without a
    /// savepoint (a statement that fails leaves nothing behind by itself),
    /// which saves two statements. Not for `UPDATE ... RETURNING` whose
    /// rows are decoded afterwards: SQLite applies it all on the first
    /// step, so a decoding error would keep its writes.
    pub(super) fn submit_single<T, F>(
        &self,
        f: F,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_op(f, false)
    }

    fn submit_op<T, F>(
        &self,
        f: F,
        savepoint: bool,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run: Run = Box::new(move |conn| {
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
        self.tx
            .send(Op { run, savepoint })
            .map_err(|_| StoreError::Closed)?;
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
        let run: Run = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let _ = reply.send(result);
            Some(Pending {
                ok,
                answer: Box::new(|_| {}),
            })
        });
        // A read: nothing to undo, so no savepoint.
        self.tx
            .send(Op {
                run,
                savepoint: false,
            })
            .map_err(|_| StoreError::Closed)?;
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
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        tracing::error!(error = %err, "store: cannot begin a transaction");
        for op in batch {
            (op.run)(Err(err.clone()));
        }
        return;
    }
    let mut pendings = Vec::with_capacity(batch.len());
    for op in batch {
        if !op.savepoint {
            if let Some(pending) = (op.run)(Ok(conn)) {
                pendings.push(pending);
            }
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT op") {
            tracing::error!(error = %e, "store: savepoint failed");
        }
        let Some(pending) = (op.run)(Ok(conn)) else {
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
    let commit_error = exec(conn, "COMMIT").err().map(|e| {
        let _ = exec(conn, "ROLLBACK");
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
/// statements run twice per operation, BEGIN and COMMIT once per group, so
/// they are parsed once, not each time.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation without a savepoint whose one statement fails leaves
    /// nothing behind, and the operations around it in the same group
    /// commit.
    #[tokio::test]
    async fn a_failed_single_statement_undoes_only_itself() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Sql(e.to_string()))?;
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path)?;
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")?;
        let writer = Writer::spawn(conn, &path)?;
        let insert = |k: i64, v: Option<&'static str>| {
            move |c: &Connection| -> Result<usize, StoreError> {
                Ok(c.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    rusqlite::params![k, v],
                )?)
            }
        };
        // Submitted back to back, so they share group commits.
        let a = writer.submit(insert(1, Some("a")))?;
        // Several rows in one statement, the last one refused (NOT NULL).
        let bad = writer.submit_single(|c: &Connection| -> Result<usize, StoreError> {
            Ok(c.execute(
                "INSERT INTO t (k, v) VALUES (2, 'x'), (3, 'y'), (4, NULL)",
                [],
            )?)
        })?;
        let b = writer.submit_single(insert(5, Some("b")))?;
        assert_eq!(a.await?, 1);
        assert!(bad.await.is_err());
        assert_eq!(b.await?, 1);
        let keys = writer
            .call(|c: &Connection| -> Result<Vec<i64>, StoreError> {
                let mut stmt = c.prepare("SELECT k FROM t ORDER BY k")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        assert_eq!(keys, vec![1, 5]);
        Ok(())
    }
}
