//! Python plugins end to end: the example in `plugins/py-invoice` (built by
//! scripts/build-plugins with componentize-py) and the projects
//! `sluice new --lang python` writes, built with the README's command from
//! a temp dir outside the repo, each run in a real daemon.
//!
//! A Python component holds CPython (about 18 MB): each daemon here
//! compiles its components once (seconds of CPU), hence few, broad tests.
//! While the rest of the suite runs on the same cores such a compile can
//! take minutes of wall time, past the default `compile_timeout` (60 s):
//! these daemons get a long one, and wait for their plugins to load (with
//! the log on failure) before they wait for jobs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Env, FAST, built_plugins, repo_root};

const LONG: Duration = Duration::from_secs(900);

/// FAST, with time for a CPython compile on a loaded machine.
fn config() -> String {
    format!("compile_timeout = \"30m\"\n{FAST}")
}

/// Starts the daemon and waits until it has loaded `n` plugins, none
/// rejected; panics with its log otherwise.
fn start_loaded(env: &Env, n: usize) -> crate::util::Daemon {
    let daemon = env.start();
    daemon.wait_log(&["plugins directory loaded"], 1, LONG);
    let line = daemon.log_lines(&["plugins directory loaded"]).remove(0);
    assert!(
        line.contains(&format!("loaded={n} ")) && line.contains("rejected=0 "),
        "{}",
        daemon.log_text()
    );
    daemon
}

#[test]
fn the_python_example_handles_retries_and_dead_letters() {
    let env = Env::new(&["py-invoice"], &config());
    let good = env.post(
        "invoice.create",
        r#"{"customer":"ann","lines":[{"sku":"a","quantity":2,"unit_cents":150},{"sku":"b","quantity":1,"unit_cents":5}]}"#,
    );
    let flaky = env.post(
        "invoice.create",
        r#"{"customer":"flaky","lines":[{"sku":"a","quantity":1,"unit_cents":1}]}"#,
    );
    let zero = env.post(
        "invoice.create",
        r#"{"customer":"bo","lines":[{"sku":"a","quantity":0,"unit_cents":1}]}"#,
    );
    let untyped = env.post(
        "invoice.create",
        r#"{"customer":"bo","lines":[{"sku":"a"}]}"#,
    );
    let daemon = start_loaded(&env, 1);
    env.wait_settled("invoice.create", 4, LONG);
    let job = env.job(&good);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{:?}\n{}",
        job.last_error,
        daemon.log_text()
    );
    let result: Value = serde_json::from_str(job.result.as_deref().unwrap()).unwrap();
    assert_eq!(result["total_cents"], 305);
    assert_eq!(job.progress, Some(100));
    let job = env.job(&flaky);
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Succeeded, 2),
        "retried once"
    );
    let job = env.job(&zero);
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Dead, 1),
        "permanent: not retried"
    );
    assert_eq!(
        job.last_error.as_deref(),
        Some("permanent error: line 0 (a): quantity must be at least 1")
    );
    let job = env.job(&untyped);
    assert_eq!(job.state, JobState::Dead);
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("request is not a valid Invoice: missing field `lines[0].quantity`"),
        "{:?}",
        job.last_error
    );
    // Two invoices were numbered, one event posted for each.
    assert_eq!(env.state("py-invoice", "last_number"), Some("2".into()));
    // ctx.state.add through the component's state-add import.
    assert_eq!(env.state("py-invoice", "revenue_cents"), Some("306".into()));
    let created = env.jobs("invoice.created");
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|j| j.kind == "event"));
    // The plugin's log line reached the daemon's log. Ann's invoice is
    // number 1 or 2: the jobs run concurrently, and flaky's second attempt
    // may number its invoice first.
    daemon.wait_log(&["sluice::plugin", " for ann: 305 EUR cents"], 1, LONG);
    let numbered: Vec<String> = daemon.log_lines(&["sluice::plugin", "invoice "]);
    assert!(
        numbered.iter().any(|l| l.contains("invoice 1 for "))
            && numbered.iter().any(|l| l.contains("invoice 2 for ")),
        "{numbered:#?}"
    );
}

fn run_in(dir: &Path, program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn new_python_projects_build_test_and_run_in_a_daemon() {
    // scripts/build-plugins (run by built_plugins) installs componentize-py.
    let _ = built_plugins();
    let componentize = repo_root().join("target/py-venv/bin/componentize-py");
    let outside = tempfile::tempdir().unwrap();
    let sluice = Path::new(env!("CARGO_BIN_EXE_sluice"));
    for (name, kind, world) in [
        ("hello", "handler", "handler-plugin"),
        ("hello-mapper", "mapper", "mapper-plugin"),
    ] {
        run_in(
            outside.path(),
            sluice,
            &[
                "new",
                name,
                "--lang",
                "python",
                "--kind",
                kind,
                "--channel",
                "greetings",
            ],
        );
        let project = outside.path().join(name);
        let tests = run_in(&project, Path::new("python3"), &["-m", "unittest"]);
        assert!(tests.contains("OK"), "{tests}");
        // The README's build command.
        let output = format!("{name}.wasm");
        run_in(
            &project,
            &componentize,
            &[
                "-d",
                "sluice_sdk/wit",
                "-w",
                world,
                "componentize",
                "app",
                "-o",
                &output,
            ],
        );
    }
    let env = Env::new(&[], &config());
    for name in ["hello", "hello-mapper"] {
        std::fs::copy(
            outside.path().join(name).join(format!("{name}.wasm")),
            env.plugins.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let good = env.post("greetings", r#"{"name":"Ann"}"#);
    let empty = env.post("greetings", r#"{"name":"  "}"#);
    let daemon = start_loaded(&env, 2);
    env.wait_settled("greetings", 2, LONG);
    crate::new::assert_the_templates_ran(&env, &daemon, &good, &empty, "hello-mapper");
}
