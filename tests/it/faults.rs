//! The randomized fault test: three hosts on one JetStream, a mix of due,
//! delayed, retried and sliced messages whose handler posts (at once and
//! delayed), while hosts are killed with SIGKILL and the nats-server is
//! killed and restarted, at random. At the end every message's job ended
//! (succeeded) and no host holds a record of it that is not final, every
//! downstream post is in the stream exactly once, and no outbox row is
//! left unsent. Run once on one server and once on a three-node cluster
//! (R3 streams) with one node killed and restarted mid-run.
//!
//! 20 cycles in CI; `SLUICE_SOAK=1` runs 200. The seed is printed, and
//! `SLUICE_FAULT_SEED=N` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use sluice::store::JobState;

use crate::nats::NatsServer;
use crate::util::{Daemon, Env, FAST, is_final, wait_until};

const HOSTS: usize = 3;

fn cycles() -> usize {
    if std::env::var_os("SLUICE_SOAK").is_some() {
        200
    } else {
        20
    }
}

/// One kind of message and the posts (slices) it makes downstream.
fn message(rng: &mut fastrand::Rng) -> (String, Option<&'static str>, u32) {
    let post = r#"{"channel": "test.sink"}"#;
    let delayed_post = r#"{"channel": "test.sink", "delay_ms": 2500}"#;
    match rng.u8(0..5) {
        0 => (format!(r#"{{"posts": [{post}]}}"#), None, 1),
        1 => (format!(r#"{{"posts": [{post}], "slices": 3}}"#), None, 3),
        2 => (format!(r#"{{"posts": [{post}]}}"#), Some("2s"), 1),
        3 => (format!(r#"{{"posts": [{delayed_post}]}}"#), None, 1),
        _ => (
            format!(r#"{{"posts": [{post}], "fail_times": 1}}"#),
            None,
            1,
        ),
    }
}

struct World {
    envs: Vec<Env>,
    hosts: Vec<Option<Daemon>>,
}

impl World {
    fn new(url: &str, replicas: usize) -> World {
        let config = format!(
            "{FAST}\n[plugin.test-wire]\nmax_attempts = 50\n[nats]\nurl = \"{url}\"\nack_wait = \"2s\"\nreplicas = {replicas}\n"
        );
        let envs: Vec<Env> = (0..HOSTS)
            .map(|_| Env::new(&["test-wire"], &config))
            .collect();
        World {
            hosts: envs.iter().map(|_| None).collect(),
            envs,
        }
    }

    fn start(&mut self, i: usize) {
        let daemon = self.envs[i].start();
        self.hosts[i] = Some(daemon);
    }

    /// No host's process ended by itself: a daemon that cannot set up its
    /// consumers (a cluster electing leaders after a server died) waits
    /// and tries again, it does not exit.
    fn assert_up(&mut self) {
        for i in 0..HOSTS {
            if let Some(d) = self.hosts[i].as_mut()
                && let Some(status) = d.exited()
            {
                panic!("host {i} exited by itself ({status}):\n{}", d.log_text());
            }
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(d) = self.hosts[i].take() {
            d.kill();
        }
    }

    fn logs(&self) -> String {
        self.hosts
            .iter()
            .flatten()
            .map(Daemon::log_text)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Posts through host `i`'s CLI with a fixed id, again until it is
    /// accepted (the server may be restarting); the id makes a repeat the
    /// same message.
    fn post(&self, i: usize, id: &str, body: &str, delay: Option<&str>) {
        let mut args = vec!["post", "test.wire", body, "--id", id];
        if let Some(d) = delay {
            args.extend(["--delay", d]);
        }
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(60), || {
            let out = self.envs[i].sluice(&args);
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(ok, "post {id} never accepted: {last}\n{}", self.logs());
    }
}

/// Downstream posts in the stream: (message id, slice) -> copies.
fn downstream(nats: &NatsServer) -> BTreeMap<(String, u64), usize> {
    let mut out = BTreeMap::new();
    for m in nats.messages("SLUICE") {
        if m.subject.as_str() != "sluice.test.sink" {
            continue;
        }
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        let key = (
            v["message_id"].as_str().unwrap_or_default().to_owned(),
            v["slice"].as_u64().unwrap_or(u64::MAX),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The status board's entry for job `id`, as text (for failure messages).
fn board_entry(nats: &NatsServer, id: &str) -> String {
    let id = id.to_owned();
    nats.with_js(|js| async move {
        let kv = match js.get_key_value(sluice::cluster::BUCKET).await {
            Ok(kv) => kv,
            Err(e) => return format!("no bucket ({e})"),
        };
        match kv.entry(id.as_str()).await {
            Ok(Some(e)) => format!(
                "revision {}: {}",
                e.revision,
                String::from_utf8_lossy(&e.value)
            ),
            Ok(None) => "nothing".to_owned(),
            Err(e) => format!("unreadable ({e})"),
        }
    })
}

/// Runs the fault cycles against `servers` (one, or the nodes of a
/// cluster); `kill_server(servers, rng)` kills and restarts one of them.
fn run(servers: &mut [NatsServer], replicas: usize, rng: &mut fastrand::Rng) {
    let url = servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    let mut world = World::new(&url, replicas);
    for i in 0..HOSTS {
        world.start(i);
    }
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    let n = cycles();
    for cycle in 0..n {
        for k in 0..4 {
            let (body, delay, slices) = message(rng);
            let id = format!("f{cycle}-{k}");
            world.post(rng.usize(0..HOSTS), &id, &body, delay);
            expected.insert(id, slices);
        }
        std::thread::sleep(Duration::from_millis(rng.u64(50..600)));
        if rng.u8(0..5) == 0 {
            let node = rng.usize(0..servers.len());
            eprintln!("fault test: cycle {cycle}: kill -9 nats-server {node}");
            servers[node].restart();
        } else {
            let host = rng.usize(0..HOSTS);
            eprintln!("fault test: cycle {cycle}: kill -9 host {host}");
            world.kill(host);
            if rng.bool() {
                world.start(host);
            }
        }
        world.assert_up();
        // A killed host stays down a cycle now and then, but every host is
        // up again before the next kill of one.
        for i in 0..HOSTS {
            if world.hosts[i].is_none() && rng.bool() {
                world.start(i);
            }
        }
    }
    for i in 0..HOSTS {
        if world.hosts[i].is_none() {
            world.start(i);
        }
    }

    // Every message's job succeeded somewhere, and every record of it on
    // every host is final.
    let settled = |world: &World| -> Result<(), String> {
        let mut succeeded = BTreeSet::new();
        for (h, env) in world.envs.iter().enumerate() {
            for job in env.jobs("test.wire") {
                if !is_final(job.state) {
                    return Err(format!(
                        "host {h}: {} is {} (slices {}, attempts {}, updated_at {}); the status board holds {}",
                        job.message_id,
                        job.state,
                        job.slices,
                        job.attempts,
                        job.updated_at,
                        board_entry(&servers[0], &job.id)
                    ));
                }
                if job.state == JobState::Succeeded {
                    succeeded.insert(job.message_id);
                }
            }
        }
        let missing: Vec<&String> = expected
            .keys()
            .filter(|id| !succeeded.contains(*id))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not succeeded anywhere: {missing:?}"))
        }
    };
    let mut last = Ok(());
    let ok = wait_until(Duration::from_secs(240), || {
        world.assert_up();
        last = settled(&world);
        last.is_ok()
    });
    assert!(ok, "{last:?}\n{}", world.logs());

    // Every downstream post exactly once.
    let want: usize = expected.values().map(|s| *s as usize).sum();
    let mut got = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(60), || {
        got = downstream(&servers[0]);
        got.len() >= want
    });
    assert!(
        ok,
        "{} of {want} downstream posts\n{}",
        got.len(),
        world.logs()
    );
    for (id, slices) in &expected {
        for slice in 0..u64::from(*slices) {
            assert_eq!(
                got.get(&(id.clone(), slice)),
                Some(&1),
                "post of {id} slice {slice}"
            );
        }
    }
    assert_eq!(got.len(), want, "no post beyond the expected ones");

    // Nothing left unsent in any outbox.
    for (h, env) in world.envs.iter().enumerate() {
        let ok = wait_until(Duration::from_secs(30), || {
            env.ok(&["outbox", "list", "--pending", "--json"])
                .trim()
                .is_empty()
        });
        assert!(ok, "host {h} has unsent outbox rows");
    }
    for i in 0..HOSTS {
        world.kill(i);
    }
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("SLUICE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fault test: seed {seed} (SLUICE_FAULT_SEED={seed} replays it)");
    fastrand::Rng::with_seed(seed)
}

#[test]
fn random_kills_of_hosts_and_the_server_lose_and_repeat_nothing() {
    let mut servers = vec![NatsServer::start()];
    run(&mut servers, 1, &mut rng());
}

#[test]
fn random_kills_on_a_three_node_cluster_lose_and_repeat_nothing() {
    let mut servers = NatsServer::cluster(3);
    run(&mut servers, 3, &mut rng());
}
