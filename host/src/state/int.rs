//! The integer encoding of `state-add`: a decimal `i64`, as JSON writes it
//! (`42`, `-7`), so the SDK's `get::<i64>` reads a counter that `add`
//! wrote, and `set(&n)` writes one `add` can add to. One place, because the
//! runtime (folding an add into a call's own writes), the ledger (its view
//! of the value) and the store (the value on disk) must agree byte for byte.

/// The integer stored in `value`; `None` if it is not one. Absent counts
/// as 0. Surrounding ASCII whitespace is allowed (JSON allows it); a
/// leading `+`, a fraction or an exponent is not (JSON numbers written by
/// `serde_json` for an `i64` never have them).
pub fn decode(value: Option<&[u8]>) -> Option<i64> {
    let Some(bytes) = value else {
        return Some(0);
    };
    let text = std::str::from_utf8(bytes).ok()?.trim_ascii();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `n` as stored.
pub fn encode(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// `value + delta`, encoded; `None` if `value` is not an integer or the sum
/// overflows.
pub fn add(value: Option<&[u8]>, delta: i64) -> Option<Vec<u8>> {
    decode(value)?.checked_add(delta).map(encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_json_writes_and_nothing_else() {
        for n in [0i64, 1, -1, 42, i64::MAX, i64::MIN] {
            let json = serde_json::to_vec(&n).unwrap_or_default();
            assert_eq!(decode(Some(&json)), Some(n));
            assert_eq!(encode(n), json);
        }
        assert_eq!(decode(None), Some(0), "absent counts as 0");
        assert_eq!(decode(Some(b" 7\n")), Some(7));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"1.0",
            b"1e3",
            b"\"1\"",
            b"null",
            b"9223372036854775808",
            b"\xff",
        ] {
            assert_eq!(decode(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn adds_without_overflowing() {
        assert_eq!(add(None, 5), Some(b"5".to_vec()));
        assert_eq!(add(Some(b"-2"), 5), Some(b"3".to_vec()));
        assert_eq!(add(Some(b"9223372036854775807"), 1), None);
        assert_eq!(add(Some(b"x"), 1), None);
    }
}
