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
