//! Where a message's flow key comes from: a header, or a JSON pointer into
//! its body, as the operator declares it (`concurrency_key`, `rate_key`).

use std::fmt;

use crate::message::Headers;

/// Longest key kept, in bytes; a longer value is cut (at a character
/// boundary) so that a producer cannot make the host hold, log or store
/// a megabyte per key.
pub const MAX_KEY: usize = 256;

/// Where to read a message's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The first value of this header (any case).
    Header(String),
    /// A JSON pointer (RFC 6901) into the body, e.g. `/tenant/id`.
    Pointer(String),
}

impl KeySource {
    /// Parses the config form: `header:NAME`, or a JSON pointer (starts
    /// with `/`).
    pub fn parse(s: &str) -> Result<KeySource, String> {
        if let Some(name) = s.strip_prefix("header:") {
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!(
                    "{s:?}: a header name is visible ASCII without ':' (no spaces)"
                ));
            }
            return Ok(KeySource::Header(name.to_owned()));
        }
        if s.starts_with('/') {
            return Ok(KeySource::Pointer(s.to_owned()));
        }
        Err(format!(
            "{s:?} is neither header:NAME nor a JSON pointer into the body (such as /tenant)"
        ))
    }

    /// The key of a message with `headers` and `body`. A message without
    /// it (no such header, no such field, a body that is not JSON, a
    /// `null`) has the empty key: such messages share one key, so they are
    /// limited together rather than not at all. A string is the key as it
    /// is; any other JSON value is its JSON text (`42`, `true`).
    pub fn key_of(&self, headers: &Headers, body: &[u8]) -> String {
        let mut key = match self {
            KeySource::Header(name) => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            KeySource::Pointer(p) => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(v) => match v.pointer(p) {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                },
                Err(_) => String::new(),
            },
        };
        if key.len() > MAX_KEY {
            let mut cut = MAX_KEY;
            while !key.is_char_boundary(cut) {
                cut -= 1;
            }
            key.truncate(cut);
        }
        key
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Pointer(p) => f.write_str(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> Headers {
        vec![(k.to_owned(), v.to_owned())]
    }

    #[test]
    fn keys_come_from_a_header_or_a_pointer_and_missing_is_empty() {
        let tenant = KeySource::parse("header:X-Tenant").expect("parse");
        assert_eq!(
            tenant.key_of(&h("x-tenant", "a.b c ü\n"), b"{}"),
            "a.b c ü\n"
        );
        assert_eq!(tenant.key_of(&h("other", "a"), b"{}"), "");
        let p = KeySource::parse("/customer/id").expect("parse");
        let body = br#"{"customer": {"id": "c-1"}, "n": 4}"#;
        assert_eq!(p.key_of(&Vec::new(), body), "c-1");
        let n = KeySource::parse("/n").expect("parse");
        assert_eq!(n.key_of(&Vec::new(), body), "4");
        assert_eq!(p.key_of(&Vec::new(), b"not json"), "");
        assert_eq!(p.key_of(&Vec::new(), br#"{"customer": null}"#), "");
        let obj = KeySource::parse("/customer").expect("parse");
        assert_eq!(obj.key_of(&Vec::new(), body), r#"{"id":"c-1"}"#);
        let huge = format!(r#"{{"customer": {{"id": "{}"}}}}"#, "é".repeat(1000));
        assert_eq!(p.key_of(&Vec::new(), huge.as_bytes()).len(), MAX_KEY);
    }

    #[test]
    fn bad_sources_are_refused_with_the_forms() {
        for bad in ["tenant", "header:", "header:a b", "", "header:a:b"] {
            assert!(KeySource::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            KeySource::parse("header:t").map(|k| k.to_string()),
            Ok("header:t".into())
        );
    }
}
