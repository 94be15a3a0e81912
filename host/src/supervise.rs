//! Supervision of the daemon's long-lived tasks (pumps, the outbox relay,
//! the plugin watcher, pruning, the status board).
//!
//! Why: a task that panics or returns inside `tokio::spawn` ends silently,
//! and the daemon keeps running half-dead (acking deliveries while no post
//! leaves the host, say). Each task runs under [`supervised`]: while the
//! daemon is not shutting down, a task that ends or panics is logged at
//! error level and started again after a backoff (100 ms doubling to 30 s, reset after a minute of
//! health), so a fault that recurs does not spin.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// First wait before a restart.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const HEALTHY: Duration = Duration::from_secs(60);

/// Runs the task `make` returns until `stop` is cancelled; if it ends or
/// panics before that, logs it and starts a new one.
pub async fn supervised<F, Fut>(name: String, stop: CancellationToken, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let ended = tokio::spawn(make()).await;
        if stop.is_cancelled() {
            if let Err(e) = ended
                && e.is_panic()
            {
                tracing::error!(task = %name, panic = %panic_text(e), "background task panicked while stopping");
            }
            return;
        }
        match ended {
            Ok(()) => {
                tracing::error!(task = %name, "background task ended while the daemon runs; restarting it")
            }
            Err(e) if e.is_panic() => {
                tracing::error!(task = %name, panic = %panic_text(e), "background task panicked; restarting it")
            }
            Err(_) => tracing::error!(task = %name, "background task was cancelled; restarting it"),
        }
        if started.elapsed() >= HEALTHY {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(not a string)".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_or_ends_is_restarted_until_stop() {
        let runs = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn({
            let (runs, stop) = (runs.clone(), stop.clone());
            async move {
                supervised("t".into(), stop.clone(), || {
                    let (runs, stop) = (runs.clone(), stop.clone());
                    async move {
                        match runs.fetch_add(1, Ordering::SeqCst) {
                            0 => panic!("first run panics"),
                            1 => {} // second run returns early
                            _ => stop.cancelled().await,
                        }
                    }
                })
                .await
            }
        });
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        supervisor
            .await
            .expect("the supervisor itself never panics");
        // Ran three times: restarted after the panic and after the return.
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
