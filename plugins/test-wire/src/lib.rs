//! Test plugin (not an example): does what its request says with the wire
//! path in mind. Request (all optional):
//! - `posts`: `[{channel, headers: [[k, v]], delay_ms, pad, name}]`, posted
//!   on every slice with `{"slice": n, "message_id": id, "pad": "xxx.."}`;
//! - `slices`: continue until this many slices ran; the cursor is the next
//!   slice number followed by `cursor_pad` (e.g. a multi-line text);
//! - `fail_times`: a retryable failure on attempts 1..=fail_times;
//! - `spin_ms`: busy-wait this long on each call;
//! - `retry_spin_ms`: busy-wait this long instead on attempts after the
//!   first (default: `spin_ms`), so a redelivery outlasts the first run;
//! - `permanent`: fail permanently with this text (any bytes, newlines too).
//!
//! It counts calls that committed in state key "calls" and fails
//! permanently if it is ever called for a channel other than `test.wire`
//! or with a cursor it did not write. The result is
//! `{"slices": n, "cursor": last cursor seen}`.

use std::time::{Duration, Instant};

use sluice_sdk::PostOptions;
use sluice_sdk::prelude::*;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Wire {
    posts: Vec<PostSpec>,
    slices: u32,
    cursor_pad: String,
    fail_times: u32,
    spin_ms: u64,
    retry_spin_ms: Option<u64>,
    permanent: Option<String>,
}

#[derive(Deserialize)]
struct PostSpec {
    channel: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    pad: usize,
    #[serde(default)]
    name: Option<String>,
}

struct TestWire;

impl Handler for TestWire {
    type Request = Wire;

    fn describe() -> Describe {
        Describe::handler("test-wire", "0.1.0").channel("test.wire")
    }

    fn handle(ctx: &mut Context, req: Wire) -> Result<Outcome, Error> {
        if ctx.channel() != "test.wire" {
            return Err(Error::permanent(format!(
                "called for channel {:?}",
                ctx.channel()
            )));
        }
        let slice: u32 = match ctx.cursor() {
            None => 0,
            Some(c) => {
                let digits: String = c.chars().take_while(char::is_ascii_digit).collect();
                if c[digits.len()..] != req.cursor_pad {
                    return Err(Error::permanent(format!("cursor {c:?} was changed")));
                }
                digits
                    .parse()
                    .map_err(|_| Error::permanent(format!("cursor {c:?} is not mine")))?
            }
        };
        if let Some(text) = &req.permanent {
            return Err(Error::permanent(text.clone()));
        }
        if ctx.attempt() <= req.fail_times {
            return Err(Error::retryable(format!(
                "attempt {} fails on purpose",
                ctx.attempt()
            )));
        }
        let spin_ms = match req.retry_spin_ms {
            Some(ms) if ctx.attempt() > 1 => ms,
            _ => req.spin_ms,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(spin_ms) {
            std::hint::black_box(0u64);
        }
        let calls: u64 = ctx.state().get("calls")?.unwrap_or(0);
        ctx.state().set("calls", &(calls + 1))?;
        let message_id = ctx.message_id().to_owned();
        for p in &req.posts {
            let mut options = PostOptions::new();
            for (k, v) in &p.headers {
                options = options.header(k.clone(), v.clone());
            }
            if let Some(d) = p.delay_ms {
                options = options.delay(Duration::from_millis(d));
            }
            if let Some(n) = &p.name {
                options = options.name(n.clone());
            }
            let body = serde_json::json!({
                "slice": slice, "message_id": message_id, "pad": "x".repeat(p.pad),
            });
            ctx.post_with(&p.channel, &body, options)?;
        }
        let next = slice + 1;
        if next < req.slices {
            return Ok(Outcome::continue_at(
                format!("{next}{}", req.cursor_pad),
                Duration::ZERO,
            ));
        }
        Outcome::done_with(&serde_json::json!({
            "slices": next,
            "cursor": ctx.cursor(),
        }))
    }
}

sluice_sdk::export_handler!(TestWire);
