//! The one rule for names: channels and plugin names, checked the same way
//! wherever one enters the host (a plugin's `describe()`, a handler's post,
//! the HTTP API, the CLI, a JetStream subject).
//!
//! Why one rule, kept strict: a channel becomes a NATS subject
//! (`sluice.<channel>`, `sluice-cont.<handler>.<channel>`), part of a
//! durable consumer name (a file name on the NATS server), an SQL value and
//! a log field. A name that is valid in one of those places and not in
//! another would be accepted at the door and fail somewhere out of sight
//! (a post that can never be published, a consumer that cannot be
//! created), so the alphabet is the intersection and nothing is escaped.
//!
//! - **Channel**: dot-separated segments of `[A-Za-z0-9_-]`, 1 to
//!   [`MAX_CHANNEL`] bytes. No empty segment (`a..b`, `.a`, `a.`: an empty
//!   NATS token) and no wildcard (`*`, `>`), which the alphabet excludes.
//! - **Plugin name**: one segment, `[A-Za-z0-9_-]`, 1 to
//!   [`MAX_PLUGIN_NAME`] bytes. No dot: the handler's name is a single
//!   token of its continuation subject, so `a.b` would be read back as
//!   handler `a` on channel `b.<channel>`.
//!
//! The lengths keep the durable consumer name (`<plugin>__<channel>__<tag>`)
//! under the 255 bytes a file name may have.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL: usize = 128;

/// Longest plugin name, in bytes.
pub const MAX_PLUGIN_NAME: usize = 64;

/// Most channels one plugin may list: each is a pump and a durable consumer.
pub const MAX_CHANNELS_PER_PLUGIN: usize = 32;

/// Why a name was refused. The message quotes the name (escaped, cut to 80
/// bytes) and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A channel name broke the rule.
    #[error(
        "channel name {name} is invalid: {why} (allowed: segments of A-Z a-z 0-9 _ - joined by single dots, 1 to {MAX_CHANNEL} bytes)"
    )]
    Channel {
        /// The name, quoted and escaped.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A plugin name broke the rule.
    #[error(
        "plugin name {name} is invalid: {why} (allowed: A-Z a-z 0-9 _ -, 1 to {MAX_PLUGIN_NAME} bytes, no dot)"
    )]
    Plugin {
        /// The name, quoted and escaped.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The name as it appears in an error: quoted, escaped (newlines and other
/// control characters cannot forge a log line), at most 80 bytes of it.
pub fn quote(name: &str) -> String {
    let mut end = name.len().min(80);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < name.len() { "…" } else { "" };
    format!("{:?}{more}", &name[..end])
}

/// Checks a channel name; see the module docs.
pub fn check_channel(name: &str) -> Result<(), NameError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_CHANNEL {
        Some("it is too long")
    } else if name.split('.').any(str::is_empty) {
        Some("it has an empty segment")
    } else if !name.bytes().all(|b| b == b'.' || token_byte(b)) {
        Some("it has a character outside the alphabet")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(NameError::Channel {
            name: quote(name),
            why,
        }),
    }
}

/// Whether `name` is a valid channel name.
pub fn is_channel(name: &str) -> bool {
    check_channel(name).is_ok()
}

/// Checks a plugin name; see the module docs.
pub fn check_plugin_name(name: &str) -> Result<(), NameError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_PLUGIN_NAME {
        Some("it is too long")
    } else if name.contains('.') {
        Some("it has a dot")
    } else if !name.bytes().all(token_byte) {
        Some("it has a character outside the alphabet")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(NameError::Plugin {
            name: quote(name),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        for good in ["a", "task.reminder", "a-b_c.D9", &"x".repeat(MAX_CHANNEL)] {
            assert_eq!(check_channel(good), Ok(()), "{good:?}");
        }
        let bad = [
            ("", "empty"),
            ("a..b", "empty segment"),
            (".a", "empty segment"),
            ("a.", "empty segment"),
            (".", "empty segment"),
            ("a b", "alphabet"),
            ("a*", "alphabet"),
            ("a.>", "alphabet"),
            ("sluice.*.x", "alphabet"),
            ("a\nb", "alphabet"),
            ("a\rb", "alphabet"),
            ("a\0b", "alphabet"),
            ("é", "alphabet"),
            ("a/b", "alphabet"),
            ("a\tb", "alphabet"),
        ];
        for (name, why) in bad {
            let err = check_channel(name).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(why)),
                "{name:?}: {err:?}"
            );
        }
        let long = "x".repeat(MAX_CHANNEL + 1);
        assert!(check_channel(&long).is_err());
    }

    #[test]
    fn plugin_names() {
        for good in ["task-reminder", "a_b", "X9", &"p".repeat(MAX_PLUGIN_NAME)] {
            assert_eq!(check_plugin_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "a.b",
            "a b",
            "a*",
            "a>",
            "é",
            "a\nb",
            &"p".repeat(MAX_PLUGIN_NAME + 1),
        ] {
            assert!(check_plugin_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_quote_names_safely() {
        let err = check_channel("a\nINFO forged line")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("\\n"), "{err}");
        let long = format!("{}é{}", "a".repeat(79), "b".repeat(500));
        let q = quote(&long);
        assert!(q.len() < 100 && q.ends_with('…'), "{q}");
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_checked_without_panic_and_accepted_only_by_the_rule(s in "\\PC{0,200}|[a-z._*> -]{0,20}") {
            let rule = !s.is_empty()
                && s.len() <= MAX_CHANNEL
                && s.split('.').all(|seg| !seg.is_empty() && seg.bytes().all(token_byte));
            proptest::prop_assert_eq!(check_channel(&s).is_ok(), rule);
            let plugin = !s.is_empty() && s.len() <= MAX_PLUGIN_NAME && s.bytes().all(token_byte);
            proptest::prop_assert_eq!(check_plugin_name(&s).is_ok(), plugin);
            if let Err(e) = check_channel(&s) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
