//! The dashboard in a real headless Chromium against the real daemon:
//! pages render with real jobs, a replay and a pause clicked in the page
//! take effect in the daemon, values plugins and clients control are shown
//! as text (never run as HTML), and the page works under a token.
//! Screenshots go to `target/dashboard-screenshots/`.

use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::api::{Api, http_config};
use crate::browser::{Browser, screenshot_dir};
use crate::util::{Env, wait_until};

const TOKEN: &str = "s3cret-dashboard-token";

/// A cron entry that fires at 02:00 in Paris: the overview lists it with
/// its next fire time.
const CRON: &str = r#"
[[cron]]
name = "nightly-report"
schedule = "0 2 * * *"
time_zone = "Europe/Paris"
channel = "test.flaky"
body = "{}"
"#;

/// A daemon with a token, test-flaky, the task-reminder pair and
/// test-counter at one job an hour, a cron entry, and some history: jobs
/// that succeeded, a retried one, a permanent failure (dead), a message
/// whose body holds markup that the mapper rejects, and a counter job held
/// by the rate limit (its id is returned).
fn world() -> (Env, crate::util::Daemon, Api, String, String) {
    let (config, addr) = http_config(&format!(
        "token = \"{TOKEN}\"\n[plugin.test-counter]\nrate = \"1/1h\"\n{CRON}"
    ));
    let env = Env::new(
        &[
            "test-flaky",
            "task-reminder",
            "task-reminder-mapper",
            "test-counter",
        ],
        &config,
    );
    let daemon = env.start();
    let api = Api::new(&addr, Some(TOKEN));
    api.wait_up(&daemon);
    for i in 0..12 {
        api.post_job("test.flaky", &format!("{{\"fail_times\": {}}}", i % 4 / 3));
    }
    api.post_job(
        "task.reminder",
        r#"{"task":"Pay rent","due":"2026-12-01T09:00:00Z","recipient":"ann@example.com"}"#,
    );
    api.post_job("test.flaky", r#"{"permanent": true}"#);
    api.post_job(
        "task.reminder",
        r#"{"task":"<img src=x id=pwned onerror=\"document.title='pwned'\">","recipient":"<b>x</b>"}"#,
    );
    let ok = wait_until(Duration::from_secs(60), || {
        let dead = api.get("/v1/dead-letters").json();
        dead["jobs"].as_array().map_or(0, Vec::len) == 2
            && env
                .jobs("test.flaky")
                .iter()
                .all(|j| crate::util::is_final(j.state))
    });
    assert!(ok, "history did not settle; log:\n{}", daemon.log_text());
    // The first counter job takes the hour's one start; the second waits.
    api.post_job("test.counter", r#"{"amount": 1}"#);
    let held = api.post_job("test.counter", r#"{"amount": 2}"#);
    let ok = wait_until(Duration::from_secs(30), || {
        api.get(&format!("/v1/jobs/{held}")).json()["waiting"] == "waiting: rate limit"
    });
    assert!(
        ok,
        "the second counter job is not held; log:\n{}",
        daemon.log_text()
    );
    (env, daemon, api, addr, held)
}

fn dead_ids(api: &Api, channel: &str) -> Vec<String> {
    let dead = api
        .get(&format!("/v1/dead-letters?channel={channel}"))
        .json();
    dead["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Clicks a button that asks for a second click (`confirmButton` in
/// app.js), waits for it to arm, and clicks it again.
fn confirm_click(b: &mut Browser, selector: &str) {
    b.click(selector);
    b.wait_for(
        &format!("document.querySelector('{selector}.armed') !== null"),
        Duration::from_secs(5),
    );
    b.click(&format!("{selector}.armed"));
}

#[test]
fn dashboard_renders_real_data_and_its_replay_and_pause_clicks_work() {
    let (env, daemon, api, addr, held) = world();
    let shots = screenshot_dir();
    let mut b = Browser::launch();
    let base = format!("http://{addr}/");

    // Without the token the page asks for it and shows no data.
    b.goto(&base);
    b.wait_for(
        "document.getElementById('main').dataset.page === 'login'",
        Duration::from_secs(20),
    );
    assert!(b.text().contains("Sign in"), "{}", b.text());
    b.screenshot(&shots.join("login.png"));

    // The token typed into the form opens the overview.
    b.eval(&format!(
        "document.getElementById('token').value = {TOKEN:?}; document.querySelector('form.login button').click(); 1"
    ));
    b.wait_for(
        "document.getElementById('main').dataset.page === 'overview'",
        Duration::from_secs(20),
    );
    let text = b.text();
    for expected in [
        "Overview",
        "test.flaky",
        "task.reminder",
        "Dead letters",
        "serving",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    // The plots are SVG with a line for the work done.
    b.wait_for(
        "document.querySelectorAll('svg.chart path.done').length === 1",
        Duration::from_secs(10),
    );
    // Flow state: the channel's held job, and the cron entry's next fire.
    b.wait_for(
        "document.querySelector('tr[data-channel=\"test.counter\"] .held')?.textContent === '1'",
        Duration::from_secs(20),
    );
    b.wait_for(
        "document.querySelector('tr[data-cron=\"nightly-report\"] td.next')?.textContent.startsWith('in ')",
        Duration::from_secs(10),
    );
    b.screenshot(&shots.join("overview.png"));

    // Jobs, filtered by state through the page's own select.
    b.goto(&format!("{base}#/jobs?state=succeeded"));
    b.wait_for(
        "document.querySelectorAll('tr[data-job]').length >= 12",
        Duration::from_secs(20),
    );
    assert!(
        b.eval("[...document.querySelectorAll('tr[data-job] .badge')].every(e => e.textContent === 'succeeded')")
            == Value::Bool(true)
    );
    b.screenshot(&shots.join("jobs.png"));

    // The poison message's page: the markup is text, not elements.
    let poison = dead_ids(&api, "task.reminder");
    assert_eq!(poison.len(), 1);
    b.goto(&format!("{base}#/jobs/{}", poison[0]));
    b.wait_for(
        "document.querySelector('pre.body') !== null",
        Duration::from_secs(20),
    );
    assert!(b.text().contains("<img src=x id=pwned"), "{}", b.text());
    assert_eq!(
        b.eval("document.getElementById('pwned') === null"),
        Value::Bool(true)
    );
    assert_ne!(b.eval("document.title"), Value::from("pwned"));
    assert!(b.text().contains("rejected by mapper"), "{}", b.text());

    // A held job's page says why it has not started.
    b.goto(&format!("{base}#/jobs/{held}"));
    b.wait_for(
        "document.querySelector('.panel.waiting')?.innerText.includes('rate limit')",
        Duration::from_secs(20),
    );
    b.screenshot(&shots.join("job-held.png"));
    // Its Cancel button asks for a second click, then cancels it.
    confirm_click(&mut b, "button.cancel");
    let ok = wait_until(Duration::from_secs(20), || {
        env.job(&held).state == JobState::Cancelled
    });
    assert!(ok, "the Cancel clicks did not cancel {held}");

    // A job that posted: its page lists the message it posted.
    let reminder = env
        .jobs("task.reminder")
        .into_iter()
        .find(|j| j.state == JobState::Succeeded)
        .expect("a reminder succeeded");
    b.goto(&format!("{base}#/jobs/{}", reminder.id));
    b.wait_for(
        "document.body.innerText.includes('task.reminder.sent')",
        Duration::from_secs(20),
    );
    assert!(b.text().contains("Plugin hash"), "{}", b.text());
    b.screenshot(&shots.join("job.png"));

    // Replay a dead letter by clicking its button.
    let dead = dead_ids(&api, "test.flaky");
    assert_eq!(dead.len(), 1);
    b.goto(&format!("{base}#/dead?channel=test.flaky"));
    b.wait_for(
        &format!(
            "document.querySelector('tr[data-job=\"{}\"] button.replay') !== null",
            dead[0]
        ),
        Duration::from_secs(20),
    );
    b.screenshot(&shots.join("dead-letters.png"));
    b.click(&format!("tr[data-job=\"{}\"] button.replay", dead[0]));
    // The daemon replayed it (it fails permanently again, so it ends dead
    // with one replay recorded).
    let ok = wait_until(Duration::from_secs(30), || env.job(&dead[0]).replays == 1);
    assert!(
        ok,
        "the click did not replay {}; log:\n{}",
        dead[0],
        daemon.log_text()
    );
    b.wait_for(
        "document.getElementById('toast').innerText.includes('Replayed')",
        Duration::from_secs(10),
    );

    // Pause a channel by clicking, see its messages stay queued, resume.
    b.goto(&format!("{base}#/channels"));
    b.wait_for(
        "document.querySelector('tr[data-channel=\"test.flaky\"] button.pause') !== null",
        Duration::from_secs(20),
    );
    b.click("tr[data-channel=\"test.flaky\"] button.pause");
    let paused = || {
        api.get("/v1/channels").json()["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .any(|c| c["channel"] == "test.flaky" && c["paused"] == true)
    };
    assert!(wait_until(Duration::from_secs(20), paused), "not paused");
    let held = api.post_job("test.flaky", "{}");
    b.wait_for(
        "document.querySelector('tr[data-channel=\"test.flaky\"] .st-paused') !== null",
        Duration::from_secs(20),
    );
    b.screenshot(&shots.join("channels-paused.png"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.job(&held).state,
        JobState::Queued,
        "paused: stays queued"
    );
    b.click("tr[data-channel=\"test.flaky\"] button.resume");
    let ok = wait_until(Duration::from_secs(30), || {
        env.job(&held).state == JobState::Succeeded
    });
    assert!(ok, "resume did not run the held job");

    // Plugins: versions, hashes and limits.
    b.goto(&format!("{base}#/plugins"));
    b.wait_for(
        "document.body.innerText.includes('task-reminder-mapper')",
        Duration::from_secs(20),
    );
    b.screenshot(&shots.join("plugins.png"));

    // Replay all (two clicks): both dead letters go round again and end
    // dead once more, each with one more replay.
    b.goto(&format!("{base}#/dead"));
    b.wait_for(
        "document.querySelectorAll('tr[data-job] button.replay').length === 2",
        Duration::from_secs(20),
    );
    confirm_click(&mut b, "button.replay-all");
    let ok = wait_until(Duration::from_secs(30), || {
        env.job(&dead[0]).replays == 2
            && env.job(&poison[0]).replays == 1
            && api.get("/v1/dead-letters").json()["jobs"]
                .as_array()
                .map_or(0, Vec::len)
                == 2
    });
    assert!(
        ok,
        "Replay all did not replay both; log:\n{}",
        daemon.log_text()
    );
}

#[test]
fn dashboard_assets_are_public_strict_and_its_data_is_not() {
    let (config, addr) = http_config(&format!("token = \"{TOKEN}\""));
    let env = Env::new(&["test-flaky"], &config);
    let daemon = env.start();
    let anonymous = Api::new(&addr, None);
    anonymous.wait_up(&daemon);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = agent
            .get(format!("http://{addr}{path}"))
            .call()
            .expect("asset");
        assert_eq!(r.status(), 200, "{path}");
        let header = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
    }
    // No script of the page writes HTML from data.
    let js = agent
        .get(format!("http://{addr}/ui/app.js"))
        .call()
        .expect("js")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(!js.contains("innerHTML") && !js.contains("insertAdjacentHTML"));
    // The data needs the token.
    for path in [
        "/v1/dashboard/overview",
        "/v1/dashboard/channels",
        "/v1/dashboard/jobs/x",
    ] {
        assert_eq!(anonymous.get(path).status, 401, "{path}");
    }
    let api = Api::new(&addr, Some(TOKEN));
    assert_eq!(api.get("/v1/dashboard/jobs/nope").status, 404);
    assert_eq!(api.get("/v1/dashboard/overview?minutes=0").status, 400);
    assert_eq!(api.get("/v1/dashboard/overview?minutes=61").status, 400);
    assert_eq!(api.get("/v1/dashboard/overview?bogus=1").status, 400);
    let o = api.get("/v1/dashboard/overview").json();
    assert_eq!(o["transport"], "embedded");
    assert_eq!(o["channels"][0]["handlers"][0], "test-flaky");
    let names = api.get("/v1/dashboard/channels").json();
    assert_eq!(
        names,
        serde_json::json!({"channels": ["test.fanout", "test.flaky"], "more_channels": false})
    );
}

/// Without a token the API refuses cross-site requests (`api/guard.rs`);
/// the dashboard's own requests (same origin, JSON) still work.
#[test]
fn dashboard_works_without_a_token_under_the_same_site_guard() {
    let (config, addr) = http_config("");
    let env = Env::new(&["test-flaky"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let mut b = Browser::launch();
    b.goto(&format!("http://{addr}/#/channels"));
    b.wait_for(
        "document.querySelector('tr[data-channel=\"test.flaky\"] button.pause') !== null",
        Duration::from_secs(20),
    );
    b.click("tr[data-channel=\"test.flaky\"] button.pause");
    let paused = wait_until(Duration::from_secs(20), || {
        api.get("/v1/channels").json()["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .any(|c| c["channel"] == "test.flaky" && c["paused"] == true)
    });
    assert!(paused, "the click did not pause; page:\n{}", b.text());
    b.wait_for(
        "document.querySelector('tr[data-channel=\"test.flaky\"] button.resume') !== null",
        Duration::from_secs(20),
    );
}
