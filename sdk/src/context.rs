//! What a handler can see and do during a call.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::handler::exports::sluice::plugin::handler::JobContext;
use crate::{Error, MessageKind};

use crate::__private::bindings::handler::sluice::plugin::effects::PostOptions as WitPostOptions;
use crate::__private::bindings::handler::sluice::plugin::types::MessageKind as WitKind;
use crate::effects as host;

/// The job being handled, and the handler's way to act on the world.
///
/// Everything a handler does through the context (posts, state writes,
/// progress) is an *effect*: the host buffers it and applies it only if the
/// call returns `Ok`, in the same transaction that records the outcome. A
/// call that fails, traps or times out leaves nothing behind, so a retry
/// starts from a clean slate and a post is never sent twice.
///
/// The effect methods work inside the Sluice host and, natively, inside
/// [`testing::TestHost`](crate::testing::TestHost) (for unit tests);
/// anywhere else they panic.
#[derive(Debug)]
pub struct Context {
    job_id: String,
    message_id: String,
    channel: String,
    attempt: u32,
    headers: Vec<(String, String)>,
    cursor: Option<String>,
    request_name: String,
}

impl Context {
    pub(crate) fn new(ctx: JobContext, request_name: String) -> Self {
        Self {
            job_id: ctx.job_id,
            message_id: ctx.message_id,
            channel: ctx.channel,
            attempt: ctx.attempt,
            headers: ctx.headers,
            cursor: ctx.cursor,
            request_name,
        }
    }

    /// The job's id: stable across attempts and continuations, so it is a
    /// good idempotency key for the outside world.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The id of the message that started the job.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The channel the message arrived on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// 1 on the first attempt, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The message's headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header named `key`, compared ASCII case-insensitively as in
    /// HTTP.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Where to resume, when this call continues a job that returned
    /// [`Outcome::Continue`](crate::Outcome::Continue); `None` on the first
    /// call.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The request type name (set by the channel's mapper, or the channel
    /// name by default). Useful when one handler accepts several requests.
    pub fn request_name(&self) -> &str {
        &self.request_name
    }

    /// Posts `body` (serialised to JSON) to `channel` as a command whose
    /// request name is the channel name. Sent only if this call succeeds.
    pub fn post<T: Serialize + ?Sized>(&mut self, channel: &str, body: &T) -> Result<(), Error> {
        self.post_with(channel, body, PostOptions::new())
    }

    /// Posts `body` (serialised to JSON) to `channel` with `options`. Sent
    /// only if this call succeeds.
    pub fn post_with<T: Serialize + ?Sized>(
        &mut self,
        channel: &str,
        body: &T,
        options: PostOptions,
    ) -> Result<(), Error> {
        let body = serde_json::to_string(body)?;
        let options = WitPostOptions {
            name: options.name,
            kind: match options.kind {
                MessageKind::Command => WitKind::Command,
                MessageKind::Event => WitKind::Event,
            },
            headers: options.headers,
            delay_ms: options.delay.map(crate::duration_ms),
            launch_at_ms: options.launch_at_ms,
            expires_at_ms: options.expires_at_ms,
        };
        host::post(channel, &body, &options);
        Ok(())
    }

    /// Reports progress, `percent` from 0 to 100 (larger values count as
    /// 100), with an optional note. Like every effect it becomes visible when
    /// the call succeeds, which for a long job means at each
    /// [`Outcome::continue_at`](crate::Outcome::continue_at).
    pub fn progress(&mut self, percent: u8, note: Option<&str>) {
        host::progress(percent.min(100), note);
    }

    /// The plugin's key-value state, shared by all its jobs. Reads see this
    /// call's own writes; writes are kept only if the call succeeds.
    pub fn state(&mut self) -> State<'_> {
        State { _ctx: self }
    }
}

/// The plugin's key-value state (see [`Context::state`]).
///
/// [`get`](Self::get) and [`set`](Self::set) store values as JSON so any
/// serde type fits; [`get_raw`](Self::get_raw) and [`set_raw`](Self::set_raw)
/// store bytes as they are; [`add`](Self::add) adds to a counter.
///
/// # Consistency, and `add` versus `get` + `set`
///
/// Every job of the plugin shares this state, and jobs run concurrently.
/// A call that reads a key sees the value as of its read, and its commit
/// checks that the key is still at that value: if another job changed it
/// meanwhile, nothing of the call is kept and it runs again (this costs no
/// attempt; `conflicts` in the job's record counts it). The host makes this
/// rare: a call's first read of a key waits until the jobs ahead of it that
/// use the key have committed, so one hot key is a queue, not a fight.
///
/// - Use **`get` then `set`** when what you write, post or return depends
///   on the value: a balance that must not go negative, a result that
///   reports the new count, a list you append to.
/// - Use **`add`** for a counter you only bump and do not read in the same
///   call (hits, totals, rate tallies): it applies the delta at commit
///   without reading, so it never conflicts and never waits during the
///   call. A later `get` reads the sum as an `i64`.
///
/// ```no_run
/// # use sluice_sdk::prelude::*;
/// # fn handle(ctx: &mut Context) -> Result<Outcome, Error> {
/// // A tally: never conflicts.
/// ctx.state().add("orders", 1);
/// // A balance that must stay consistent with what the call decides.
/// let balance: i64 = ctx.state().get("balance")?.unwrap_or(0);
/// if balance < 10 {
///     return Err(Error::permanent("insufficient funds"));
/// }
/// ctx.state().set("balance", &(balance - 10))?;
/// # Ok(Outcome::done())
/// # }
/// ```
#[derive(Debug)]
pub struct State<'a> {
    // Ties the handle to the context so state is only touched during a call.
    _ctx: &'a mut Context,
}

impl State<'_> {
    /// The value at `key`, decoded from JSON; `None` if absent. A value that
    /// does not decode as `T` is a permanent error: retrying reads the same
    /// bytes.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match host::state_get(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::permanent(format!("state key {key:?} is not a valid value: {e}"))
            }),
        }
    }

    /// Stores `value` at `key` as JSON.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value)?;
        host::state_set(key, &bytes);
        Ok(())
    }

    /// Removes `key`; does nothing if it is absent.
    pub fn delete(&self, key: &str) {
        host::state_delete(key);
    }

    /// The bytes at `key`, if any.
    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        host::state_get(key)
    }

    /// Stores `value` at `key` as it is.
    pub fn set_raw(&self, key: &str, value: &[u8]) {
        host::state_set(key, value);
    }

    /// Adds `delta` to the integer at `key` when the call commits (an
    /// absent key counts as 0), without reading it: adds from concurrent
    /// jobs never conflict. The value is stored as a JSON integer, so
    /// `get::<i64>` reads it and `set(&n)` writes one `add` can add to.
    ///
    /// In a call that also reads or writes `key`, the add applies to what
    /// that call sees (and the call's commit checks its read as usual).
    /// Adding to a value that is not an integer, or overflowing an `i64`,
    /// fails the job for good (it is dead-lettered: retrying cannot help).
    ///
    /// Needs a host that implements `sluice:plugin@0.1.1` (any plugin this
    /// SDK version builds does).
    pub fn add(&self, key: &str, delta: i64) {
        host::state_add(key, delta);
    }
}

/// How and when a posted message goes out (see [`Context::post_with`]).
///
/// ```
/// use std::time::Duration;
/// use sluice_sdk::PostOptions;
///
/// let options = PostOptions::new()
///     .event()
///     .name("TaskReminderSent")
///     .header("trace-id", "abc")
///     .delay(Duration::from_secs(30));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostOptions {
    name: Option<String>,
    kind: MessageKind,
    headers: Vec<(String, String)>,
    delay: Option<Duration>,
    launch_at_ms: Option<u64>,
    expires_at_ms: Option<u64>,
}

impl PostOptions {
    /// A command, named after its channel, sent as soon as the call commits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the request type name passed to the target channel's mapper
    /// (default: the channel name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the kind: a command has exactly one handler, an event goes to
    /// every handler of the channel.
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kind = kind;
        self
    }

    /// Shorthand for `.kind(MessageKind::Command)` (the default).
    pub fn command(self) -> Self {
        self.kind(MessageKind::Command)
    }

    /// Shorthand for `.kind(MessageKind::Event)`.
    pub fn event(self) -> Self {
        self.kind(MessageKind::Event)
    }

    /// Adds a header. Call it once per header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Delivers no earlier than `delay` after the call commits (millisecond
    /// precision).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Delivers no earlier than this Unix time, in milliseconds.
    pub fn launch_at_ms(mut self, unix_ms: u64) -> Self {
        self.launch_at_ms = Some(unix_ms);
        self
    }

    /// Drops the message (the job is marked expired) if it has not started
    /// by this Unix time, in milliseconds.
    pub fn expires_at_ms(mut self, unix_ms: u64) -> Self {
        self.expires_at_ms = Some(unix_ms);
        self
    }
}
