//! `sluice new`: the generated projects build with the one documented
//! command, pass their own unit tests and run in a real daemon, from a temp
//! dir outside this repository, with plain cargo (and componentize-py)
//! commands.
//!
//! Build times: the Rust projects share one target dir under the repo's
//! `target/` (`CARGO_TARGET_DIR`), so the second project and later runs
//! are incremental; a fresh checkout builds their dependencies once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::util::{Daemon, Env, FAST, repo_root};

fn sluice_new(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("new")
        .args(args)
        .current_dir(cwd)
        .env_remove("SLUICE_CONFIG")
        .output()
        .expect("run sluice new")
}

/// Runs `program args` in `dir`; panics with its output unless it succeeds.
fn run_in(dir: &Path, program: &str, args: &[&str], envs: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir);
    // What the outer `cargo test` exports must not leak into the user's build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn new_project(cwd: &Path, args: &[&str]) -> PathBuf {
    let out = sluice_new(cwd, args);
    assert!(
        out.status.success(),
        "sluice new {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cwd.join(args[0])
}

#[test]
fn new_rust_projects_build_test_and_run_in_a_daemon() {
    let outside = tempfile::tempdir().unwrap();
    assert!(!outside.path().starts_with(repo_root()));
    let handler = new_project(outside.path(), &["greeter", "--channel", "greetings"]);
    let mapper = new_project(
        outside.path(),
        &[
            "greeter-mapper",
            "--kind",
            "mapper",
            "--channel",
            "greetings",
        ],
    );
    let manifest = std::fs::read_to_string(handler.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("sluice-sdk = { path = "), "{manifest}");
    let target = repo_root().join("target/it-new-rust");
    let envs = [("CARGO_TARGET_DIR", target.as_path())];
    for project in [&handler, &mapper] {
        run_in(
            project,
            "cargo",
            &["build", "--release", "--target", "wasm32-wasip2"],
            &envs,
        );
        let tests = run_in(project, "cargo", &["test"], &envs);
        assert!(tests.contains("test result: ok. "), "{tests}");
    }

    let env = Env::new(&[], FAST);
    for name in ["greeter", "greeter_mapper"] {
        let built = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
        std::fs::copy(&built, env.plugins.join(format!("{name}.wasm"))).unwrap();
    }
    // Tried by hand first: the mapper maps, the handler handles.
    let out = env.ok(&["send", "greetings", r#"{"name":"Ann"}"#, "--json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["outcome"]["done"]["greeting"], "hello Ann", "{v}");

    let good = env.post("greetings", r#"{"name":"Ann"}"#);
    let empty = env.post("greetings", r#"{"name":""}"#);
    let daemon = env.start();
    env.wait_settled("greetings", 2, Duration::from_secs(60));
    assert_the_templates_ran(&env, &daemon, &good, &empty, "greeter-mapper");
}

/// What the generated handler and mapper (either language) did with
/// `{"name":"Ann"}` (`good`) and an empty name (`empty`), once settled.
pub(crate) fn assert_the_templates_ran(
    env: &Env,
    daemon: &Daemon,
    good: &str,
    empty: &str,
    mapper: &str,
) {
    let job = env.job(good);
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "{:?}\n{}",
        job.last_error,
        daemon.log_text()
    );
    let result: Value = serde_json::from_str(job.result.as_deref().unwrap()).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"greeting": "hello Ann", "seen": 1})
    );
    assert_eq!(env.jobs("greetings.done").len(), 1);
    let job = env.job(empty);
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(
        job.last_error.as_deref(),
        Some(format!("rejected by mapper {mapper}: name is empty").as_str())
    );
}

#[test]
fn sluice_new_refuses_bad_names_and_existing_projects() {
    let outside = tempfile::tempdir().unwrap();
    for bad in ["2fast", "a.b", "a b", "ünï", "a\nb", "", &"x".repeat(65)] {
        let out = sluice_new(outside.path(), &[bad]);
        assert!(!out.status.success(), "{bad:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    let out = sluice_new(outside.path(), &["ok", "--channel", "a..b"]);
    assert!(!out.status.success());
    let out = sluice_new(outside.path(), &["ok", "--sdk", "/nonexistent/sdk"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no sluice-sdk crate"));
    // Nothing was left behind by the failures.
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    new_project(outside.path(), &["taken", "--lang", "python"]);
    let out = sluice_new(outside.path(), &["taken"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists and is not empty"));
    // A git URL is written as a git dependency, escaped as TOML.
    let dir = new_project(
        outside.path(),
        &["from-git", "--sdk", "https://example.com/sluice.git"],
    );
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"sluice-sdk = { git = "https://example.com/sluice.git" }"#));
}
