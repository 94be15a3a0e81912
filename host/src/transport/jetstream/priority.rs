//! Priorities on JetStream: one durable consumer per (channel, handler,
//! level), and a pull that shares its room between them.
//!
//! A message above priority 0 travels on its level's subjects
//! (`wire::subject_at`, `sluice-p.<level>.<channel>` and
//! `sluice-pc.<level>.<handler>.<channel>`), read by that level's consumer
//! (`streams::level_consumer_name`), created the first time this host sees
//! the level used. Level 0 is the consumer and subjects of every earlier
//! version, so old messages and plain `js.publish` producers are served as
//! before.
//!
//! A pull of `max` gives `crate::flow::priority::urgent_share(max)` (up to
//! `max - max / 4`) to the levels 9..1 with work, highest first, and the
//! rest to the level that has gone the most pulls without a start while it
//! had work (level 0 on a tie): with only urgent levels and level 0 busy,
//! that is level 0 every pull; a level between is served in turn, so no
//! level starves. Room one part leaves unused goes to the other. With no
//! level above 0 in use the pull is exactly the one-consumer pull of
//! before: one fetch, then (nothing there) one wait for the first message.
//!
//! Which levels have work is known without a round trip per empty level:
//! a core NATS subscription on the level subjects of this (channel,
//! handler) marks a level and wakes an idle pull; a fetch that drains a
//! level (fewer messages than asked, or the last one's `pending` is 0)
//! clears it; a probe at `register` and every [`PROBE_EVERY`] (which
//! level subjects the stream holds, then each level consumer's
//! `num_pending` and `num_ack_pending`) marks what the subscription cannot
//! see: messages published while this host was not listening, deliveries
//! coming back after an ack wait or a NAK, schedules the server fires
//! (which reach no subscriber; those this host sent also set a timer for
//! their time, `expect_at`). A notification can arrive before the
//! stream stored its message (a replicated stream stores it after a
//! quorum), so a level just notified stays marked for [`FRESH`] whatever a
//! fetch says.
//!
//! The idle wait (level 0's pull that waits for a first message) runs as
//! its own task: a notification wakes the pull, which leaves that request
//! running instead of dropping it (the server would still hand a message
//! to a dropped request, which would then wait out the ack wait); the
//! next pull takes what it got, or hands it back (a NAK) if it waited
//! more than half the ack wait for a pull (the pump was busy).

use std::cmp::Reverse;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::super::{Subscription, wire};
use super::{JetStream, JetStreamError, STREAM, streams};
use crate::message::now_ms;
use crate::message::options::MAX_PRIORITY;

/// Levels 0 to 9.
const LEVELS: usize = MAX_PRIORITY as usize + 1;
/// How often a host asks the server which levels have messages.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A schedule this host sent to a level fires about its time plus
/// these: its level is marked (as notified) at each.
const FIRE_MARGINS: [Duration; 2] = [Duration::from_millis(5), Duration::from_millis(1100)];
/// Schedules due later than this are left to the probes (no timer).
const LONGEST_TIMER: Duration = Duration::from_secs(600);
/// How long a notified level stays marked whatever a fetch says.
const FRESH: Duration = Duration::from_millis(250);
/// How often a pull looks again at a level notified but not yet stored.
const FRESH_POLL: Duration = Duration::from_millis(10);

/// What one fetch got: the messages, or why not.
type Pulled = Result<Vec<jetstream::Message>, String>;

/// A (channel, handler)'s levels, shared by its pump and its watcher.
#[derive(Default)]
pub(super) struct Levels {
    state: Mutex<State>,
    /// A level got work.
    wake: Notify,
    /// Level 0's waiting pull, left running by a pull a notification
    /// woke, with when it ended.
    idle: Mutex<Option<JoinHandle<(Pulled, Instant)>>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// The consumer of each level above 0 (index = level), once created.
    consumers: [Option<PullConsumer>; LEVELS],
    /// Levels seen in use (a consumer is made for each).
    known: [bool; LEVELS],
    /// Levels that may have messages to fetch now.
    work: [bool; LEVELS],
    /// Until when a notified level stays marked.
    fresh_until: [Option<Instant>; LEVELS],
    /// Pulls in a row in which the level had work and started nothing.
    starved: [u32; LEVELS],
}

impl Drop for Levels {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.watcher).take() {
            h.abort();
        }
        if let Some(h) = lock(&self.idle).take() {
            h.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Levels {
    /// Marks `level` as having work (`fresh`: just notified).
    fn mark(&self, level: usize, fresh: bool) {
        let mut s = lock(&self.state);
        s.known[level] = true;
        s.work[level] = true;
        if fresh {
            s.fresh_until[level] = Some(Instant::now() + FRESH);
        }
    }

    fn any_fresh(&self) -> bool {
        let now = Instant::now();
        let s = lock(&self.state);
        (1..LEVELS).any(|l| s.work[l] && s.fresh_until[l].is_some_and(|t| t > now))
    }

    fn consumer(&self, level: usize) -> Option<PullConsumer> {
        lock(&self.state).consumers[level].clone()
    }

    fn set_consumer(&self, level: usize, c: Option<PullConsumer>) {
        lock(&self.state).consumers[level] = c;
    }

    /// What level 0's waiting pull got, if it ended. A message it got
    /// more than `stale` ago (the pump was busy since: no permit asked
    /// for more) is handed back instead: nothing heartbeats it, and past
    /// the ack wait the server gives it to another host too.
    async fn idle_result(&self, stale: Duration) -> Option<Pulled> {
        let handle = {
            let mut idle = lock(&self.idle);
            if !idle.as_ref().is_some_and(|h| h.is_finished()) {
                return None;
            }
            idle.take()?
        };
        match handle.await {
            Ok((Ok(msgs), ended)) if ended.elapsed() > stale => {
                for m in msgs {
                    if let Err(e) = m.ack_with(jetstream::AckKind::Nak(None)).await {
                        tracing::debug!(error = %e, "cannot hand a held message back; it comes back after the ack wait");
                    }
                }
                Some(Ok(Vec::new()))
            }
            Ok((r, _)) => Some(r),
            Err(e) => Some(Err(e.to_string())),
        }
    }

    /// Waits for level 0's first message (up to `wait`), or for a level
    /// to get work: `None` when woken (the waiting pull runs on).
    async fn idle_wait(&self, plain: &PullConsumer, wait: Duration) -> Option<Pulled> {
        let taken = lock(&self.idle).take();
        let mut handle = taken.unwrap_or_else(|| tokio::spawn(long_poll(plain.clone(), wait)));
        tokio::select! {
            r = &mut handle => Some(r.map_or_else(|e| Err(e.to_string()), |(r, _)| r)),
            _ = self.wake.notified() => {
                *lock(&self.idle) = Some(handle);
                None
            }
        }
    }
}

/// How a pull of `max` shares its room: `rest` to `rest_level` first,
/// then the rest to the levels with work from 9 down, then to level 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    rest_level: usize,
    rest: usize,
}

/// `share` is what `urgent_share(max)` gave.
fn plan(max: usize, share: usize, work: &[bool; LEVELS], starved: &[u32; LEVELS]) -> Plan {
    if !work[1..].iter().any(|w| *w) {
        return Plan {
            rest_level: 0,
            rest: max,
        };
    }
    let rest_level = (0..LEVELS)
        .filter(|&l| l == 0 || work[l])
        .max_by_key(|&l| (starved[l], Reverse(l)))
        .unwrap_or(0);
    Plan {
        rest_level,
        rest: max - share.min(max),
    }
}

/// After a pull: each level's starved count, and the levels it drained
/// (unmarked, unless notified within [`FRESH`]).
fn settle(
    s: &mut State,
    got: &[usize; LEVELS],
    fetched: &[bool; LEVELS],
    drained: &[bool; LEVELS],
) {
    let now = Instant::now();
    s.starved[0] = if fetched[0] {
        0
    } else {
        s.starved[0].saturating_add(1)
    };
    for l in 1..LEVELS {
        if !s.work[l] {
            s.starved[l] = 0;
            continue;
        }
        s.starved[l] = if got[l] > 0 {
            0
        } else {
            s.starved[l].saturating_add(1)
        };
        if drained[l] && s.fresh_until[l].is_none_or(|t| t <= now) {
            s.work[l] = false;
            s.starved[l] = 0;
        }
    }
}

/// Takes up to `n` messages there are now, without waiting.
pub(super) async fn fetch_now(consumer: &PullConsumer, n: usize, wait: Duration) -> Pulled {
    let stream = consumer
        .fetch()
        .max_messages(n)
        .expires(wait)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    collect_bounded(stream, wait).await
}

/// The messages of one pull request that expires after `wait`. Bounded on
/// the client too: a pull request lost in a reconnect would otherwise
/// never be answered.
async fn collect_bounded<S, E>(stream: S, wait: Duration) -> Pulled
where
    S: futures_util::TryStream<Ok = jetstream::Message, Error = E>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(wait * 2, stream.try_collect::<Vec<_>>()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Ok(Vec::new()),
    }
}

/// Waits up to `wait` for one message; says when it ended.
async fn long_poll(consumer: PullConsumer, wait: Duration) -> (Pulled, Instant) {
    let pulled = async {
        let stream = consumer
            .batch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        collect_bounded(stream, wait).await
    };
    let r = pulled.await;
    (r, Instant::now())
}

/// Whether `fetched` of `asked` leaves the level with nothing to deliver.
fn drains(fetched: &[jetstream::Message], asked: usize) -> bool {
    fetched.len() < asked
        || fetched
            .last()
            .and_then(|m| m.info().ok())
            .is_some_and(|i| i.pending == 0)
}

impl JetStream {
    /// The levels of `sub` (made, without a watcher, if `register` did not).
    pub(super) fn levels(&self, sub: &Subscription) -> Arc<Levels> {
        lock(&self.inner.levels)
            .entry(sub.clone())
            .or_default()
            .clone()
    }

    /// Starts watching the levels of `sub` (once): listens for its
    /// urgent messages, probes the server once (so a pull right after
    /// `register` knows the levels that have messages already), then
    /// leaves the rest to [`watch`].
    pub(super) async fn watch_levels(&self, sub: &Subscription) {
        let levels = self.levels(sub);
        if lock(&levels.watcher)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let (client, js) = (&self.inner.client, &self.inner.js);
        let ack_wait = self.inner.settings.ack_wait;
        let notes = subscribe(client, sub).await;
        probe(js, sub, ack_wait, &levels).await;
        let task = watch(
            client.clone(),
            js.clone(),
            sub.clone(),
            ack_wait,
            notes,
            Arc::downgrade(&levels),
        );
        let mut watcher = lock(&levels.watcher);
        if let Some(old) = watcher.replace(tokio::spawn(task)) {
            old.abort();
        }
    }

    /// A schedule this host sent to `target` fires at `at` (Unix ms): the
    /// server stores what it fires without a message a subscriber sees,
    /// so the level of every local subscription that reads `target` is
    /// marked then, instead of at the next probe.
    pub(super) fn expect_at(&self, target: &str, at: i64) {
        let level = wire::level_of(target);
        if level == 0 {
            return;
        }
        let delay = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
        if delay > LONGEST_TIMER {
            return;
        }
        let reading: Vec<Weak<Levels>> = lock(&self.inner.levels)
            .iter()
            .filter(|(sub, _)| {
                target == wire::subject_at(&sub.channel, level)
                    || target == wire::continuation_subject_at(&sub.consumer, &sub.channel, level)
            })
            .map(|(_, levels)| Arc::downgrade(levels))
            .collect();
        let level = usize::from(level);
        for levels in reading {
            if let Some(l) = levels.upgrade() {
                lock(&l.state).known[level] = true;
            }
            tokio::spawn(async move {
                let start = tokio::time::Instant::now() + delay;
                for margin in FIRE_MARGINS {
                    tokio::time::sleep_until(start + margin).await;
                    let Some(l) = levels.upgrade() else { return };
                    l.mark(level, true);
                    l.wake.notify_one();
                }
            });
        }
    }

    /// Up to `max` messages of `sub`, shared between its levels; waits up
    /// to `fetch_wait` for a first one when there is none.
    pub(super) async fn pull_levels(
        &self,
        sub: &Subscription,
        plain: &PullConsumer,
        name: &str,
        max: usize,
    ) -> Result<Vec<jetstream::Message>, JetStreamError> {
        let levels = self.levels(sub);
        let wait = self.inner.settings.fetch_wait;
        let err = |reason: String| JetStreamError::Fetch {
            consumer: name.to_owned(),
            reason,
        };
        let deadline = Instant::now() + wait;
        if max == 0 {
            return Ok(Vec::new());
        }
        loop {
            let mut out = match levels.idle_result(self.inner.settings.ack_wait / 2).await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    self.recreate_if_removed(sub).await;
                    return Err(err(e));
                }
                None => Vec::new(),
            };
            self.pull_round(sub, &levels, plain, max, &mut out)
                .await
                .map_err(err)?;
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            if levels.any_fresh() {
                // Notified, not stored yet.
                tokio::select! {
                    _ = levels.wake.notified() => {}
                    _ = tokio::time::sleep(FRESH_POLL) => {}
                }
                continue;
            }
            match levels.idle_wait(plain, wait).await {
                Some(Ok(m)) => return Ok(m),
                Some(Err(e)) => {
                    self.recreate_if_removed(sub).await;
                    return Err(err(e));
                }
                None => continue,
            }
        }
    }

    /// One pass over the levels, adding to `out` (which may hold level 0's
    /// messages already) up to `max`.
    async fn pull_round(
        &self,
        sub: &Subscription,
        levels: &Levels,
        plain: &PullConsumer,
        max: usize,
        out: &mut Vec<jetstream::Message>,
    ) -> Result<(), String> {
        let wait = self.inner.settings.fetch_wait;
        let mut got = [0usize; LEVELS];
        let mut fetched = [false; LEVELS];
        let mut drained = [false; LEVELS];
        got[0] = out.len();
        fetched[0] = !out.is_empty();
        let room = max.saturating_sub(out.len());
        let (plan, consumers) = {
            let s = lock(&levels.state);
            let share = if s.work[1..].iter().any(|w| *w) {
                crate::flow::priority::urgent_share(room)
            } else {
                0
            };
            let consumers: Vec<Option<PullConsumer>> = (0..LEVELS)
                .map(|l| {
                    if l == 0 {
                        Some(plain.clone())
                    } else if s.work[l] {
                        s.consumers[l].clone()
                    } else {
                        None
                    }
                })
                .collect();
            // A level whose consumer is not made yet cannot take the rest
            // part (level 0 would lose its quarter meanwhile).
            let mut ready = [false; LEVELS];
            for (l, c) in consumers.iter().enumerate() {
                ready[l] = c.is_some();
            }
            (plan(room, share, &ready, &s.starved), consumers)
        };
        // The rest part, then the levels from 9 down, then level 0.
        let mut order = Vec::with_capacity(LEVELS + 1);
        if plan.rest > 0 {
            order.push((plan.rest_level, Some(plan.rest)));
        }
        order.extend((1..LEVELS).rev().map(|l| (l, None)));
        order.push((0, None));
        for (level, cap) in order {
            let room = max.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            let Some(consumer) = &consumers[level] else {
                continue;
            };
            if drained[level] {
                continue;
            }
            let n = cap.unwrap_or(room).min(room);
            let msgs = match fetch_now(consumer, n, wait).await {
                Ok(m) => m,
                // The consumer's own limits reached (a server-side cap on
                // ack pending, a consumer made by an older version with
                // one): nothing to take now.
                Err(e) if e.contains("409") => Vec::new(),
                Err(e) if level == 0 => {
                    self.recreate_if_removed(sub).await;
                    return Err(e);
                }
                Err(e) => {
                    // The watcher's next probe makes it again if it was
                    // removed; its messages wait in the stream.
                    tracing::warn!(channel = %sub.channel, handler = %sub.consumer, level, error = %e, "cannot fetch from a priority level's consumer");
                    levels.set_consumer(level, None);
                    drained[level] = true;
                    continue;
                }
            };
            fetched[level] = true;
            drained[level] = drains(&msgs, n);
            got[level] += msgs.len();
            out.extend(msgs);
        }
        settle(&mut lock(&levels.state), &got, &fetched, &drained);
        Ok(())
    }
}

/// The core subjects on which `sub`'s messages above level 0 arrive.
fn note_subjects(sub: &Subscription) -> [String; 2] {
    [
        format!("{}.*.{}", wire::PRIO_PREFIX, sub.channel),
        format!(
            "{}.*.{}.{}",
            wire::PRIO_CONT_PREFIX,
            wire::handler_token(&sub.consumer),
            sub.channel
        ),
    ]
}

type Notes = futures_util::stream::Select<async_nats::Subscriber, async_nats::Subscriber>;

async fn subscribe(client: &async_nats::Client, sub: &Subscription) -> Option<Notes> {
    let [a, b] = note_subjects(sub);
    let subscribed = async {
        let a = client.subscribe(a).await?;
        let b = client.subscribe(b).await?;
        Ok::<_, async_nats::SubscribeError>(futures_util::stream::select(a, b))
    };
    match subscribed.await {
        Ok(notes) => Some(notes),
        Err(e) => {
            tracing::warn!(channel = %sub.channel, handler = %sub.consumer, error = %e, "cannot listen for urgent messages; the next probe finds them");
            None
        }
    }
}

async fn next_note(notes: &mut Option<Notes>) -> Option<async_nats::Message> {
    match notes {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

/// Keeps `levels` up to date: notifications as they come, a probe every
/// [`PROBE_EVERY`]. Ends with the levels.
async fn watch(
    client: async_nats::Client,
    js: jetstream::Context,
    sub: Subscription,
    ack_wait: Duration,
    mut notes: Option<Notes>,
    levels: Weak<Levels>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROBE_EVERY, PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            note = next_note(&mut notes) => {
                let Some(note) = note else {
                    notes = None;
                    continue;
                };
                let level = usize::from(wire::level_of(note.subject.as_str()));
                let Some(levels) = levels.upgrade() else { return };
                if level == 0 {
                    continue;
                }
                levels.mark(level, true);
                if levels.consumer(level).is_none() {
                    ensure_level(&js, &sub, level, ack_wait, &levels).await;
                }
                levels.wake.notify_one();
            }
            _ = tick.tick() => {
                let Some(levels) = levels.upgrade() else { return };
                if notes.is_none() {
                    notes = subscribe(&client, &sub).await;
                }
                probe(&js, &sub, ack_wait, &levels).await;
            }
        }
    }
}

/// Makes (or finds) the consumer of `level`.
async fn ensure_level(
    js: &jetstream::Context,
    sub: &Subscription,
    level: usize,
    ack_wait: Duration,
    levels: &Levels,
) -> Option<PullConsumer> {
    let made = async {
        let stream = js
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let level = u8::try_from(level).map_err(|e| e.to_string())?;
        streams::ensure_consumer(&stream, sub, level, ack_wait)
            .await
            .map_err(|e| e.to_string())
    };
    match made.await {
        Ok(c) => {
            levels.set_consumer(level, Some(c.clone()));
            Some(c)
        }
        Err(e) => {
            tracing::warn!(channel = %sub.channel, handler = %sub.consumer, level, error = %e, "cannot make a priority level's consumer yet; the next probe tries again");
            None
        }
    }
}

/// Marks the levels the server says have messages to deliver (or out to a
/// host, which may come back), after looking for levels used without this
/// host knowing (their subjects in the stream).
async fn probe(js: &jetstream::Context, sub: &Subscription, ack_wait: Duration, levels: &Levels) {
    {
        match js.get_stream_no_info(STREAM).await {
            Ok(stream) => {
                for filter in note_subjects(sub) {
                    let found = async {
                        let mut found = Vec::new();
                        let mut s = stream.info_with_subjects(&filter).await?;
                        while let Some((subject, _)) = s.try_next().await? {
                            found.push(usize::from(wire::level_of(&subject)));
                        }
                        Ok::<_, async_nats::jetstream::stream::InfoError>(found)
                    };
                    match found.await {
                        Ok(found) => {
                            let mut s = lock(&levels.state);
                            for l in found.into_iter().filter(|l| *l > 0) {
                                s.known[l] = true;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(channel = %sub.channel, error = %e, "cannot list priority subjects")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the work stream"),
        }
    }
    let known: Vec<usize> = {
        let s = lock(&levels.state);
        (1..LEVELS).filter(|&l| s.known[l]).collect()
    };
    let mut woke = false;
    for level in known {
        let consumer = match levels.consumer(level) {
            Some(c) => Some(c),
            None => ensure_level(js, sub, level, ack_wait, levels).await,
        };
        let Some(mut consumer) = consumer else {
            continue;
        };
        match consumer.info().await {
            Ok(info) if info.num_pending > 0 || info.num_ack_pending > 0 => {
                levels.mark(level, false);
                woke = true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(channel = %sub.channel, level, error = %e, "cannot read a priority level's consumer; making it again at the next probe");
                levels.set_consumer(level, None);
            }
        }
    }
    if woke {
        levels.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(levels: &[usize]) -> [bool; LEVELS] {
        let mut w = [false; LEVELS];
        for l in levels {
            w[*l] = true;
        }
        w
    }

    #[test]
    fn without_urgent_work_a_pull_is_all_level_0() {
        let p = plan(8, 6, &work(&[]), &[0; LEVELS]);
        assert_eq!(
            p,
            Plan {
                rest_level: 0,
                rest: 8
            }
        );
    }

    #[test]
    fn a_quarter_goes_to_the_level_that_waited_longest() {
        // Level 0 on a tie.
        let p = plan(8, 6, &work(&[9]), &[0; LEVELS]);
        assert_eq!(
            p,
            Plan {
                rest_level: 0,
                rest: 2
            }
        );
        let mut starved = [0; LEVELS];
        starved[1] = 1;
        let p = plan(8, 6, &work(&[1, 9]), &starved);
        assert_eq!(p.rest_level, 1);
        // A level without work is not a candidate, however starved.
        starved[3] = 5;
        assert_eq!(plan(8, 6, &work(&[1, 9]), &starved).rest_level, 1);
        // The one-in-four queue-order pull of fewer than four.
        assert_eq!(plan(1, 0, &work(&[9]), &[0; LEVELS]).rest, 1);
        assert_eq!(plan(1, 1, &work(&[9]), &[0; LEVELS]).rest, 0);
    }

    #[test]
    fn levels_take_turns_with_level_0_under_a_flood_of_urgent_work() {
        // Levels 9 (flooded), 1 and 0 have work; level 9 takes the urgent
        // share each pull, the rest alternates between 0 and 1.
        let mut s = State {
            work: work(&[1, 9]),
            known: work(&[1, 9]),
            ..State::default()
        };
        let mut rest_levels = Vec::new();
        for _ in 0..6 {
            let p = plan(8, 6, &s.work, &s.starved);
            rest_levels.push(p.rest_level);
            let mut got = [0; LEVELS];
            let mut fetched = [false; LEVELS];
            got[9] = 6;
            fetched[9] = true;
            got[p.rest_level] += 2;
            fetched[p.rest_level] = true;
            settle(&mut s, &got, &fetched, &[false; LEVELS]);
        }
        assert_eq!(rest_levels, [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn a_drained_level_is_unmarked_unless_just_notified() {
        let mut s = State {
            work: work(&[4, 5]),
            ..State::default()
        };
        s.fresh_until[5] = Some(Instant::now() + Duration::from_secs(60));
        let fetched = work(&[0, 4, 5]);
        settle(&mut s, &[0; LEVELS], &fetched, &work(&[4, 5]));
        assert_eq!((s.work[4], s.work[5]), (false, true));
    }
}
