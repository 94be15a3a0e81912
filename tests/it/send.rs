//! `sluice send`: a plugin tried by hand, in process, without a daemon;
//! nothing is queued, committed or created.

use serde_json::Value;

use crate::util::{Env, FAST, built_plugins};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn send_runs_the_handler_and_prints_its_effects_as_json_without_committing() {
    let env = Env::new(&["test-counter"], FAST);
    let out = env.ok(&["send", "test.counter", r#"{"amount": 5}"#, "--json"]);
    let v = json_lines(&out);
    assert_eq!(v.len(), 1, "{out}");
    let v = &v[0];
    assert_eq!(v["handler"], "test-counter");
    assert_eq!(v["outcome"]["done"]["total"], 5);
    assert_eq!(v["effects"]["posts"][0]["channel"], "test.counted");
    assert_eq!(v["effects"]["state_writes"]["total"], "5");
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
    // Nothing was created: no data dir, so no queue and no state.
    assert!(!env.data.exists(), "send created {}", env.data.display());
}

#[test]
fn send_prints_a_table_of_the_outcome_posts_and_state_writes() {
    let env = Env::new(&["test-counter"], FAST);
    let out = env.ok(&["send", "test.counter", r#"{"amount": 7}"#]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "test-counter 0.1.0: done", "{out}");
    assert!(lines[1].contains(" fuel"), "{out}");
    assert!(out.contains(r#"result: {"total":7}"#), "{out}");
    let post_header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("POST TO"))
        .unwrap_or_else(|| panic!("no posts table:\n{out}"));
    let row = lines[post_header + 1];
    assert!(
        row.contains("test.counted") && row.contains("command") && row.contains("at commit"),
        "{out}"
    );
    assert!(row.contains(r#""amount":7"#), "{out}");
    // The causation header is on every post; the table leaves it out.
    assert!(!out.contains("sluice-causation-id"), "{out}");
    let state_header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("STATE KEY"))
        .unwrap_or_else(|| panic!("no state table:\n{out}"));
    let row: Vec<&str> = lines[state_header + 1].split_whitespace().collect();
    assert_eq!(row, ["total", "7"], "{out}");
}

#[test]
fn a_failing_handler_is_reported_with_its_kind_and_a_nonzero_exit() {
    let env = Env::new(&["test-flaky"], FAST);
    let out = env.sluice(&["send", "test.flaky", r#"{"permanent": true}"#]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("test-flaky 0.1.0: FAILED: permanent error: asked to fail"),
        "{stdout}"
    );
    assert!(stdout.contains("dead-lettered at once"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 handler call failed"));

    let out = env.sluice(&["send", "test.flaky", r#"{"fail_times": 1}"#, "--json"]);
    assert!(!out.status.success());
    let v = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v[0]["error_kind"], "retryable");
    assert!(
        v[0].get("effects").is_none(),
        "a failed call has no effects"
    );
    // The same message on its second attempt succeeds.
    let out = env.ok(&[
        "send",
        "test.flaky",
        r#"{"fail_times": 1}"#,
        "--attempt",
        "2",
        "--json",
    ]);
    assert_eq!(json_lines(&out)[0]["outcome"]["done"]["attempt"], 2);
}

#[test]
fn an_event_runs_every_handler_of_its_channel_one_json_line_each() {
    let env = Env::new(&["test-counter", "test-flaky"], FAST);
    let out = env.ok(&[
        "send",
        "test.fanout",
        r#"{"amount": 2}"#,
        "--kind",
        "event",
        "--json",
    ]);
    let mut handlers: Vec<String> = json_lines(&out)
        .iter()
        .map(|v| v["handler"].as_str().unwrap().to_owned())
        .collect();
    handlers.sort();
    assert_eq!(handlers, ["test-counter", "test-flaky"]);
}

#[test]
fn send_loads_only_the_plugin_files_it_is_given() {
    // An empty plugins dir: the file comes from --plugin.
    let env = Env::new(&[], FAST);
    let file = built_plugins().join("test-counter.wasm");
    let file = file.to_str().unwrap();
    let out = env.ok(&[
        "send",
        "test.counter",
        r#"{"amount": 1}"#,
        "--plugin",
        file,
        "--json",
    ]);
    assert_eq!(json_lines(&out)[0]["handler"], "test-counter");
    // A channel the file does not serve says which ones it does.
    let out = env.sluice(&["send", "nope", "{}", "--plugin", file]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"no handler for channel "nope""#) && err.contains("test.counter"),
        "{err}"
    );
    // A file that is not a plugin is named with the reason.
    let bogus = env.dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm").unwrap();
    let out = env.sluice(&["send", "x", "{}", "--plugin", bogus.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus.wasm"), "{err}");
}

#[test]
fn bodies_the_mapper_rejects_and_bad_headers_are_clear_errors() {
    let env = Env::new(&["task-reminder-mapper", "task-reminder"], FAST);
    let out = env.sluice(&["send", "task.reminder", "not json\nat all"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rejected by mapper task-reminder-mapper"),
        "{err}"
    );
    let out = env.sluice(&["send", "task.reminder", "{}", "--header", "novalue"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not KEY=VALUE"));
}
