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
const OPTIONS: &[OptionHeader] = &[OptionHeader {
    name: PRIORITY_HEADER,
    check: check_priority,
}];

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

/// Sets `name` to `value` in `headers`, replacing any value it had (the
/// CLI's and API's own flags win over a `--header` of the same name).
pub fn set(headers: &mut Headers, name: &str, value: String) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value));
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
}
