//! Flow control (issue 14, part A): message options producers set
//! (priority), per-key concurrency, rate limits.

use std::time::Duration;

use sluice::store::{JobRecord, JobState};

use crate::nats::NatsServer;
use crate::util::{Daemon, Env, wait_until};

#[test]
fn a_priority_is_checked_where_it_enters_and_carried_with_the_message() {
    let env = Env::new(&["test-spin"], "");
    for bad in [
        vec!["--priority", "10"],
        vec!["--priority", "high"],
        vec!["--header", "sluice-priority=x"],
        vec![
            "--header",
            "Sluice-Priority=1",
            "--header",
            "sluice-priority=2",
        ],
    ] {
        let mut args = vec!["post", "test.spin", "{}"];
        args.extend(bad.iter().copied());
        let out = env.sluice(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            err.contains("priority") && err.lines().count() <= 3,
            "{bad:?}: {err}"
        );
    }
    assert!(
        env.jobs("test.spin").is_empty(),
        "a refused post left a job"
    );
    let id = env.ok(&["post", "test.spin", "{}", "--priority", "7"]);
    let header = env.ok(&["post", "test.spin", "{}", "--header", "SLUICE-PRIORITY=3"]);
    // The flag wins over a header of the same name.
    let both = env.ok(&[
        "post",
        "test.spin",
        "{}",
        "--header",
        "sluice-priority=1",
        "--priority",
        "2",
    ]);
    for (id, want) in [(id, "7"), (header, "3"), (both, "2")] {
        let job = env.job(id.trim());
        let given: Vec<_> = job
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("sluice-priority"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(given, [want], "{:?}", job.headers);
    }
}

/// test-spin with its long-call ceiling, four at once, at most `per_key`
/// jobs of one tenant (`/tenant` in the body) at once.
fn keyed(per_key: u32, extra: &str) -> String {
    format!(
        r#"poll_interval = "20ms"
drain_timeout = "10s"
[plugin.test-spin]
fuel = 10_000_000_000_000
timeout = "120s"
concurrency = 4
concurrency_key = "/tenant"
per_key_concurrency = {per_key}
{extra}
"#
    )
}

pub(crate) fn bodies(n: usize, tenant: &str, millis: u64) -> String {
    (0..n)
        .map(|_| format!("{{\"millis\": {millis}, \"tenant\": \"{tenant}\"}}\n"))
        .collect()
}

pub(crate) fn post_lines(env: &Env, input: &str) -> Vec<String> {
    let out = env.sluice_stdin(&["post", "test.spin"], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Jobs of `tenant` that had started before Unix ms `t`.
fn started_before(jobs: &[JobRecord], tenant: &str, t: i64) -> usize {
    jobs.iter()
        .filter(|j| tenant_of(j) == tenant && j.started_at.is_some_and(|s| s < t))
        .count()
}

pub(crate) fn tenant_of(j: &JobRecord) -> String {
    serde_json::from_str::<serde_json::Value>(&j.body)
        .ok()
        .and_then(|v| v.get("tenant").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// The most jobs of `tenant` that ran at once, from their records.
fn most_at_once(jobs: &[JobRecord], tenant: &str) -> usize {
    let spans: Vec<(i64, i64)> = jobs
        .iter()
        .filter(|j| tenant_of(j) == tenant)
        .filter_map(|j| Some((j.started_at?, j.finished_at?)))
        .collect();
    spans
        .iter()
        .map(|(s, _)| spans.iter().filter(|(s2, f2)| s2 <= s && s < f2).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_flooding_tenant_delays_another_by_a_few_of_its_own_jobs_and_never_runs_over_its_limit() {
    let env = Env::new(&["test-spin"], &keyed(2, ""));
    // The flood is queued first: in queue order the quiet tenant is last.
    let flood = post_lines(&env, &bodies(500, "flood", 4));
    let quiet = post_lines(&env, &bodies(5, "quiet", 4));
    assert_eq!((flood.len(), quiet.len()), (500, 5));
    let host = env.start();
    let jobs = env.wait_settled("test.spin", 505, Duration::from_secs(120));
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Succeeded && j.attempts == 1),
        "waiting cost no attempt and failed nothing\n{}",
        host.log_text()
    );
    for (i, id) in quiet.iter().enumerate() {
        let started = env.job(id).started_at.expect("started");
        let ahead = started_before(&jobs, "flood", started);
        // Two of each key at once: quiet job i waits for the quiet jobs
        // before it, while the flood runs two at a time. Queue order
        // would put 500 flood jobs ahead of each.
        assert!(
            ahead <= 2 * i + 6,
            "quiet job {i} started after {ahead} flood jobs"
        );
    }
    assert_eq!(most_at_once(&jobs, "flood"), 2);
    assert!(most_at_once(&jobs, "quiet") <= 2);
}

fn on_jetstream(nats: &NatsServer, per_key: u32) -> String {
    format!(
        "{}\n[nats]\nurl = \"{}\"\nack_wait = \"10s\"\n",
        keyed(per_key, ""),
        nats.url()
    )
}

/// Two hosts of test-spin under `cfg`, each running.
pub(crate) fn two_hosts(cfg: &str) -> ((Env, Daemon), (Env, Daemon)) {
    let (a, b) = (Env::new(&["test-spin"], cfg), Env::new(&["test-spin"], cfg));
    let (host_a, host_b) = (a.start(), b.start());
    for host in [&host_a, &host_b] {
        host.wait_log(&["sluice running"], 1, Duration::from_secs(60));
    }
    ((a, host_a), (b, host_b))
}

/// Every host's records, one per job: the one of the host that started
/// it (a host that turned a job back may also hold the final status it
/// took from the status board, with no start of its own).
pub(crate) fn records(envs: &[&Env]) -> Vec<JobRecord> {
    let mut by_id: std::collections::BTreeMap<String, JobRecord> = Default::default();
    for job in envs.iter().flat_map(|e| e.jobs("test.spin")) {
        let ran = |j: &JobRecord| j.started_at.is_some();
        match by_id.get(&job.id) {
            Some(seen) if ran(seen) && !(ran(&job) && job.updated_at > seen.updated_at) => {}
            _ => {
                by_id.insert(job.id.clone(), job);
            }
        }
    }
    by_id.into_values().collect()
}

/// How many of the jobs on `envs` (one record each, see `records`)
/// succeeded.
pub(crate) fn succeeded_on(envs: &[&Env]) -> usize {
    records(envs)
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .count()
}

#[test]
fn jetstream_two_hosts_hold_a_key_to_its_limit_and_serve_the_other_tenant_between() {
    let nats = NatsServer::start();
    let cfg = on_jetstream(&nats, 1);
    let ((a, host_a), (b, host_b)) = two_hosts(&cfg);
    assert_eq!(post_lines(&a, &bodies(200, "flood", 100)).len(), 200);
    assert_eq!(post_lines(&a, &bodies(5, "quiet", 100)).len(), 5);
    let quiet_done = || {
        records(&[&a, &b])
            .iter()
            .filter(|j| tenant_of(j) == "quiet" && j.state == JobState::Succeeded)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(120), || quiet_done() == 5),
        "{} of 5 quiet jobs done\nA:\n{}\nB:\n{}",
        quiet_done(),
        host_a.log_text(),
        host_b.log_text()
    );
    let jobs = records(&[&a, &b]);
    let ran: Vec<JobRecord> = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Succeeded | JobState::Running))
        .cloned()
        .collect();
    let mut quiet: Vec<i64> = ran
        .iter()
        .filter(|j| tenant_of(j) == "quiet" && j.state == JobState::Succeeded)
        .filter_map(|j| j.started_at)
        .collect();
    quiet.sort_unstable();
    assert_eq!(quiet.len(), 5, "{jobs:?}");
    for (i, started) in quiet.iter().enumerate() {
        let ahead = started_before(&ran, "flood", *started);
        // One flood job at a time across both hosts, and one quiet one;
        // a waiting job is offered again within 2 s, while the flood runs
        // one 100 ms job after the other. In queue order 200 flood jobs
        // would be ahead of each.
        assert!(
            ahead <= 30 + 10 * i,
            "quiet job {i} started after {ahead} flood jobs"
        );
    }
    let finished: Vec<JobRecord> = ran
        .into_iter()
        .filter(|j| j.state == JobState::Succeeded)
        .collect();
    assert_eq!(
        most_at_once(&finished, "flood"),
        1,
        "the limit holds across hosts"
    );
    assert_eq!(most_at_once(&finished, "quiet"), 1);
    let burnt: Vec<_> = finished
        .iter()
        .filter(|j| j.attempts != 1)
        .map(|j| (j.attempts, j.last_error.clone(), tenant_of(j)))
        .collect();
    assert!(
        burnt.is_empty(),
        "waiting costs no attempt: {burnt:?}\nA:\n{}",
        host_a.log_text()
    );
}

/// The most jobs whose start falls in one window of `window_ms`.
fn most_started_in(jobs: &[JobRecord], window_ms: i64) -> usize {
    let mut starts: Vec<i64> = jobs.iter().filter_map(|j| j.started_at).collect();
    starts.sort_unstable();
    (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|s| **s < starts[i] + window_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_rate_limit_lets_the_burst_through_then_its_rate() {
    let config = r#"poll_interval = "20ms"
[plugin.test-spin]
fuel = 10_000_000_000_000
timeout = "120s"
rate = "20/1s"
rate_burst = 5
"#;
    let env = Env::new(&["test-spin"], config);
    assert_eq!(post_lines(&env, &bodies(60, "t", 1)).len(), 60);
    let host = env.start();
    let jobs = env.wait_settled("test.spin", 60, Duration::from_secs(60));
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Succeeded && j.attempts == 1),
        "{}",
        host.log_text()
    );
    // A second holds at most the burst plus a second's worth (and one
    // for the edges of the window); a slow machine only starts fewer.
    let most = most_started_in(&jobs, 1000);
    assert!(most <= 5 + 20 + 1, "{most} jobs started within one second");
    // 55 past the burst at 20 a second take 2.75 s at the least.
    let starts: Vec<i64> = jobs.iter().filter_map(|j| j.started_at).collect();
    let span = starts.iter().max().unwrap_or(&0) - starts.iter().min().unwrap_or(&0);
    assert!(span >= 2_500, "60 jobs started within {span} ms");
}

pub(crate) fn spin_one_at_a_time() -> &'static str {
    r#"poll_interval = "20ms"
[plugin.test-spin]
fuel = 10_000_000_000_000
timeout = "120s"
concurrency = 1
"#
}

pub(crate) fn post_with_priority(env: &Env, n: usize, priority: &str) -> Vec<String> {
    let input: String = (0..n).map(|_| "{\"millis\": 1}\n").collect();
    let out = env.sluice_stdin(&["post", "test.spin", "--priority", priority], &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Start order of `ids` among every job's, 0-based. An id is a job's or
/// its message's (`sluice post` prints the message id on JetStream).
pub(crate) fn positions(jobs: &[JobRecord], ids: &[String]) -> Vec<usize> {
    let mut order: Vec<&JobRecord> = jobs.iter().collect();
    order.sort_by_key(|j| (j.started_at, j.id.clone()));
    ids.iter()
        .map(|id| {
            order
                .iter()
                .position(|j| &j.id == id || &j.message_id == id)
                .unwrap_or(usize::MAX)
        })
        .collect()
}

/// A steady supply of urgent work does not starve the old jobs: 10 jobs
/// at 0, then 60 at 9, one at a time on `env`; an old one starts before
/// the last urgent one. The same bound on the embedded queue and on
/// JetStream.
pub(crate) fn assert_old_jobs_not_starved(env: &Env) {
    let old = post_with_priority(env, 10, "0");
    let urgent = post_with_priority(env, 60, "9");
    let host = env.start();
    let jobs = env.wait_settled("test.spin", 70, Duration::from_secs(60));
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{}",
        host.log_text()
    );
    let last_urgent = positions(&jobs, &urgent).into_iter().max().unwrap_or(0);
    let first_old = positions(&jobs, &old)
        .into_iter()
        .min()
        .unwrap_or(usize::MAX);
    assert!(
        first_old < last_urgent,
        "the oldest job waited for all 60 urgent ones (first at {first_old} of {last_urgent})"
    );
}

#[test]
fn urgent_jobs_run_first_and_the_oldest_still_get_a_share() {
    let env = Env::new(&["test-spin"], spin_one_at_a_time());
    assert_eq!(post_with_priority(&env, 50, "0").len(), 50);
    let high = post_with_priority(&env, 10, "9");
    let host = env.start();
    let jobs = env.wait_settled("test.spin", 60, Duration::from_secs(60));
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{}",
        host.log_text()
    );
    // One at a time: three claims in four go to priority, so the ten
    // urgent jobs, posted last, are done within the first 26 starts (the
    // odds of 16 queue-order claims first are below one in a million).
    let urgent = positions(&jobs, &high);
    assert!(urgent.iter().all(|p| *p < 26), "{urgent:?}");
    drop(host);

    assert_old_jobs_not_starved(&Env::new(&["test-spin"], spin_one_at_a_time()));
}

#[test]
fn jetstream_a_rate_limit_holds_across_two_hosts() {
    let nats = NatsServer::start();
    let cfg = format!(
        r#"poll_interval = "20ms"
[plugin.test-spin]
fuel = 10_000_000_000_000
timeout = "120s"
rate = "10/1s"
rate_burst = 3
[nats]
url = "{}"
ack_wait = "10s"
"#,
        nats.url()
    );
    let ((a, host_a), (b, host_b)) = two_hosts(&cfg);
    assert_eq!(post_lines(&a, &bodies(40, "t", 1)).len(), 40);
    let done = || {
        records(&[&a, &b])
            .iter()
            .filter(|j| j.state == JobState::Succeeded && j.started_at.is_some())
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(120), || done() == 40),
        "{} of 40\nA:\n{}\nB:\n{}",
        done(),
        host_a.log_text(),
        host_b.log_text()
    );
    let jobs: Vec<JobRecord> = records(&[&a, &b])
        .into_iter()
        .filter(|j| j.started_at.is_some())
        .collect();
    // One bucket for both hosts: a second holds at most the burst plus a
    // second's worth (one more for the window's edges); two buckets would
    // start twice that.
    let most = most_started_in(&jobs, 1000);
    assert!(most <= 3 + 10 + 1, "{most} jobs started within one second");
    let starts: Vec<i64> = jobs.iter().filter_map(|j| j.started_at).collect();
    let span = starts.iter().max().unwrap_or(&0) - starts.iter().min().unwrap_or(&0);
    assert!(
        span >= 3_000,
        "40 jobs started within {span} ms (37 past the burst at 10/s)"
    );
    // Waiting for a token costs no attempt, on either host.
    let burnt: Vec<_> = jobs
        .iter()
        .filter(|j| j.state != JobState::Succeeded || j.attempts != 1)
        .map(|j| (j.id.clone(), j.state, j.attempts, j.last_error.clone()))
        .collect();
    assert!(
        burnt.is_empty(),
        "waiting costs no attempt: {burnt:?}\nA:\n{}\nB:\n{}",
        host_a.log_text(),
        host_b.log_text()
    );
}

#[test]
fn a_job_over_its_keys_limit_says_why_it_waits_in_the_cli_the_api_and_metrics() {
    let addr = format!("127.0.0.1:{}", crate::util::free_port());
    let env = Env::new(
        &["test-spin"],
        &keyed(1, &format!("[http]\naddr = \"{addr}\"\n")),
    );
    let host = env.start();
    let api = crate::api::Api::new(&addr, None);
    api.wait_up(&host);
    let tenant = "a.b c\u{e9}";
    let body = |ms: u64| format!("{{\"millis\": {ms}, \"tenant\": \"{tenant}\"}}");
    // The first job runs until cancelled below, so the second waits for
    // as long as the checks take, however loaded the machine is.
    let first = env.post("test.spin", &body(600_000));
    assert!(wait_until(Duration::from_secs(30), || env
        .job(&first)
        .state
        == JobState::Running));
    let second = env.post("test.spin", &body(1));
    let want = format!("waiting: concurrency {tenant}");
    let shown = |id: &str| api.get(&format!("/v1/jobs/{id}")).json()["waiting"].clone();
    assert!(
        wait_until(Duration::from_secs(30), || shown(&second) == want.as_str()),
        "{:?}\n{}",
        shown(&second),
        host.log_text()
    );
    assert_eq!(
        shown(&first),
        serde_json::Value::Null,
        "a running job waits for nothing"
    );
    let cli = env.ok(&["job", &second]);
    assert!(cli.contains(&format!("queued ({want})")), "{cli}");
    // The gauge counts what the gate's last pick held back, so it can lag
    // the post by a pick (a wake, or the 2 s rescan).
    let gauge =
        "sluice_jobs_waiting{channel=\"test.spin\",handler=\"test-spin\",reason=\"concurrency\"} 1";
    assert!(
        wait_until(Duration::from_secs(30), || api
            .get("/metrics")
            .text
            .contains(gauge)),
        "{}",
        api.get("/metrics").text
    );
    let cancel = api.delete(&format!("/v1/jobs/{first}"));
    assert!([200, 202].contains(&cancel.status), "{}", cancel.text);
    env.wait_settled("test.spin", 2, Duration::from_secs(60));
    assert_eq!(env.job(&first).state, JobState::Cancelled);
    let second = env.job(&second);
    assert_eq!(
        (second.state, second.attempts),
        (JobState::Succeeded, 1),
        "the waiting job ran once its key was free, waiting cost no attempt"
    );
}
