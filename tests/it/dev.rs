//! `sluice dev`: a generated project is built, run in a local daemon, and
//! rebuilt and hot-swapped on every change; a broken build keeps the last
//! good one serving.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice::store::{JobState, Store, StoreOptions};

use crate::util::{repo_root, wait_until};

const LONG: Duration = Duration::from_secs(300);

fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn wait_log(log: &Path, needle: &str, n: usize) {
    assert!(
        wait_until(LONG, || log_count(log, needle) >= n),
        "no {n} x {needle:?} in the dev log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn sluice_dev_rebuilds_and_swaps_on_every_change() {
    let outside = tempfile::tempdir().unwrap();
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let out = Command::new(sluice)
        .args(["new", "devloop"])
        .current_dir(outside.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = outside.path().join("devloop");
    let log = outside.path().join("dev.log");
    let mut child = Command::new(sluice)
        .arg("dev")
        .arg(&project)
        // Shares the build of tests/it/new.rs; plain cargo otherwise.
        .env("CARGO_TARGET_DIR", repo_root().join("target/it-new-rust"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("SLUICE_CONFIG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let data = project.join(".sluice/data");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let post = |body: &str| {
        let out = Command::new(sluice)
            .arg("--data")
            .arg(&data)
            .args(["post", "devloop", body])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let result_of = |id: &str| -> Value {
        let store = rt
            .block_on(async { Store::open(&data.join("sluice.db"), &StoreOptions::default()) })
            .unwrap();
        let mut job = None;
        assert!(wait_until(LONG, || {
            job = rt.block_on(store.job(id)).unwrap();
            job.as_ref().is_some_and(|j| j.state == JobState::Succeeded)
        }));
        serde_json::from_str(job.unwrap().result.as_deref().unwrap()).unwrap()
    };

    wait_log(&log, "deployed", 1);
    wait_log(&log, "watching the plugins directory", 1);
    let first = post(r#"{"name":"Ann"}"#);
    assert_eq!(result_of(&first)["greeting"], "hello Ann");
    // The job's outcome is printed.
    wait_log(&log, "outcome=\"succeeded\"", 1);

    // A change is rebuilt and swapped in; the next job runs the new code.
    let lib = project.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        code.replace("format!(\"hello {name}\")", "format!(\"hi {name}\")"),
    )
    .unwrap();
    wait_log(&log, "deployed", 2);
    wait_log(&log, "plugin reloaded", 1);
    let second = post(r#"{"name":"Bo"}"#);
    assert_eq!(result_of(&second)["greeting"], "hi Bo");

    // A broken build is reported and the last good one keeps serving.
    std::fs::write(&lib, "this is not rust").unwrap();
    wait_log(&log, "the last good build keeps serving", 1);
    let third = post(r#"{"name":"Cy"}"#);
    assert_eq!(result_of(&third)["greeting"], "hi Cy");

    // SIGTERM: the daemon drains and `sluice dev` exits 0.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || child
        .try_wait()
        .unwrap()
        .is_some()));
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
