//! Test plugin (not an example): tries to make the host hold more than it
//! should, one way per request (`{"do": "..."}`). Each way must fail only
//! its own job, at once, with a reason naming the bound; `logs` and
//! `progress` must succeed with what they flood cut down.

use sluice_sdk::prelude::*;

/// `wasi:random`, imported directly: std never asks for many bytes at once.
mod random {
    wit_bindgen::generate!({
        inline: "
            package wasi:random@0.2.1;
            interface random { get-random-bytes: func(len: u64) -> list<u8>; }
            world hoard-random { import random; }
        ",
        world: "hoard-random",
    });
}

/// A WASI resource a guest can make without permission: each one is an
/// entry in the host's resource table.
mod sockets {
    wit_bindgen::generate!({
        inline: "
            package wasi:sockets@0.2.1;
            interface network { resource network; }
            interface instance-network {
                use network.{network};
                instance-network: func() -> network;
            }
            world hoard-sockets { import instance-network; }
        ",
        world: "hoard-sockets",
    });
}

#[derive(Deserialize)]
struct Hoard {
    r#do: String,
}

struct TestHoard;

fn big(n: usize) -> String {
    "x".repeat(n)
}

impl Handler for TestHoard {
    type Request = Hoard;

    fn describe() -> Describe {
        Describe::handler("test-hoard", "0.1.0")
            .channel("test.hoard")
            .channel("test.hoard.in")
    }

    fn handle(ctx: &mut Context, req: Hoard) -> Result<Outcome, Error> {
        match req.r#do.as_str() {
            "posts" => {
                for i in 0..10_001 {
                    ctx.post("test.hoard.sink", &i)?;
                }
            }
            "body" => ctx.post("test.hoard.sink", &big(2 << 20))?,
            "headers" => {
                let mut options = PostOptions::new();
                for i in 0..65 {
                    options = options.header(format!("h{i}"), "");
                }
                ctx.post_with("test.hoard.sink", &1, options)?;
            }
            "header-bytes" => {
                for _ in 0..10_000 {
                    let mut options = PostOptions::new();
                    for i in 0..64 {
                        options = options.header(format!("h{i}"), big(100));
                    }
                    ctx.post_with("test.hoard.sink", &1, options)?;
                }
            }
            "channel" => ctx.post("a..b", &1)?,
            "result" => return Outcome::done_with(&big(2 << 20)),
            "cursor" => {
                return Ok(Outcome::continue_at(big(5000), std::time::Duration::ZERO));
            }
            "delay" => {
                return Ok(Outcome::continue_at("c", std::time::Duration::MAX));
            }
            "random" => {
                let bytes = random::wasi::random::random::get_random_bytes(1 << 20);
                return Outcome::done_with(&bytes.len());
            }
            "resources" => {
                let held: Vec<_> = (0..2000)
                    .map(|_| sockets::wasi::sockets::instance_network::instance_network())
                    .collect();
                return Outcome::done_with(&held.len());
            }
            "inflate" => {
                for _ in 0..100 {
                    ctx.post("test.hoard.out", &serde_json::json!({"inflate": 1_000_000}))?;
                }
            }
            "mapped-headers" => {
                ctx.post("test.hoard.out", &serde_json::json!({"headers": 65}))?;
            }
            "logs" => {
                for i in 0..100_000 {
                    sluice_sdk::log::info(&format!("line {i}\nINFO forged line\r\x1b[31m"));
                }
            }
            "progress" => {
                let note = big(1 << 20);
                for p in 0..100 {
                    ctx.progress(p, Some(&note));
                }
            }
            other => return Err(Error::permanent(format!("unknown case {other:?}"))),
        }
        Ok(Outcome::done())
    }
}

sluice_sdk::export_handler!(TestHoard);
