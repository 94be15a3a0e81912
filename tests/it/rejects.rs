//! Bad input gets one clear error line and a non-zero exit.

use crate::util::{Env, FAST};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_file_with_an_unknown_key_is_a_clear_error() {
    let env = Env::new(&[], "[policy]\nmax_attempt = 3\n");
    let out = env.sluice(&["run"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: config file "), "{err}");
    assert!(err.contains("unknown field `max_attempt`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn a_config_value_out_of_range_is_a_clear_error() {
    let env = Env::new(&[], "[plugin.x]\nconcurrency = 0\n");
    let out = env.sluice(&["plugins"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("[plugin.x]: concurrency must be between 1 and"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_wasm_files_are_rejected_with_the_file_and_the_reason() {
    let env = Env::new(
        &["test-counter", "test-not-a-plugin", "test-describe-panic"],
        FAST,
    );
    std::fs::write(env.plugins.join("garbage.wasm"), b"definitely not wasm").expect("write");
    let out = env.sluice(&["plugins"]);
    assert!(!out.status.success(), "exit non-zero when a file failed");
    let err = stderr(&out);
    let line = |name: &str| {
        err.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no error line for {name}: {err}"))
            .to_owned()
    };
    assert!(
        line("garbage.wasm").contains("not a WebAssembly component"),
        "{err}"
    );
    assert!(
        line("test-not-a-plugin.wasm").contains("exports neither"),
        "{err}"
    );
    assert!(
        line("test-describe-panic.wasm").contains("describe()"),
        "{err}"
    );
    // The good plugin is still listed.
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("test-counter") && listing.contains("test.counter"),
        "{listing}"
    );
}

#[test]
fn the_daemon_serves_good_plugins_when_one_file_is_bad() {
    let env = Env::new(&["test-counter"], FAST);
    std::fs::write(env.plugins.join("broken.wasm"), b"\0asm garbage").expect("write");
    let id = env.post("test.counter", r#"{"amount": 1}"#);
    let daemon = env.start();
    env.wait_settled("test.counter", 1, std::time::Duration::from_secs(30));
    assert_eq!(env.job(&id).state, sluice::store::JobState::Succeeded);
    assert!(
        daemon.log_text().contains("broken.wasm"),
        "the bad file is logged"
    );
}

#[test]
fn a_missing_plugins_directory_is_a_clear_error() {
    let env = Env::new(&[], FAST);
    std::fs::remove_dir_all(&env.plugins).expect("rm plugins dir");
    let out = env.sluice(&["plugins"]);
    assert!(!out.status.success());
    let want = format!("cannot read plugins directory {}", env.plugins.display());
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn malformed_cli_input_is_rejected() {
    let env = Env::new(&[], FAST);
    let out = env.sluice(&["post", "orders", "{not json"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
    let out = env.sluice(&["jobs"]);
    assert!(!out.status.success(), "no database yet");
    assert!(
        stderr(&out).contains("no sluice database"),
        "{}",
        stderr(&out)
    );
    let out = env.sluice_stdin(&["post", "orders"], "{\"a\":1}\nnope\n{\"a\":2}\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("stdin line 2 is not valid JSON"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.jobs("orders").len(),
        1,
        "the line before the bad one was queued"
    );
}

#[test]
fn a_bad_line_deep_in_a_pipelined_stdin_post_queues_exactly_the_lines_before_it() {
    // 2,500 lines are three chunks in flight at once; line 2,200 is bad.
    let env = Env::new(&[], FAST);
    let mut input: String = (1..=2500).map(|n| format!("{{\"n\": {n}}}\n")).collect();
    input = input.replacen("{\"n\": 2200}", "{\"n\": 2200", 1);
    let out = env.sluice_stdin(&["post", "orders", "--json"], &input);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("stdin line 2200 is not valid JSON"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("the lines before it were queued, nothing from it on"),
        "{}",
        stderr(&out)
    );
    // One JSON line per queued message, in input order, naming its line.
    let printed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let lines: Vec<u64> = printed
        .iter()
        .map(|v| v["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, (1..2200).collect::<Vec<u64>>());
    let jobs = env.jobs("orders");
    assert_eq!(jobs.len(), 2199, "exactly the lines before the bad one");
    let body_of: std::collections::HashMap<String, String> = jobs
        .into_iter()
        .map(|j| (j.id.clone(), j.body.clone()))
        .collect();
    for (v, line) in printed.iter().zip(1..) {
        let id = v["job_ids"][0].as_str().expect("a job id");
        assert_eq!(body_of[id], format!("{{\"n\": {line}}}"), "job {id}");
    }
}
