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
    let (config, addr) = crate::api::http_config(
        "[limits]\nfuel = 1_000_000_000\ntimeout = \"2s\"\nmemory = \"32MiB\"\n\
         [plugin.test-greedy]\nmax_attempts = 1\n",
    );
    let env = Env::new(&["test-greedy", "test-counter"], &config);
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
    // The running daemon's view says the same, and so does the API.
    check(&plugin_json(&env, &["plugins", "--json"], "test-greedy"));
    let api = crate::api::Api::new(&addr, None);
    api.wait_up(&daemon);
    let listed = api.get("/v1/plugins").json();
    let greedy = listed["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "test-greedy"))
        .cloned()
        .unwrap_or_default();
    check(&greedy);
    daemon.wait_log(
        &["asked for more than the operator's ceiling", "test-greedy"],
        1,
        LONG,
    );
    assert!(daemon.exited().is_none());
    assert!(daemon.stop(LONG).success());
}

#[test]
fn every_host_allocation_a_guest_causes_is_bounded_and_fails_for_good() {
    let env = Env::new(&["test-hoard", "test-hoard-mapper", "test-counter"], FAST);
    // (request, channel, what the dead letter must say). Each is dead at
    // its first attempt: the same input would exceed the bound again.
    let cases = [
        ("posts", "test.hoard", "too many posts"),
        ("body", "test.hoard", "post body of"),
        ("headers", "test.hoard", "post with 65 headers"),
        ("header-bytes", "test.hoard", "too much data buffered"),
        ("channel", "test.hoard", "has an empty segment"),
        (
            "result",
            "test.hoard",
            "result of 2097154 bytes is over the limit",
        ),
        ("cursor", "test.hoard", "continuation cursor of 5000 bytes"),
        (
            "random",
            "test.hoard",
            "random bytes: one request may ask for at most 65536",
        ),
        ("resources", "test.hoard", "too many host resources"),
        ("inflate", "test.hoard", "posts map to more than"),
        ("mapped-headers", "test.hoard", "message with 65 headers"),
        (
            "huge-request",
            "test.hoard.in",
            "request body of 17825792 bytes",
        ),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(case, channel, _)| env.post(channel, &format!(r#"{{"do": "{case}"}}"#)))
        .collect();
    let fine: Vec<String> = ["logs", "progress"]
        .iter()
        .map(|case| env.post("test.hoard", &format!(r#"{{"do": "{case}"}}"#)))
        .collect();
    let counted: Vec<String> = (0..10)
        .map(|_| env.post("test.counter", r#"{"amount": 1}"#))
        .collect();
    let mut daemon = env.start();
    env.wait_settled("test.hoard", cases.len() + 1, LONG);
    env.wait_settled("test.hoard.in", 1, LONG);
    for ((case, _, reason), id) in cases.iter().zip(&ids) {
        let job = env.job(id);
        let err = job.last_error.clone().unwrap_or_default();
        assert_eq!(
            job.state,
            JobState::Dead,
            "{case}: {err}\n{}",
            daemon.log_text()
        );
        assert!(
            err.contains(reason),
            "{case}: expected {reason:?} in {err:?}"
        );
        assert!(err.contains("sandbox limit"), "{case}: {err}");
        assert_eq!(job.attempts, 1, "{case}: a limit is not retried");
    }
    for id in &fine {
        let job = env.job(id);
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    }
    let progress = env.job(&fine[1]);
    assert!(progress.progress_note.is_some_and(|n| n.len() <= 4096));
    env.wait_settled("test.counter", 10, LONG);
    for id in &counted {
        assert_eq!(env.job(id).state, JobState::Succeeded);
    }
    // Log floods are cut with one warning, and a plugin's line cannot
    // forge another: its newlines and escapes are escaped.
    let log = daemon.log_text();
    assert_eq!(daemon.log_lines(&["dropping the rest"]).len(), 1, "{log}");
    assert!(
        log.contains("line 0\\nINFO forged line\\r\\u{1b}[31m"),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("INFO forged")),
        "forged line in the log"
    );
    assert!(!log.contains('\x1b'), "raw escape in the log");
    let logged = daemon.log_lines(&["INFO forged line"]).len();
    assert!(logged <= 1000, "{logged} plugin lines logged");
    assert!(daemon.exited().is_none());
    assert!(daemon.stop(LONG).success());
}

#[test]
fn a_compile_cache_entry_planted_from_elsewhere_is_never_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let ours = Env::new(&["test-counter"], FAST);
    let theirs = Env::new(&["test-counter"], FAST);
    let loaded = |env: &Env| {
        let daemon = env.start();
        daemon.wait_log(&["plugins directory loaded"], 1, LONG);
        let line = daemon.log_lines(&["plugins directory loaded"]).remove(0);
        let log = daemon.log_text();
        assert!(daemon.stop(LONG).success());
        let field = |f: &str| crate::util::log_field(&line, f).and_then(|v| v.parse::<u32>().ok());
        (field("compiled"), field("from_cache"), log)
    };
    let entry = |env: &Env| {
        std::fs::read_dir(env.data.join("cache"))
            .expect("cache dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .expect("an entry")
    };
    assert_eq!(loaded(&ours).0, Some(1));
    assert_eq!(loaded(&theirs).0, Some(1));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&ours.data.join("cache")), 0o700);
    assert_eq!(mode(&ours.data.join("cache/key")), 0o600);
    assert_eq!(mode(&entry(&ours)), 0o600);
    // A valid image for this very engine and plugin, but made by another
    // install: it is refused (never deserialized) and the plugin compiled.
    std::fs::copy(entry(&theirs), entry(&ours)).expect("plant");
    // A cache dir someone opened up is made private again.
    std::fs::set_permissions(
        ours.data.join("cache"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let (compiled, from_cache, log) = loaded(&ours);
    assert_eq!((compiled, from_cache), (Some(1), Some(0)), "{log}");
    assert!(
        log.contains("compile cache entry unusable") && log.contains("tag mismatch"),
        "{log}"
    );
    assert_eq!(mode(&ours.data.join("cache")), 0o700);
    // Its own entry, rewritten, is used again.
    assert_eq!(loaded(&ours).1, Some(1));
}

/// A valid component whose one core module has `functions` functions of a
/// million times four instructions each (a function body may be at most
/// 7654321 bytes): each takes most of a second of a core to compile, then
/// the component fails to load (it exports nothing). About 7 MB a function.
fn compile_bomb(functions: usize, salt: u8) -> Vec<u8> {
    const N: usize = 1_000_000;
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f], &mut module); // (i32) -> i32
    let mut funcs = Vec::new();
    leb(functions, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions));
    section(3, &funcs, &mut module);
    let mut code = vec![0u8]; // no locals
    for i in 0..N {
        // local.get 0; i32.const i; i32.mul; local.set 0
        code.extend_from_slice(&[
            0x20,
            0,
            0x41,
            ((i + salt as usize) % 64) as u8,
            0x6c,
            0x21,
            0,
        ]);
    }
    code.extend_from_slice(&[0x20, 0, 0x0b]);
    let mut body = Vec::new();
    leb(functions, &mut body);
    for _ in 0..functions {
        leb(code.len(), &mut body);
        body.extend_from_slice(&code);
    }
    section(10, &body, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

#[test]
fn plugin_files_are_capped_and_a_compile_bomb_holds_up_nothing() {
    // Warm the compile cache (under no compile timeout: a cold compile on a
    // loaded machine may take seconds) so the good plugins load in
    // milliseconds, far inside the timeout, while a bomb takes seconds of
    // CPU: the margins hold on a slow or loaded machine (a bomb only gets
    // slower there).
    let env = Env::new(
        &["test-counter"],
        &format!("compile_timeout = \"1h\"\n{FAST}"),
    );
    env.deploy("test-version-1", "v.wasm");
    let first = env.start();
    first.wait_log(&["plugins directory loaded"], 1, LONG);
    let warm = first.log_text();
    assert!(warm.contains("loaded=2"), "{warm}");
    assert!(first.stop(LONG).success());
    std::fs::remove_file(env.plugins.join("v.wasm")).expect("rm v.wasm");
    std::fs::write(&env.config, format!("compile_timeout = \"300ms\"\n{FAST}")).expect("config");

    std::fs::write(env.plugins.join("bomb.wasm"), compile_bomb(3, 0)).expect("bomb");
    // Over the size cap (sparse: no disk used) and not a regular file.
    let huge = std::fs::File::create(env.plugins.join("huge.wasm")).expect("huge");
    huge.set_len(65 << 20).expect("set_len");
    let fifo = env.dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    std::os::unix::fs::symlink(&fifo, env.plugins.join("fifo.wasm")).expect("symlink");
    std::os::unix::fs::symlink(
        env.dir.path().join("nowhere"),
        env.plugins.join("dangling.wasm"),
    )
    .expect("symlink");

    let id = env.post("test.counter", r#"{"amount": 1}"#);
    let daemon = env.start();
    daemon.wait_log(&["watching the plugins directory"], 1, LONG);
    env.wait_settled("test.counter", 1, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
    let log = daemon.log_text();
    let line = |file: &str| {
        log.lines()
            .find(|l| l.contains(file) && l.contains("rejected"))
            .unwrap_or_else(|| panic!("no rejection of {file}:\n{log}"))
            .to_owned()
    };
    assert!(
        line("bomb.wasm").contains("compiling took longer than compile_timeout (300ms)"),
        "{log}"
    );
    assert!(
        line("huge.wasm").contains("may be at most 67108864 bytes"),
        "{log}"
    );
    assert!(line("fifo.wasm").contains("not a regular file"), "{log}");
    assert!(
        !log.contains("dangling.wasm"),
        "a dangling link is a missing file: {log}"
    );

    // A good file deployed while a (new) bomb compiles serves before the
    // bomb's compile is over: the watcher does not wait for it.
    let tmp = env.dir.path().join("bomb2.wasm");
    std::fs::write(&tmp, compile_bomb(3, 1)).expect("bomb2");
    std::fs::rename(&tmp, env.plugins.join("bomb2.wasm")).expect("bomb2");
    env.deploy("test-version-1", "v.wasm");
    daemon.wait_log(&["plugin loaded", "v.wasm"], 1, LONG);
    daemon.wait_log(&["bomb2.wasm", "rejected"], 1, LONG);
    let log = daemon.log_text();
    let at = |parts: &[&str]| {
        log.lines()
            .position(|l| parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        at(&["plugin loaded", "v.wasm"]) < at(&["bomb2.wasm", "rejected"]),
        "the good file waited for the bomb:\n{log}"
    );
    let id = env.post("test.version", r#"{"seq": 1}"#);
    env.wait_settled("test.version", 1, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
    assert!(daemon.stop(LONG).success());
}

#[test]
fn the_data_dir_may_not_sit_inside_the_plugins_dir() {
    let env = Env::new(&["test-counter"], FAST);
    let inside = env.plugins.join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--plugins")
        .arg(&env.plugins)
        .arg("--data")
        .arg(&inside)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the plugins directory"), "{err}");
    assert!(!inside.exists(), "nothing was created there");
}

/// `base` (a component) with `copies` more instances of a core module that
/// defines `memories` memories and `tables` tables, appended in a nested
/// component that the outer one instantiates: a plugin that works in every
/// other respect but holds more of the instance pool than one call may.
fn with_extra_instances(base: &[u8], copies: u8, memories: u8, tables: u8) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    if tables > 0 {
        let mut body = vec![tables];
        for _ in 0..tables {
            body.extend_from_slice(&[0x70, 0x00, 0x01]); // funcref, min 1
        }
        section(4, &body, &mut module);
    }
    if memories > 0 {
        let mut body = vec![memories];
        for _ in 0..memories {
            body.extend_from_slice(&[0x00, 0x01]); // min 1 page
        }
        section(5, &body, &mut module);
    }
    let mut nested = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut nested);
    let mut instances = vec![copies];
    for _ in 0..copies {
        instances.extend_from_slice(&[0x00, 0x00, 0x00]); // instantiate module 0, no args
    }
    section(2, &instances, &mut nested);
    let mut out = base.to_vec();
    // Its index: the components `base` defines at its top level before it.
    let index = top_level_sections(base).filter(|&id| id == 4).count();
    section(4, &nested, &mut out);
    let mut instance = vec![1, 0x00];
    leb(index, &mut instance);
    instance.push(0x00); // no args
    section(5, &instance, &mut out);
    out
}

/// A (core or component) binary section: id, size, body.
fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len(), out);
    out.extend_from_slice(body);
}

/// `n` as unsigned LEB128.
fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// The ids of a component's top-level sections.
fn top_level_sections(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut at = 8;
    std::iter::from_fn(move || {
        let id = *bytes.get(at)?;
        at += 1;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = *bytes.get(at)?;
            at += 1;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        at += len;
        Some(id)
    })
}

#[test]
fn a_component_over_the_per_component_pool_limits_is_refused_at_load() {
    let env = Env::new(&["test-counter"], FAST);
    let counter = std::fs::read(env.plugins.join("test-counter.wasm")).expect("read");
    // The control: with (memory-less) core instances up to the limit, 3 of
    // its own + 13 = 16, the plugin still loads, so what refuses the others
    // below is the pool's limits.
    let control = Env::new(&[], FAST);
    control.overwrite("counter.wasm", &with_extra_instances(&counter, 13, 0, 0));
    let listed = control.ok(&["plugins", "--check"]);
    assert!(listed.contains("test-counter"), "{listed}");

    // 3 core instances of its own + 14 = 17 > 16; 1 memory + 2 = 3 > 2;
    // 1-2 tables + 4 > 4.
    let over = [
        (
            "instances.wasm",
            with_extra_instances(&counter, 14, 0, 0),
            "17 core module instances, which exceeds the configured maximum of 16",
        ),
        (
            "memories.wasm",
            with_extra_instances(&counter, 2, 1, 0),
            "3 Wasm linear memories, which exceeds the configured maximum of 2",
        ),
        (
            "tables.wasm",
            with_extra_instances(&counter, 4, 0, 1),
            "tables, which exceeds the configured maximum of 4",
        ),
    ];
    for (file, bytes, _) in &over {
        env.overwrite(file, bytes);
    }
    let id = env.post("test.counter", r#"{"amount": 1}"#);
    let daemon = env.start();
    daemon.wait_log(&["plugins directory loaded"], 1, LONG);
    env.wait_settled("test.counter", 1, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
    let log = daemon.log_text();
    for (file, _, reason) in &over {
        assert!(
            log.lines()
                .any(|l| l.contains(file) && l.contains("rejected") && l.contains(reason)),
            "{file}: {reason}\n{log}"
        );
    }
    // One deployed while the host runs is refused the same way, and the
    // plugin already loaded keeps serving.
    let tmp = env.dir.path().join("late.wasm");
    std::fs::write(&tmp, with_extra_instances(&counter, 2, 1, 0)).expect("write");
    std::fs::rename(&tmp, env.plugins.join("late.wasm")).expect("rename");
    daemon.wait_log(&["late.wasm", "rejected", "linear memories"], 1, LONG);
    let id = env.post("test.counter", r#"{"amount": 2}"#);
    env.wait_settled("test.counter", 2, LONG);
    assert_eq!(env.job(&id).state, JobState::Succeeded);
    assert!(daemon.stop(LONG).success());
}
