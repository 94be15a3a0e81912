//! Message options: the few `Sluice-*` headers a producer may set to ask
//! the host for something about how its message runs (today: its
//! priority).
//!
//! Every other `Sluice-*` name is the host's own field (cursor, slice,
//! attempt, causation) and is refused from producers, so a producer can
//! never make a message pass for a later slice or attempt. An option is
//! different: it is the producer's to choose, so it is accepted from
//! every producer the same way (`sluice post`, the HTTP API, a handler's
//! post through its headers, a mapper's output, a plain NATS publish),
//! checked where it enters by [`check`] (a bad value is refused with the
//! rule, never silently dropped), carried on every transport like the
//! request name, and read by the host with [`Options::of`].
//!
//! To add an option: a name constant, an entry in [`OPTIONS`] with its
//! check, and a field in [`Options`] read in [`Options::of`].

use std::time::Duration;

use super::Headers;

/// The message's priority within its channel: `0` (the default) to
/// [`MAX_PRIORITY`], higher runs first (see `crate::flow::priority` for
/// how low priorities still get their turn).
pub const PRIORITY_HEADER: &str = "sluice-priority";

/// The highest priority.
pub const MAX_PRIORITY: u8 = 9;

/// One option header and the rule its value follows.
struct OptionHeader {
    name: &'static str,
    check: fn(&str) -> Result<(), String>,
}

/// Every option header a producer may set.
const OPTIONS: &[OptionHeader] = &[
    OptionHeader {
        name: PRIORITY_HEADER,
        check: check_priority,
    },
    OptionHeader {
        name: UNIQUE_HEADER,
        check: check_unique,
    },
    OptionHeader {
        name: UNIQUE_FOR_HEADER,
        check: check_unique_for,
    },
    OptionHeader {
        name: ON_DUPLICATE_HEADER,
        check: check_on_duplicate,
    },
    OptionHeader {
        name: DEBOUNCE_HEADER,
        check: check_unique,
    },
    OptionHeader {
        name: DEBOUNCE_FOR_HEADER,
        check: check_debounce_for,
    },
];

/// True when `name` (any case) is an option header.
pub fn is_option(name: &str) -> bool {
    OPTIONS.iter().any(|o| o.name.eq_ignore_ascii_case(name))
}

/// The option headers' names, for error messages.
pub fn names() -> Vec<&'static str> {
    OPTIONS.iter().map(|o| o.name).collect()
}

/// Checks an option header's value: `None` when `name` is no option,
/// else the rule it breaks, if any.
pub fn check(name: &str, value: &str) -> Option<Result<(), String>> {
    OPTIONS
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name))
        .map(|o| (o.check)(value).map_err(|rule| format!("header {}: {rule}", o.name)))
}

/// Checks a whole header list's options: each value (see [`check`]) and
/// that no option is given twice (which one would win is not obvious, so
/// neither does).
pub fn check_all(headers: &Headers) -> Result<(), String> {
    for (i, (name, value)) in headers.iter().enumerate() {
        if let Some(checked) = check(name, value) {
            checked?;
            if headers[..i]
                .iter()
                .any(|(earlier, _)| earlier.eq_ignore_ascii_case(name))
            {
                return Err(format!(
                    "header {} is given twice; give it once",
                    name.to_ascii_lowercase()
                ));
            }
        }
    }
    Ok(())
}

fn check_priority(value: &str) -> Result<(), String> {
    parse_priority(value).map(|_| ())
}

fn parse_priority(value: &str) -> Result<u8, String> {
    match value.trim().parse::<u8>() {
        Ok(p) if p <= MAX_PRIORITY => Ok(p),
        _ => Err(format!(
            "priority {:?} is not an integer from 0 to {MAX_PRIORITY} (higher runs first)",
            value.chars().take(40).collect::<String>()
        )),
    }
}

/// The options a message carries, as the host reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// 0 (default) to [`MAX_PRIORITY`].
    pub priority: u8,
}

impl Options {
    /// The options in `headers` (the first value of each). A value that
    /// breaks its rule reads as the default: it can only come from a
    /// producer that bypassed every entry check (a raw NATS publish), and
    /// a message is not refused at delivery for an option.
    pub fn of(headers: &Headers) -> Options {
        let first = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        Options {
            priority: first(PRIORITY_HEADER)
                .and_then(|v| parse_priority(v).ok())
                .unwrap_or(0),
        }
    }
}

/// The first value of header `name` (any case) in `headers`.
fn first<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sets `name` to `value` in `headers`, replacing any value it had (the
/// CLI's and API's own flags win over a `--header` of the same name).
pub fn set(headers: &mut Headers, name: &str, value: String) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value));
}

/// A uniqueness key: while a message with the same key on the same
/// channel is waiting or running (at most `sluice-unique-for`), a new post
/// is rejected (answered with the existing message and jobs) or replaces
/// the waiting one (`sluice-on-duplicate: replace`). See
/// `store/unique.rs` (embedded) and `transport/jetstream/unique.rs`.
pub const UNIQUE_HEADER: &str = "sluice-unique";

/// How long a uniqueness key is held at most (`10m`, `1h`; default
/// [`DEFAULT_UNIQUE_FOR`]), even if the job never ends.
pub const UNIQUE_FOR_HEADER: &str = "sluice-unique-for";

/// `reject` (default) or `replace`.
pub const ON_DUPLICATE_HEADER: &str = "sluice-on-duplicate";

/// Longest uniqueness key, in bytes.
pub const MAX_UNIQUE_KEY: usize = 256;

/// Default `sluice-unique-for`.
pub const DEFAULT_UNIQUE_FOR: Duration = Duration::from_secs(3600);

/// Longest `sluice-unique-for`.
pub const MAX_UNIQUE_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a post with a held uniqueness key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDuplicate {
    /// The post is refused; the answer names the message holding the key.
    #[default]
    Reject,
    /// The holder's waiting jobs are cancelled and the post goes in (a
    /// running one cannot be replaced: then it is refused).
    Replace,
}

/// A message's uniqueness key, as the host reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    /// The key (per channel).
    pub key: String,
    /// How long it is held at most.
    pub ttl: Duration,
    /// What a duplicate does.
    pub on_duplicate: OnDuplicate,
}

fn check_unique(value: &str) -> Result<(), String> {
    let key = value.trim();
    if key.is_empty() || key.len() > MAX_UNIQUE_KEY {
        return Err(format!(
            "a uniqueness key is 1 to {MAX_UNIQUE_KEY} bytes, not {}",
            key.len()
        ));
    }
    Ok(())
}

fn parse_unique_for(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= Duration::from_secs(1) && d <= MAX_UNIQUE_FOR => Ok(d),
        _ => Err(format!(
            "{:?} is not a duration from 1s to 30d (e.g. 10m, 1h)",
            value.chars().take(40).collect::<String>()
        )),
    }
}

fn check_unique_for(value: &str) -> Result<(), String> {
    parse_unique_for(value).map(|_| ())
}

fn parse_on_duplicate(value: &str) -> Result<OnDuplicate, String> {
    match value.trim() {
        "reject" => Ok(OnDuplicate::Reject),
        "replace" => Ok(OnDuplicate::Replace),
        other => Err(format!(
            "{:?} is neither reject nor replace",
            other.chars().take(40).collect::<String>()
        )),
    }
}

fn check_on_duplicate(value: &str) -> Result<(), String> {
    parse_on_duplicate(value).map(|_| ())
}

/// The uniqueness key `headers` carry, if any (read leniently like
/// [`Options::of`]: a bad time-to-live or policy reads as the default; a
/// bad key as none).
pub fn unique(headers: &Headers) -> Option<Unique> {
    let first = |name: &str| first(headers, name);
    let key = first(UNIQUE_HEADER).filter(|k| check_unique(k).is_ok())?;
    Some(Unique {
        key: key.trim().to_owned(),
        ttl: first(UNIQUE_FOR_HEADER)
            .and_then(|v| parse_unique_for(v).ok())
            .unwrap_or(DEFAULT_UNIQUE_FOR),
        on_duplicate: first(ON_DUPLICATE_HEADER)
            .and_then(|v| parse_on_duplicate(v).ok())
            .unwrap_or_default(),
    })
}

/// A debounce key: of a burst of messages with the same key on the same
/// channel, only the last runs, once no message with the key came for
/// `sluice-debounce-for` (see `store/debounce.rs`, `transport/jetstream/
/// debounce.rs`).
pub const DEBOUNCE_HEADER: &str = "sluice-debounce";

/// The debounce window (`5s`; default [`DEFAULT_DEBOUNCE_FOR`], 1s to 1d).
pub const DEBOUNCE_FOR_HEADER: &str = "sluice-debounce-for";

/// Default `sluice-debounce-for`.
pub const DEFAULT_DEBOUNCE_FOR: Duration = Duration::from_secs(5);

fn parse_debounce_for(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(24 * 3600) => Ok(d),
        _ => Err(format!(
            "{:?} is not a duration from 1s to 1d (e.g. 5s, 1m)",
            value.chars().take(40).collect::<String>()
        )),
    }
}

fn check_debounce_for(value: &str) -> Result<(), String> {
    parse_debounce_for(value).map(|_| ())
}

/// The debounce key and window `headers` carry, if any (a bad window
/// reads as the default).
pub fn debounce(headers: &Headers) -> Option<(String, Duration)> {
    let first = |name: &str| first(headers, name);
    let key = first(DEBOUNCE_HEADER).filter(|k| check_unique(k).is_ok())?;
    let window = first(DEBOUNCE_FOR_HEADER)
        .and_then(|v| parse_debounce_for(v).ok())
        .unwrap_or(DEFAULT_DEBOUNCE_FOR);
    Some((key.trim().to_owned(), window))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_priority_is_an_integer_from_0_to_9() {
        for ok in ["0", "9", " 5 ", "07"] {
            assert_eq!(check(PRIORITY_HEADER, ok), Some(Ok(())), "{ok:?}");
        }
        for bad in [
            "",
            "10",
            "-1",
            "high",
            "1.5",
            "255",
            "99999999999999999999",
            "٣",
        ] {
            let err = check("Sluice-Priority", bad);
            assert!(
                matches!(&err, Some(Err(e)) if e.contains("0 to 9")),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(check("x-priority", "high"), None);
    }

    #[test]
    fn options_are_read_leniently_and_checked_strictly() {
        assert_eq!(Options::of(&h(&[])).priority, 0);
        assert_eq!(Options::of(&h(&[("SLUICE-PRIORITY", "7")])).priority, 7);
        // A foreign producer's bad value: the default, not a refused message.
        assert_eq!(Options::of(&h(&[(PRIORITY_HEADER, "urgent")])).priority, 0);
        assert!(check_all(&h(&[(PRIORITY_HEADER, "1"), ("a", "b")])).is_ok());
        let twice = check_all(&h(&[(PRIORITY_HEADER, "1"), ("Sluice-Priority", "2")]));
        assert!(twice.is_err_and(|e| e.contains("twice")));
        assert!(check_all(&h(&[(PRIORITY_HEADER, "x")])).is_err());
    }

    #[test]
    fn a_flag_replaces_a_header_of_the_same_name() {
        let mut headers = h(&[("Sluice-Priority", "1"), ("a", "b")]);
        set(&mut headers, PRIORITY_HEADER, "4".into());
        assert_eq!(headers, h(&[("a", "b"), (PRIORITY_HEADER, "4")]));
    }

    #[test]
    fn a_uniqueness_key_is_checked_and_read_with_its_defaults() {
        assert_eq!(check(UNIQUE_HEADER, "order 1"), Some(Ok(())));
        assert!(matches!(check(UNIQUE_HEADER, " "), Some(Err(_))));
        assert!(matches!(
            check(UNIQUE_HEADER, &"k".repeat(257)),
            Some(Err(_))
        ));
        assert_eq!(check(UNIQUE_FOR_HEADER, "10m"), Some(Ok(())));
        for bad in ["0s", "31d", "soon", ""] {
            assert!(
                matches!(check(UNIQUE_FOR_HEADER, bad), Some(Err(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(check(ON_DUPLICATE_HEADER, "merge"), Some(Err(_))));
        assert_eq!(unique(&h(&[])), None);
        assert_eq!(
            unique(&h(&[
                ("Sluice-Unique", " k "),
                (ON_DUPLICATE_HEADER, "replace")
            ])),
            Some(Unique {
                key: "k".into(),
                ttl: DEFAULT_UNIQUE_FOR,
                on_duplicate: OnDuplicate::Replace
            })
        );
        // Read leniently: a foreign producer's bad TTL is the default.
        assert_eq!(
            unique(&h(&[(UNIQUE_HEADER, "k"), (UNIQUE_FOR_HEADER, "x")])).map(|u| u.ttl),
            Some(DEFAULT_UNIQUE_FOR)
        );
    }

    #[test]
    fn a_debounce_key_has_a_window_from_1s_to_1d() {
        assert_eq!(check(DEBOUNCE_HEADER, "sync a"), Some(Ok(())));
        assert!(matches!(check(DEBOUNCE_HEADER, ""), Some(Err(_))));
        assert_eq!(check(DEBOUNCE_FOR_HEADER, "5s"), Some(Ok(())));
        for bad in ["500ms", "2d", "x"] {
            assert!(
                matches!(check(DEBOUNCE_FOR_HEADER, bad), Some(Err(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            debounce(&h(&[(DEBOUNCE_HEADER, "k")])),
            Some(("k".into(), DEFAULT_DEBOUNCE_FOR))
        );
        assert_eq!(
            debounce(&h(&[("Sluice-Debounce", "k"), (DEBOUNCE_FOR_HEADER, "2s")])),
            Some(("k".into(), Duration::from_secs(2)))
        );
    }
}
