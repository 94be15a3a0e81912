//! Hot reload against the real daemon: plugin files swapped, broken,
//! deleted and added while messages keep flowing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice::store::{JobRecord, JobState};

use crate::util::{Daemon, Env, FAST, built_plugins, log_field};

const LONG: Duration = Duration::from_secs(60);

/// The daemon is up and its watcher is running.
fn start_watching(env: &Env) -> Daemon {
    let daemon = env.start();
    daemon.wait_log(&["watching the plugins directory"], 1, LONG);
    daemon
}

fn sha256_of(built: &str) -> String {
    let bytes = std::fs::read(built_plugins().join(format!("{built}.wasm"))).expect("read plugin");
    sluice::runtime::sha256_hex(&bytes)
}

/// `(version in the job's result, version recorded for the job)`.
fn versions(job: &JobRecord) -> (String, String) {
    let result: serde_json::Value =
        serde_json::from_str(job.result.as_deref().unwrap_or("null")).expect("result is JSON");
    (
        result["version"].as_str().unwrap_or("").to_owned(),
        job.plugin_version.clone().unwrap_or_default(),
    )
}

fn pumps_started(daemon: &Daemon, channel: &str) -> usize {
    daemon
        .log_lines(&["pump started", &format!("channel={channel} ")])
        .len()
}

#[test]
fn a_handler_swapped_50_times_under_load_loses_no_job_and_keeps_its_pump() {
    let env = Env::new(
        &[],
        &format!("{FAST}\n[plugin.test-version]\nconcurrency = 4\n"),
    );
    env.deploy("test-version-1", "test-version.wasm");
    let daemon = start_watching(&env);
    let hashes = [
        ("1.0.0", sha256_of("test-version-1")),
        ("2.0.0", sha256_of("test-version-2")),
    ];

    let stop = AtomicBool::new(false);
    let posted = AtomicUsize::new(0);
    let swaps = 50;
    std::thread::scope(|s| {
        // Stops the load on every way out of this scope, a failed assertion
        // included: otherwise the scope waits for the posting thread forever
        // and a failure shows as a hung test.
        let _stop_load = StopOnDrop(&stop);
        // Continuous load: batches of messages, each burning a little CPU
        // so calls are in flight when a swap lands.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let base = posted.load(Ordering::Relaxed);
                let batch: String = (base..base + 10)
                    .map(|i| format!("{{\"seq\": {i}, \"spin\": 200000}}\n"))
                    .collect();
                let out = env.sluice_stdin(&["post", "test.version"], &batch);
                assert!(out.status.success(), "{out:?}");
                posted.fetch_add(10, Ordering::Relaxed);
            }
        });
        for i in 0..swaps {
            // Not in step with the watcher's polls (the wait below ends
            // right after one), so the latency reported is a fair sample.
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..200)));
            let built = if i % 2 == 0 {
                "test-version-2"
            } else {
                "test-version-1"
            };
            if i % 5 == 4 {
                // Every fifth swap overwrites the file in place.
                let bytes =
                    std::fs::read(built_plugins().join(format!("{built}.wasm"))).expect("read");
                env.overwrite("test-version.wasm", &bytes);
            } else {
                env.deploy(built, "test-version.wasm");
            }
            daemon.wait_log(&["plugin reloaded"], i + 1, LONG);
        }
        // A bad file mid-load changes nothing: each is rejected with one
        // line, and the last good version (1.0.0) keeps serving.
        let bad: [(&str, Vec<u8>); 3] = [
            ("not a WebAssembly component", b"not wasm at all".to_vec()),
            (
                "exports neither",
                std::fs::read(built_plugins().join("test-not-a-plugin.wasm")).expect("read"),
            ),
            (
                "describe() failed",
                std::fs::read(built_plugins().join("test-describe-panic.wasm")).expect("read"),
            ),
        ];
        for (n, (reason, bytes)) in bad.iter().enumerate() {
            env.overwrite("test-version.wasm", bytes);
            daemon.wait_log(&["plugin file rejected", reason], 1, LONG);
            assert_eq!(
                daemon.log_lines(&["plugin file rejected"]).len(),
                n + 1,
                "one line per bad file"
            );
        }
        let view = env.sluice(&["plugins"]);
        let stderr = String::from_utf8_lossy(&view.stderr);
        assert!(!view.status.success(), "a rejected file fails the listing");
        assert!(
            stderr.contains("describe() failed")
                && stderr.contains("still serving test-version 1.0.0"),
            "{stderr}"
        );
        assert!(
            String::from_utf8_lossy(&view.stdout).contains("1.0.0"),
            "{view:?}"
        );
        let more = posted.load(Ordering::Relaxed) + 20;
        crate::util::wait_until(LONG, || posted.load(Ordering::Relaxed) >= more);
        stop.store(true, Ordering::Relaxed);
    });

    let n = posted.load(Ordering::Relaxed);
    let jobs = env.wait_settled("test.version", n, Duration::from_secs(120));
    let mut ran = std::collections::BTreeMap::<String, usize>::new();
    for job in &jobs {
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.attempts, 1, "no retry: {job:?}");
        assert_eq!(job.last_error, None, "{job:?}");
        let (output, recorded) = versions(job);
        assert_eq!(output, recorded, "output matches the recorded version");
        let hash = hashes.iter().find(|(v, _)| *v == recorded).map(|(_, h)| h);
        assert_eq!(job.plugin_hash.as_ref(), hash, "{job:?}");
        *ran.entry(recorded).or_default() += 1;
    }
    assert_eq!(ran.len(), 2, "both versions ran jobs: {ran:?}");
    assert_eq!(
        pumps_started(&daemon, "test.version"),
        1,
        "one pump, never restarted"
    );
    assert!(daemon.log_lines(&["pump stopped"]).is_empty());

    // Swap latency, file written -> new version serving, as the daemon
    // measured it (mtime of the file to the swap). Reported, not asserted.
    let mut latency: Vec<u64> = daemon
        .log_lines(&["plugin reloaded"])
        .iter()
        .filter_map(|l| log_field(l, "since_write_ms")?.parse().ok())
        .collect();
    latency.sort_unstable();
    let mut load: Vec<f64> = daemon
        .log_lines(&["plugin reloaded"])
        .iter()
        .filter_map(|l| log_field(l, "load_ms")?.parse().ok())
        .collect();
    load.sort_by(f64::total_cmp);
    eprintln!(
        "swap latency over {} swaps: median {} ms, max {} ms (of which loading: median {:.1} ms, \
         max {:.1} ms); {n} jobs, by version {ran:?}",
        latency.len(),
        latency.get(latency.len() / 2).copied().unwrap_or(0),
        latency.last().copied().unwrap_or(0),
        load.get(load.len() / 2).copied().unwrap_or(0.0),
        load.last().copied().unwrap_or(0.0),
    );
    assert!(daemon.stop(LONG).success());
}

#[test]
fn deleting_a_plugin_pauses_its_channel_and_putting_it_back_resumes_it() {
    let env = Env::new(&["test-counter"], FAST);
    env.deploy("test-version-1", "test-version.wasm");
    let daemon = start_watching(&env);
    for _ in 0..3 {
        env.post("test.counter", r#"{"amount": 1}"#);
    }
    env.wait_settled("test.counter", 3, LONG);

    std::fs::remove_file(env.plugins.join("test-counter.wasm")).expect("rm");
    daemon.wait_log(&["plugin file removed", "test-counter"], 1, LONG);
    daemon.wait_log(&["channel paused", "handler=test-counter"], 1, LONG);
    let paused: Vec<String> = (0..5)
        .map(|_| env.post("test.counter", r#"{"amount": 1}"#))
        .collect();
    // The daemon keeps working on other channels meanwhile...
    env.post("test.version", r#"{"seq": 1}"#);
    env.wait_settled("test.version", 1, LONG);
    // ... and the paused channel's messages stay queued.
    for id in &paused {
        assert_eq!(env.job(id).state, JobState::Queued, "{}", daemon.log_text());
    }
    let listing = env.ok(&["plugins", "--json"]);
    assert!(
        !listing.contains("test-counter") && listing.contains("test-version"),
        "{listing}"
    );

    env.deploy("test-counter", "test-counter.wasm");
    let jobs = env.wait_settled("test.counter", 8, LONG);
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded));
    assert_eq!(env.state("test-counter", "total"), Some("8".into()));
    assert_eq!(
        pumps_started(&daemon, "test.counter"),
        1,
        "resumed, not restarted"
    );
}

#[test]
fn a_new_version_that_drops_a_channel_stops_serving_it() {
    let env = Env::new(&[], FAST);
    env.deploy("test-version-1", "test-version.wasm");
    let daemon = start_watching(&env);
    let before = env.post("test.version.v1", r#"{"seq": 1}"#);
    env.wait_settled("test.version.v1", 1, LONG);
    assert_eq!(env.job(&before).state, JobState::Succeeded);
    // Version 2 serves test.version only.
    env.deploy("test-version-2", "test-version.wasm");
    daemon.wait_log(&["new version serving", "version=2.0.0"], 1, LONG);
    daemon.wait_log(&["channel paused", "channel=test.version.v1"], 1, LONG);
    let dropped = env.post("test.version.v1", r#"{"seq": 2}"#);
    let kept = env.post("test.version", r#"{"seq": 3}"#);
    env.wait_settled("test.version", 1, LONG);
    assert_eq!(env.job(&kept).plugin_version.as_deref(), Some("2.0.0"));
    // The dropped channel's message waits (nothing is lost) instead of
    // reaching a version that does not handle it: unrouted, not queued for
    // a handler that no longer lists the channel.
    let waiting = env.job(&dropped);
    assert_eq!(waiting.state, JobState::Queued, "{}", daemon.log_text());
    assert_eq!(waiting.consumer, "", "kept unrouted");
    // Version 1 back: it is served again.
    env.deploy("test-version-1", "test-version.wasm");
    let jobs = env.wait_settled("test.version.v1", 2, LONG);
    let job = jobs.iter().find(|j| j.id == dropped).expect("job");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.plugin_version.as_deref(), Some("1.0.0"));
}

#[test]
fn a_new_handler_gets_a_pump_without_restarting_the_others() {
    let env = Env::new(&["test-counter"], FAST);
    let daemon = start_watching(&env);
    // Posted before any handler of the channel is known: kept unrouted.
    let early = env.post("test.version", r#"{"seq": 1}"#);
    env.deploy("test-version-2", "test-version.wasm");
    daemon.wait_log(&["new subscription", "channel=test.version"], 1, LONG);
    let late = env.post("test.version", r#"{"seq": 2}"#);
    env.post("test.counter", r#"{"amount": 1}"#);
    env.wait_settled("test.version", 2, LONG);
    env.wait_settled("test.counter", 1, LONG);
    for id in [early, late] {
        let job = env.job(&id);
        assert_eq!(job.state, JobState::Succeeded, "{}", daemon.log_text());
        assert_eq!(job.plugin_version.as_deref(), Some("2.0.0"));
    }
    assert_eq!(pumps_started(&daemon, "test.version"), 1);
    assert_eq!(pumps_started(&daemon, "test.counter"), 1);
}

#[test]
fn a_plugin_name_claimed_by_two_files_serves_from_neither_until_one_goes() {
    let env = Env::new(&["test-counter"], FAST);
    // Both files say they are "test-version": neither may take the name
    // (and its state) from the other, whatever their names sort as.
    env.deploy("test-version-1", "b.wasm");
    env.deploy("test-version-2", "a.wasm");
    let id = env.post("test.version", r#"{"seq": 7}"#);
    let daemon = start_watching(&env);
    let out = env.sluice(&["plugins"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for (file, other) in [("a.wasm", "b.wasm"), ("b.wasm", "a.wasm")] {
        let line = err
            .lines()
            .find(|l| l.contains(file) && l.contains("is also declared by"))
            .unwrap_or_else(|| panic!("no conflict line for {file}: {err}"));
        assert!(line.contains(other), "{line}");
    }
    // The check of a fresh load agrees with the running daemon.
    let check = env.sluice(&["plugins", "--check"]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("is also declared by"));
    // The name's messages stay queued; other channels are served.
    let counted = env.post("test.counter", r#"{"amount": 1}"#);
    env.wait_settled("test.counter", 1, LONG);
    assert_eq!(env.job(&counted).state, JobState::Succeeded);
    assert_eq!(
        env.job(&id).state,
        JobState::Queued,
        "{}",
        daemon.log_text()
    );

    // Removing one file lets the other serve, without a rescan request.
    std::fs::remove_file(env.plugins.join("a.wasm")).expect("rm");
    daemon.wait_log(&["plugin file removed", "a.wasm"], 1, LONG);
    env.wait_settled("test.version", 1, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
    assert_eq!(env.job(&id).plugin_version.as_deref(), Some("1.0.0"));
    let listing = env.ok(&["plugins"]);
    assert!(
        listing.contains("b.wasm") && listing.contains("1.0.0"),
        "{listing}"
    );

    // A second file taking the name while it serves stops both again.
    env.deploy("test-version-2", "c.wasm");
    daemon.wait_log(&["plugin not served", "c.wasm"], 1, LONG);
    let late = env.post("test.version", r#"{"seq": 8}"#);
    std::fs::remove_file(env.plugins.join("c.wasm")).expect("rm");
    daemon.wait_log(&["plugin file removed", "c.wasm"], 1, LONG);
    env.wait_settled("test.version", 2, LONG);
    assert_eq!(env.job(&late).plugin_version.as_deref(), Some("1.0.0"));

    // A SIGHUP with nothing to do changes nothing and stops nothing.
    daemon.signal("HUP");
    daemon.wait_log(&["rescan done: nothing changed"], 1, LONG);
    assert_eq!(pumps_started(&daemon, "test.version"), 1);
    assert!(daemon.stop(LONG).success());
}

#[test]
fn a_restart_loads_unchanged_plugins_from_the_compile_cache() {
    let env = Env::new(&["test-counter", "test-flaky"], FAST);
    let loaded = |daemon: &Daemon| {
        daemon.wait_log(&["plugins directory loaded"], 1, LONG);
        let line = daemon.log_lines(&["plugins directory loaded"]).remove(0);
        let field = |f: &str| log_field(&line, f).and_then(|v| v.parse::<u32>().ok());
        (field("compiled"), field("from_cache"))
    };
    let first = env.start();
    assert_eq!(loaded(&first), (Some(2), Some(0)), "{}", first.log_text());
    assert!(first.stop(LONG).success());
    let cache = env.data.join("cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");

    let second = env.start();
    assert_eq!(loaded(&second), (Some(0), Some(2)), "{}", second.log_text());
    assert!(second.stop(LONG).success());

    // A damaged entry is not used: that plugin is compiled again, and works.
    let hash = sha256_of("test-counter");
    let entry = entries
        .iter()
        .find(|p| p.to_string_lossy().contains(&hash))
        .expect("test-counter's entry");
    let mut bytes = std::fs::read(entry).expect("read entry");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(entry, &bytes).expect("damage entry");
    let third = env.start();
    assert_eq!(loaded(&third), (Some(1), Some(1)), "{}", third.log_text());
    assert_eq!(
        third.log_lines(&["compile cache entry unusable"]).len(),
        1,
        "{}",
        third.log_text()
    );
    let id = env.post("test.counter", r#"{"amount": 3}"#);
    env.wait_settled("test.counter", 1, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
}

/// Sets its flag when dropped (also while unwinding from a panic).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
