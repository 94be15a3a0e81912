//! Unit-testing handlers natively, with `cargo test`.
//!
//! A plugin crate also builds for the machine it is developed on, and
//! [`TestHost`] runs a [`Handler`] there the way the Sluice host does:
//! parse the JSON body into the request type, call `handle`, and apply the
//! call's effects (state writes, posts, progress) only if it returned `Ok`.
//!
//! ```
//! use sluice_sdk::prelude::*;
//! use sluice_sdk::testing::TestHost;
//!
//! #[derive(Deserialize)]
//! struct Greet { name: String }
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     type Request = Greet;
//!     fn describe() -> Describe {
//!         Describe::handler("greeter", "1.0.0").channel("greetings")
//!     }
//!     fn handle(ctx: &mut Context, req: Greet) -> Result<Outcome, Error> {
//!         let seen: u64 = ctx.state().get("seen")?.unwrap_or(0);
//!         ctx.state().set("seen", &(seen + 1))?;
//!         ctx.post("greeted", &serde_json::json!({ "name": req.name }))?;
//!         Outcome::done_with(&seen)
//!     }
//! }
//!
//! let mut host = TestHost::new();
//! host.handle::<Greeter>(&serde_json::json!({ "name": "Ann" })).unwrap();
//! assert_eq!(host.state::<u64>("seen"), Some(1));
//! assert_eq!(host.posts()[0].channel, "greeted");
//! // A body that does not parse is a permanent error, and commits nothing.
//! let err = host.handle_json::<Greeter>("{}").unwrap_err();
//! assert!(!err.is_retryable());
//! assert_eq!(host.posts().len(), 1);
//! ```
//!
//! Why a thread-local: the effect functions are free functions on
//! WebAssembly (imports of the host), so natively they find the call in
//! progress on the current thread. `cargo test` runs each test on its own
//! thread, so tests never see each other's calls.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::handler::exports::sluice::plugin::handler::JobContext;
use crate::__private::bindings::handler::sluice::plugin::effects::PostOptions as WitPostOptions;
use crate::__private::bindings::handler::sluice::plugin::types::MessageKind as WitKind;
use crate::{Error, Handler, MessageKind, Outcome};

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

/// The effects of the call in progress on this thread.
#[derive(Default)]
struct Call {
    committed: BTreeMap<String, Vec<u8>>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    posts: Vec<Posted>,
    progress: Option<Progress>,
    /// Set by a `state-add` the host would refuse: the call fails for good.
    invalid: Option<String>,
}

/// A message a handler posted in a successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The target channel.
    pub channel: String,
    /// The request type name (the channel name unless the post named one).
    pub name: String,
    /// The JSON body.
    pub body: String,
    /// Command or event.
    pub kind: MessageKind,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Delay after commit, if any.
    pub delay: Option<Duration>,
    /// Earliest delivery, Unix ms, if any.
    pub launch_at_ms: Option<u64>,
    /// Expiry, Unix ms, if any.
    pub expires_at_ms: Option<u64>,
}

impl Posted {
    /// The body parsed into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// The last progress a successful call reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// 0..=100.
    pub percent: u8,
    /// The note, if any.
    pub note: Option<String>,
}

/// A stand-in for the Sluice host in unit tests: committed state, the posts
/// and progress of the successful calls so far, and the job the next call
/// sees (channel, attempt, headers, cursor).
#[derive(Debug, Clone)]
pub struct TestHost {
    state: BTreeMap<String, Vec<u8>>,
    posts: Vec<Posted>,
    progress: Option<Progress>,
    channel: String,
    attempt: u32,
    headers: Vec<(String, String)>,
    cursor: Option<String>,
    request_name: Option<String>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// Empty state; the next call is attempt 1 of a message on channel
    /// `test`, with no headers and no cursor.
    pub fn new() -> Self {
        TestHost {
            state: BTreeMap::new(),
            posts: Vec::new(),
            progress: None,
            channel: "test".into(),
            attempt: 1,
            headers: Vec::new(),
            cursor: None,
            request_name: None,
        }
    }

    /// The channel the next call's message arrives on.
    pub fn channel(&mut self, channel: &str) -> &mut Self {
        self.channel = channel.into();
        self
    }

    /// The attempt number the next call sees (1 = first delivery).
    pub fn attempt(&mut self, attempt: u32) -> &mut Self {
        self.attempt = attempt;
        self
    }

    /// Adds a header to the next calls' message.
    pub fn header(&mut self, key: &str, value: &str) -> &mut Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// The cursor the next call sees (`Some` continues a job that returned
    /// [`Outcome::Continue`]).
    pub fn cursor(&mut self, cursor: Option<&str>) -> &mut Self {
        self.cursor = cursor.map(str::to_owned);
        self
    }

    /// The request type name the next call sees (default: the channel).
    pub fn request_name(&mut self, name: &str) -> &mut Self {
        self.request_name = Some(name.into());
        self
    }

    /// Commits `value` (as JSON) at `key`, as if an earlier job wrote it.
    pub fn set_state<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.state.insert(key.into(), bytes),
            Err(e) => panic!("TestHost::set_state({key:?}): the value is not JSON: {e}"),
        };
        self
    }

    /// The committed value at `key`, decoded from JSON (`None` if absent or
    /// not a `T`).
    pub fn state<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state
            .get(key)
            .and_then(|v| serde_json::from_slice(v).ok())
    }

    /// The committed bytes at `key`.
    pub fn state_raw(&self, key: &str) -> Option<&[u8]> {
        self.state.get(key).map(Vec::as_slice)
    }

    /// Posts of the successful calls so far, in order.
    pub fn posts(&self) -> &[Posted] {
        &self.posts
    }

    /// The last progress committed.
    pub fn progress(&self) -> Option<&Progress> {
        self.progress.as_ref()
    }

    /// Runs `H` on `request` serialised to JSON; see
    /// [`handle_json`](Self::handle_json).
    pub fn handle<H: Handler>(&mut self, request: &impl Serialize) -> Result<Outcome, Error> {
        let body = serde_json::to_string(request)?;
        self.handle_json::<H>(&body)
    }

    /// Runs `H` on a JSON body the way the host does. On `Ok` the call's
    /// state writes, posts and progress are committed to this host; on
    /// `Err` (including a body that does not parse) nothing is. A
    /// `state().add` on a value that is not an integer, or one that
    /// overflows an `i64`, makes the call a permanent error, as the host
    /// dead-letters such a job.
    pub fn handle_json<H: Handler>(&mut self, body: &str) -> Result<Outcome, Error> {
        let ctx = JobContext {
            job_id: "test-job".into(),
            message_id: "test-message".into(),
            channel: self.channel.clone(),
            attempt: self.attempt,
            headers: self.headers.clone(),
            cursor: self.cursor.clone(),
        };
        let name = self.request_name.clone().unwrap_or(self.channel.clone());
        let _guard = Guard::install(Call {
            committed: self.state.clone(),
            ..Call::default()
        });
        let outcome = crate::__private::run_handler::<H>(ctx, name, body);
        let call = CALL.with(|c| c.borrow_mut().take()).unwrap_or_default();
        let outcome = match call.invalid {
            Some(why) => Err(Error::permanent(why)),
            None => outcome,
        };
        if outcome.is_ok() {
            for (key, value) in call.writes {
                match value {
                    Some(v) => self.state.insert(key, v),
                    None => self.state.remove(&key),
                };
            }
            self.posts.extend(call.posts);
            if call.progress.is_some() {
                self.progress = call.progress;
            }
        }
        outcome
    }
}

/// Clears the thread's call even when the handler panics.
struct Guard;

impl Guard {
    fn install(call: Call) -> Guard {
        CALL.with(|c| *c.borrow_mut() = Some(call));
        Guard
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        CALL.with(|c| c.borrow_mut().take());
    }
}

fn with_call<R>(f: impl FnOnce(&mut Call) -> R) -> R {
    CALL.with(|c| match c.borrow_mut().as_mut() {
        Some(call) => f(call),
        None => panic!(
            "sluice_sdk: effects (post, state, progress) only work inside the Sluice host \
             or in sluice_sdk::testing::TestHost::handle"
        ),
    })
}

/// The native side of `crate::effects`: the call in progress on this thread.
pub(crate) mod backend {
    use super::*;

    pub(crate) fn post(channel: &str, body: &str, options: &WitPostOptions) {
        with_call(|c| {
            c.posts.push(Posted {
                channel: channel.into(),
                name: options.name.clone().unwrap_or_else(|| channel.into()),
                body: body.into(),
                kind: match options.kind {
                    WitKind::Command => MessageKind::Command,
                    WitKind::Event => MessageKind::Event,
                },
                headers: options.headers.clone(),
                delay: options.delay_ms.map(Duration::from_millis),
                launch_at_ms: options.launch_at_ms,
                expires_at_ms: options.expires_at_ms,
            })
        })
    }

    pub(crate) fn progress(percent: u8, note: Option<&str>) {
        with_call(|c| {
            c.progress = Some(Progress {
                percent,
                note: note.map(str::to_owned),
            })
        })
    }

    pub(crate) fn state_get(key: &str) -> Option<Vec<u8>> {
        with_call(|c| match c.writes.get(key) {
            Some(v) => v.clone(),
            None => c.committed.get(key).cloned(),
        })
    }

    pub(crate) fn state_set(key: &str, value: &[u8]) {
        with_call(|c| {
            c.writes.insert(key.into(), Some(value.to_vec()));
        })
    }

    pub(crate) fn state_delete(key: &str) {
        with_call(|c| {
            c.writes.insert(key.into(), None);
        })
    }

    /// One call at a time on a thread, so adding to what the call sees
    /// now is what the host's commit-time add comes to.
    pub(crate) fn state_add(key: &str, delta: i64) {
        with_call(|c| {
            let seen = match c.writes.get(key) {
                Some(v) => v.clone(),
                None => c.committed.get(key).cloned(),
            };
            match add(seen.as_deref(), delta) {
                Some(sum) => {
                    c.writes.insert(key.into(), Some(sum));
                }
                None => {
                    c.invalid.get_or_insert_with(|| {
                        format!(
                            "state-add on key {key:?}: its value is not an integer, \
                             or adding {delta} overflows"
                        )
                    });
                }
            }
        })
    }

    /// `value + delta` in the host's encoding of a counter (a JSON integer;
    /// absent is 0); `None` where the host refuses the add.
    fn add(value: Option<&[u8]>, delta: i64) -> Option<Vec<u8>> {
        let n = match value {
            None => 0,
            Some(bytes) => {
                let text = std::str::from_utf8(bytes).ok()?.trim_ascii();
                let digits = text.strip_prefix('-').unwrap_or(text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text.parse::<i64>().ok()?
            }
        };
        n.checked_add(delta).map(|sum| sum.to_string().into_bytes())
    }
}
