//! Issues 11.3 and 18.1: one host-wide budget of sandboxed calls
//! (`[sandbox] calls`) shared by every pump and mapper. Waiting for it
//! costs no attempt, a busy channel cannot starve a quiet one, and a
//! handler's `concurrency` stays an upper bound.

use std::time::Duration;

use sluice::store::JobState;

use crate::api::{Api, http_config, metric};
use crate::util::{Env, wait_until};

const LONG: Duration = Duration::from_secs(120);

/// `sluice post CHANNEL` with one message per line.
fn post_many(env: &Env, channel: &str, bodies: &[String]) {
    let out = env.sluice_stdin(&["post", channel], &bodies.join("\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics(api: &Api) -> String {
    let m = api.get("/metrics");
    assert_eq!(m.status, 200, "{}", m.text);
    m.text
}

#[test]
fn many_busy_channels_share_the_budget_and_waiting_costs_no_attempt() {
    // Three calls at once for nine pumps of 64 jobs each and their mapper
    // calls (both directions): without the gate the pool (3 instances)
    // runs dry and, with one attempt, jobs die of it.
    let (config, addr) = http_config(
        "[sandbox]\ncalls = 3\n[plugin.test-lanes]\nconcurrency = 64\nmax_attempts = 1\n",
    );
    let env = Env::new(&["test-lanes", "test-lanes-mapper"], &config);
    let per_channel = 40;
    for i in 0..8 {
        let bodies: Vec<String> = (0..per_channel)
            .map(|n| match n % 4 {
                0 => r#"{"millis": 2, "post": "lanes.out"}"#.to_owned(),
                _ => r#"{"millis": 2}"#.to_owned(),
            })
            .collect();
        post_many(&env, &format!("lanes.{i}"), &bodies);
    }
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    for i in 0..8 {
        let jobs = env.wait_settled(&format!("lanes.{i}"), per_channel, LONG);
        for j in &jobs {
            assert_eq!(
                (j.state, j.attempts),
                (JobState::Succeeded, 1),
                "{:?}\n{}",
                j.last_error,
                daemon.log_text()
            );
        }
    }
    let posts = env.wait_settled("lanes.out", 8 * per_channel / 4, LONG);
    assert!(posts.iter().all(|j| j.state == JobState::Succeeded));
    let t = metrics(&api);
    assert_eq!(metric(&t, "sluice_sandbox_calls_budget"), Some(3.0), "{t}");
    // Reached (the pumps asked for far more) and never passed.
    assert_eq!(metric(&t, "sluice_sandbox_calls_peak"), Some(3.0), "{t}");
    assert_eq!(metric(&t, "sluice_sandbox_calls_running"), Some(0.0), "{t}");
    assert_eq!(metric(&t, "sluice_sandbox_calls_waiting"), Some(0.0), "{t}");
    assert!(daemon.log_lines(&["instance pool"]).is_empty());
    assert!(daemon.stop(LONG).success());
}

#[test]
fn a_busy_channel_cannot_starve_a_quiet_one() {
    // One call at a time; the busy channel's 60 slow jobs are all claimed
    // and waiting for it when the quiet channel's one job arrives. First
    // come, first served would run it last; the gate runs it next.
    let (config, addr) = http_config("[sandbox]\ncalls = 1\n");
    let env = Env::new(&["test-lanes"], &config);
    let busy = 60;
    let bodies = vec![r#"{"millis": 50}"#.to_owned(); busy];
    post_many(&env, "lanes.1", &bodies);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let done = |channel: &str| {
        env.jobs(channel)
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count()
    };
    assert!(wait_until(LONG, || done("lanes.1") >= 1));
    let quiet = env.post("lanes.3", r#"{"millis": 0}"#);
    assert!(wait_until(LONG, || env.job(&quiet).state == JobState::Succeeded));
    let busy_done = done("lanes.1");
    assert!(
        busy_done < busy / 2,
        "the quiet job waited for {busy_done} of {busy} busy jobs"
    );
    env.wait_settled("lanes.1", busy, LONG);
    assert!(daemon.stop(LONG).success());
}

#[test]
fn a_handlers_concurrency_stays_an_upper_bound_under_a_larger_budget() {
    let (config, addr) =
        http_config("[sandbox]\ncalls = 16\n[plugin.test-lanes]\nconcurrency = 2\n");
    let env = Env::new(&["test-lanes"], &config);
    let bodies = vec![r#"{"millis": 20}"#.to_owned(); 12];
    post_many(&env, "lanes.5", &bodies);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    env.wait_settled("lanes.5", 12, LONG);
    let t = metrics(&api);
    // The only pump, and no mapper: the host-wide peak is its own.
    assert_eq!(metric(&t, "sluice_sandbox_calls_budget"), Some(16.0), "{t}");
    assert_eq!(metric(&t, "sluice_sandbox_calls_peak"), Some(2.0), "{t}");
    assert!(daemon.stop(LONG).success());
}

#[test]
fn an_idle_host_gives_free_heap_memory_back() {
    let env = Env::new(
        &["test-counter"],
        &format!(
            "{}\n[sandbox]\nidle_release = \"300ms\"\n",
            crate::util::FAST
        ),
    );
    let daemon = env.start();
    let bodies: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"amount": {}, "note": "{}"}}"#, i % 7, "x".repeat(200)))
        .collect();
    post_many(&env, "test.counter", &bodies);
    env.wait_settled("test.counter", 1000, LONG);
    // Once the backlog is done and no call has run for 300 ms, the free
    // memory the drain left in the allocator's arenas goes back to the
    // kernel (logged when it is at least 1 MiB).
    let gave = "idle: gave free heap memory back to the kernel";
    daemon.wait_log(&[gave], 1, LONG);
    let line = daemon.log_lines(&[gave]).pop().unwrap_or_default();
    let mib = |f: &str| crate::util::log_field(&line, f).and_then(|v| v.parse::<f64>().ok());
    let (before, after) = (mib("rss_before_mib"), mib("rss_after_mib"));
    assert!(
        matches!((before, after), (Some(b), Some(a)) if a < b),
        "{line}"
    );
    // And the host works on as before.
    let id = env.post("test.counter", r#"{"amount": 1}"#);
    env.wait_settled("test.counter", 1001, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
    assert!(daemon.stop(LONG).success());
}
