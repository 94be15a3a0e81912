//! How log fields are written: like `tracing-subscriber`'s default
//! (`message field=value ...`), with every control character escaped.
//!
//! Why: plugin log lines, guest error and panic messages, channel names and
//! client input end up in log fields. Written raw, a newline in one of them
//! starts what looks like a new log entry (`...\nINFO job succeeded`), and
//! an ANSI escape rewrites the terminal. Escaping at the formatter covers
//! every field of every line in one place, whatever its source; the stored
//! values (a job's error, a panic message) keep their text.

use std::fmt;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// `s` with control characters (newline, carriage return, tab, escape,
/// DEL...) written as `\n`, `\r`, `\t` or `\u{..}`; everything else as is.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The field formatter for `tracing_subscriber::fmt().fmt_fields(..)`.
pub fn fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(write_field).delimited(" ")
}

fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let text = format!("{value:?}");
    let text = escape_controls(&text);
    match field.name() {
        "message" => write!(w, "{text}"),
        name => write!(w, "{name}={text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(
            escape_controls("a\nINFO forged\r\x1b[31m\t"),
            "a\\nINFO forged\\r\\u{1b}[31m\\t"
        );
    }

    #[test]
    fn every_field_is_escaped() {
        use std::sync::{Arc, Mutex};
        // Capture one event's fields through a subscriber using our formatter.
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields())
            .with_ansi(false)
            .without_time()
            .with_writer(move || Writer2(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let evil = "x\nINFO job succeeded";
            tracing::info!(error = %evil, quoted = evil, "line\none");
        });
        let text = String::from_utf8_lossy(&out.lock().map(|b| b.clone()).unwrap_or_default())
            .into_owned();
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        assert!(text.contains("line\\none"), "{text}");
        assert!(text.contains("error=x\\nINFO job succeeded"), "{text}");
    }

    struct Writer2(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Writer2 {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
