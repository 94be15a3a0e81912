//! Issue 11: the operator's limits are ceilings, every host allocation a
//! guest causes is bounded, names, plugin files. Each abuse plugin shows
//! the host staying up, other channels being served, and the job recording
//! the right reason.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Env, FAST};

const LONG: Duration = Duration::from_secs(60);

/// `sluice plugins --json` lines, by plugin name.
fn plugin_json(env: &Env, args: &[&str], name: &str) -> Value {
    let out = env.ok(args);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
fn a_plugin_asking_for_unbounded_limits_gets_the_operators_ceiling() {
    let env = Env::new(
        &["test-greedy", "test-counter"],
        &format!(
            "{FAST}\n[limits]\nfuel = 1_000_000_000\ntimeout = \"2s\"\nmemory = \"32MiB\"\n\
             [plugin.test-greedy]\nmax_attempts = 1\n"
        ),
    );
    let check = |v: &Value| {
        assert_eq!(v["asked"]["fuel"], u64::MAX, "{v}");
        assert_eq!(v["asked"]["timeout_ms"], u64::MAX, "{v}");
        assert_eq!(v["asked"]["memory_bytes"], u64::MAX, "{v}");
        assert_eq!(v["limits"]["fuel"], 1_000_000_000u64, "{v}");
        assert_eq!(v["limits"]["timeout_ms"], 2000, "{v}");
        assert_eq!(v["limits"]["memory_bytes"], 32u64 << 20, "{v}");
    };
    check(&plugin_json(&env, &["plugins", "--json"], "test-greedy"));
    let table = env.ok(&["plugins"]);
    assert!(
        table.contains("1000000000*"),
        "capped limits are marked: {table}"
    );

    let id = env.post("test.greedy", "{}");
    let counted: Vec<String> = (0..5)
        .map(|_| env.post("test.counter", r#"{"amount": 1}"#))
        .collect();
    let mut daemon = env.start();
    env.wait_settled("test.greedy", 1, LONG);
    let job = env.job(&id);
    let err = job.last_error.clone().unwrap_or_default();
    assert_eq!(job.state, JobState::Dead, "{err}\n{}", daemon.log_text());
    assert!(
        err.contains("out of fuel (budget 1000000000 units)"),
        "{err}"
    );
    env.wait_settled("test.counter", 5, LONG);
    for id in &counted {
        assert_eq!(env.job(id).state, JobState::Succeeded);
    }
    // The running daemon's view says the same.
    check(&plugin_json(&env, &["plugins", "--json"], "test-greedy"));
    daemon.wait_log(
        &["asked for more than the operator's ceiling", "test-greedy"],
        1,
        LONG,
    );
    assert!(daemon.exited().is_none());
    assert!(daemon.stop(LONG).success());
}

#[test]
fn every_host_allocation_a_guest_causes_is_bounded_and_fails_for_good() {
    let env = Env::new(&["test-hoard", "test-hoard-mapper", "test-counter"], FAST);
    // (request, channel, what the dead letter must say). Each is dead at
    // its first attempt: the same input would exceed the bound again.
    let cases = [
        ("posts", "test.hoard", "too many posts"),
        ("body", "test.hoard", "post body of"),
        ("headers", "test.hoard", "post with 65 headers"),
        ("header-bytes", "test.hoard", "too much data buffered"),
        ("channel", "test.hoard", "has an empty segment"),
        (
            "result",
            "test.hoard",
            "result of 2097154 bytes is over the limit",
        ),
        ("cursor", "test.hoard", "continuation cursor of 5000 bytes"),
        (
            "random",
            "test.hoard",
            "random bytes: one request may ask for at most 65536",
        ),
        ("resources", "test.hoard", "too many host resources"),
        ("inflate", "test.hoard", "posts map to more than"),
        ("mapped-headers", "test.hoard", "message with 65 headers"),
        (
            "huge-request",
            "test.hoard.in",
            "request body of 17825792 bytes",
        ),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(case, channel, _)| env.post(channel, &format!(r#"{{"do": "{case}"}}"#)))
        .collect();
    let fine: Vec<String> = ["logs", "progress"]
        .iter()
        .map(|case| env.post("test.hoard", &format!(r#"{{"do": "{case}"}}"#)))
        .collect();
    let counted: Vec<String> = (0..10)
        .map(|_| env.post("test.counter", r#"{"amount": 1}"#))
        .collect();
    let mut daemon = env.start();
    env.wait_settled("test.hoard", cases.len() + 1, LONG);
    env.wait_settled("test.hoard.in", 1, LONG);
    for ((case, _, reason), id) in cases.iter().zip(&ids) {
        let job = env.job(id);
        let err = job.last_error.clone().unwrap_or_default();
        assert_eq!(
            job.state,
            JobState::Dead,
            "{case}: {err}\n{}",
            daemon.log_text()
        );
        assert!(
            err.contains(reason),
            "{case}: expected {reason:?} in {err:?}"
        );
        assert!(err.contains("sandbox limit"), "{case}: {err}");
        assert_eq!(job.attempts, 1, "{case}: a limit is not retried");
    }
    for id in &fine {
        let job = env.job(id);
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    }
    let progress = env.job(&fine[1]);
    assert!(progress.progress_note.is_some_and(|n| n.len() <= 4096));
    env.wait_settled("test.counter", 10, LONG);
    for id in &counted {
        assert_eq!(env.job(id).state, JobState::Succeeded);
    }
    // Log floods are cut with one warning, and a plugin's line cannot
    // forge another: its newlines and escapes are escaped.
    let log = daemon.log_text();
    assert_eq!(daemon.log_lines(&["dropping the rest"]).len(), 1, "{log}");
    assert!(
        log.contains("line 0\\nINFO forged line\\r\\u{1b}[31m"),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("INFO forged")),
        "forged line in the log"
    );
    assert!(!log.contains('\x1b'), "raw escape in the log");
    let logged = daemon.log_lines(&["INFO forged line"]).len();
    assert!(logged <= 1000, "{logged} plugin lines logged");
    assert!(daemon.exited().is_none());
    assert!(daemon.stop(LONG).success());
}
