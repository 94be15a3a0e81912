use super::raw::{RawFile, parse_bytes};
use super::*;
use crate::store::Synchronous;

fn parse(text: &str) -> Result<Config, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
    build(raw, &Overrides::default()).map_err(|e| e.to_string())
}

#[test]
fn defaults_without_a_file() -> Result<(), String> {
    let c = parse("")?;
    assert_eq!(c.plugins_dir, PathBuf::from("plugins"));
    assert_eq!(c.data_dir, PathBuf::from("sluice-data"));
    assert_eq!(c.policy, Policy::default());
    assert_eq!(c.store.synchronous, Synchronous::Full);
    Ok(())
}

#[test]
fn plugin_tables_override_the_policy_and_limits() -> Result<(), String> {
    let c = parse(
        r#"
        [policy]
        max_attempts = 7
        backoff_initial = "50ms"
        [limits]
        memory = "32MiB"
        [plugin.task-reminder]
        max_attempts = 2
        timeout = "2s"
        "#,
    )?;
    assert_eq!(c.policy.max_attempts, 7);
    assert_eq!(c.runtime.ceiling.memory_bytes, 32 << 20);
    let p = c.policy_for("task-reminder");
    assert_eq!(p.max_attempts, 2);
    assert_eq!(
        p.backoff_initial,
        Duration::from_millis(50),
        "inherits [policy]"
    );
    let ceiling = c.ceiling_for("task-reminder");
    assert_eq!((ceiling.timeout_ms, ceiling.memory_bytes), (2000, 32 << 20));
    assert_eq!(c.ceiling_for("other"), c.runtime.ceiling);
    assert_eq!(c.policy_for("other").max_attempts, 7);
    Ok(())
}

#[test]
fn the_call_budget_is_bounded_and_independent_of_concurrency() -> Result<(), String> {
    let c = parse("")?;
    let calls = c.runtime.max_instances;
    assert!((8..=64).contains(&calls), "{calls}");
    assert_eq!(parse("[sandbox]\ncalls = 3")?.runtime.max_instances, 3);
    for bad in ["0", "1025"] {
        let err = parse(&format!("[sandbox]\ncalls = {bad}"))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("[sandbox]: calls must be between 1 and 1024"),
            "{err}"
        );
    }
    assert_eq!(c.runtime.idle_release, Duration::from_secs(5));
    let c = parse("[sandbox]\nidle_release = \"250ms\"")?;
    assert_eq!(c.runtime.idle_release, Duration::from_millis(250));
    for bad in ["0s", "2days"] {
        let err = parse(&format!("[sandbox]\nidle_release = \"{bad}\""))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("[sandbox]: idle_release must be between 100ms and 1day"),
            "{err}"
        );
    }
    // More jobs in flight than calls: the rest wait for the budget.
    let c = parse("[sandbox]\ncalls = 2\n[policy]\nconcurrency = 4096")?;
    assert_eq!(c.policy.concurrency, 4096);
    let err = parse("[policy]\nconcurrency = 4097")
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("concurrency must be between 1 and 4096"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unknown_keys_are_errors() {
    let err = parse("max_attempt = 3").err().unwrap_or_default();
    assert!(err.contains("unknown field `max_attempt`"), "{err}");
    let err = parse(
        "[plugin.x]
fuell = 1",
    )
    .err()
    .unwrap_or_default();
    assert!(err.contains("unknown field `fuell`"), "{err}");
}

#[test]
fn out_of_range_values_are_errors() {
    let err = parse(
        "[policy]
max_attempts = 0",
    )
    .err()
    .unwrap_or_default();
    assert!(
        err.contains("[policy]: max_attempts must be at least 1"),
        "{err}"
    );
    let err = parse(
        "[plugin.p]
memory = \"100GiB\"",
    )
    .err()
    .unwrap_or_default();
    assert!(err.contains("[plugin.p]: memory"), "{err}");
    let err = parse(
        "[limits]
memory = \"12 parsecs\"",
    )
    .err()
    .unwrap_or_default();
    assert!(err.contains("unknown size unit"), "{err}");
    let err = parse(
        "[policy]
backoff_initial = \"10m\"
backoff_max = \"1m\"",
    )
    .err()
    .unwrap_or_default();
    assert!(err.contains("is above backoff_max"), "{err}");
}

#[test]
fn every_duration_and_size_is_bounded() {
    let cases = [
        (
            "[policy]\nbreaker_cooldown = \"1000000000days\"",
            "[policy]: breaker_cooldown must be between",
        ),
        (
            "[plugin.p]\nbreaker_cooldown = \"2days\"",
            "[plugin.p]: breaker_cooldown",
        ),
        (
            "[policy]\nbackoff_max = \"30days\"",
            "backoff_max must be between",
        ),
        (
            "[policy]\nmax_attempts = 4000000000",
            "max_attempts must be at most",
        ),
        (
            "drain_timeout = \"1000000000days\"",
            "drain_timeout must be between",
        ),
        ("poll_interval = \"0s\"", "poll_interval must be between"),
        ("poll_interval = \"1h\"", "poll_interval must be between"),
        ("retention = \"0s\"", "retention must be between"),
        ("retention = \"1000000years\"", "retention must be between"),
        (
            "[nats]\nurl = \"nats://h\"\nack_wait = \"1000days\"",
            "ack_wait must be between",
        ),
        (
            "[nats]\nurl = \"nats://h\"\nmax_age = \"1000years\"",
            "max_age must be between",
        ),
        (
            "[nats]\nurl = \"nats://h\"\nduplicate_window = \"30days\"",
            "duplicate_window must be between",
        ),
        (
            "[nats]\nurl = \"nats://h\"\nmax_age = \"1m\"\nduplicate_window = \"2m\"",
            "not be above max_age",
        ),
        (
            "[http]\naddr = \"127.0.0.1:1\"\nbody_limit = \"1GiB\"",
            "body_limit must be between",
        ),
        ("[limits]\nmemory = 18446744073709551615", "hard maximum"),
        ("[limits]\nmemory = \"17179869184GiB\"", "too large"),
    ];
    for (text, want) in cases {
        let err = parse(text).err().unwrap_or_default();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn limits_are_bounded_by_hard_maxima_and_size_the_pool_slot() -> Result<(), String> {
    let err = parse("[limits]\nfuel = 18446744073709551615")
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("[limits]: fuel") && err.contains("hard maximum"),
        "{err}"
    );
    let err = parse("[plugin.p]\ntimeout = \"2days\"")
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("[plugin.p]: timeout") && err.contains("hard maximum"),
        "{err}"
    );
    let c = parse("[limits]\nmemory = \"16MiB\"\n[plugin.big]\nmemory = \"1000000\"")?;
    assert_eq!(c.runtime.ceiling.memory_bytes, 16 << 20);
    assert_eq!(c.runtime.max_memory_bytes, 16 << 20);
    let c = parse("[limits]\nmemory = \"16MiB\"\n[plugin.big]\nmemory = \"100000000\"")?;
    assert_eq!(c.ceiling_for("big").memory_bytes, 100_000_000);
    assert_eq!(
        c.runtime.max_memory_bytes, 100_007_936,
        "rounded up to 64 KiB pages"
    );
    Ok(())
}

#[test]
fn nats_comes_from_the_file_or_the_flag() -> Result<(), String> {
    assert!(parse("")?.nats.is_none());
    let c = parse("[nats]\nurl = \"nats://h:4222\"\nack_wait = \"5s\"")?;
    let n = c.nats.ok_or("nats")?;
    assert_eq!(
        (n.url.as_str(), n.ack_wait),
        ("nats://h:4222", Duration::from_secs(5))
    );
    assert!(n.shared_state, "on by default");
    let c = parse("[nats]\nurl = \"nats://h\"\nshared_state = false")?;
    assert!(!c.nats.ok_or("nats")?.shared_state);
    let raw: RawFile = toml::from_str("").map_err(|e| e.to_string())?;
    let flag = Overrides {
        nats_url: Some("nats://x:1".into()),
        ..Overrides::default()
    };
    let c = build(raw, &flag).map_err(|e| e.to_string())?;
    assert_eq!(c.nats.map(|n| n.url), Some("nats://x:1".into()));
    let err = parse("[nats]\nack_wait = \"5s\"").err().unwrap_or_default();
    assert!(err.contains("url is missing"), "{err}");
    // Every form the client takes, one or several; anything else is an
    // error at once, naming the server that is wrong.
    for ok in [
        "nats://h:4222",
        "h:4222",
        "tls://h:4222",
        "nats://a:1, nats://b:2,nats://c:3",
    ] {
        parse(&format!("[nats]\nurl = \"{ok}\""))?;
    }
    for (bad, says) in [
        ("http://h:4222", "invalid scheme"),
        ("nats://a:1,,nats://b:2", "empty server"),
        ("nats://a:1,", "empty server"),
        ("nats://h:port", "\"nats://h:port\""),
        ("", "empty server"),
    ] {
        let err = parse(&format!("[nats]\nurl = \"{bad}\""))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("is not a NATS server URL") && err.contains(says),
            "{bad}: {err}"
        );
    }
    Ok(())
}

#[test]
fn http_needs_a_token_off_loopback() -> Result<(), String> {
    assert!(parse("")?.http.is_none());
    let c = parse("[http]\naddr = \"127.0.0.1:8080\"")?;
    let h = c.http.ok_or("http")?;
    assert_eq!((h.token, h.body_limit), (None, 1 << 20));
    let err = parse("[http]\naddr = \"0.0.0.0:8080\"")
        .err()
        .unwrap_or_default();
    assert!(err.contains("a token is required"), "{err}");
    let c = parse("[http]\naddr = \"0.0.0.0:8080\"\ntoken = \"s\"\nbody_limit = \"4KiB\"")?;
    let h = c.http.ok_or("http")?;
    assert_eq!((h.token.as_deref(), h.body_limit), (Some("s"), 4096));
    let err = parse("[http]\naddr = \"localhost\"")
        .err()
        .unwrap_or_default();
    assert!(err.contains("is not IP:PORT"), "{err}");
    Ok(())
}

#[test]
fn otel_needs_an_http_endpoint() -> Result<(), String> {
    assert!(parse("")?.otel.is_none(), "off by default");
    let c = parse("[otel]\nendpoint = \"http://127.0.0.1:4318\"")?;
    let o = c.otel.ok_or("otel")?;
    assert_eq!(
        (o.endpoint.as_str(), o.service_name.as_str()),
        ("http://127.0.0.1:4318", "sluice")
    );
    for (bad, says) in [
        ("[otel]", "endpoint is missing"),
        (
            "[otel]\nendpoint = \"https://x:4318\"",
            "must be an http:// URL",
        ),
        ("[otel]\nendpoint = \"http://\"", "is not a URL"),
        ("[otel]\nendpoint = \"http://a b\"", "is not a URL"),
        (
            "[otel]\nendpoint = \"http://x\"\nservice_name = \"\"",
            "service_name",
        ),
        (
            "[otel]\nendpoint = \"http://x\"\nsampler = 1",
            "unknown field",
        ),
    ] {
        let err = parse(bad).err().unwrap_or_default();
        assert!(err.contains(says), "{bad}: {err}");
    }
    Ok(())
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_bytes("1024"), Ok(1024));
    assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
    assert!(parse_bytes("MiB").is_err());
}

#[test]
fn flow_keys_are_per_handler_and_checked_with_the_rule() -> Result<(), String> {
    let c = parse(
        r#"
        [plugin.billing]
        concurrency_key = "/customer/id"
        per_key_concurrency = 3
        rate = "10/1s"
        rate_key = "header:x-tenant"
        [plugin.plain]
        max_attempts = 2
        "#,
    )?;
    let f = c.flow_for("billing").ok_or("no flow")?;
    assert_eq!(f.concurrency.as_ref().map(|c| c.limit), Some(3));
    assert_eq!(f.rate.as_ref().map(|r| r.rate.burst), Some(10));
    assert!(c.flow_for("plain").is_none(), "no rules, no gate");
    for (bad, says) in [
        ("[policy]\nrate = \"1/1s\"", "per handler"),
        (
            "[plugin.x]\nper_key_concurrency = 2",
            "needs concurrency_key",
        ),
        ("[plugin.x]\nconcurrency_key = \"tenant\"", "JSON pointer"),
        (
            "[plugin.x]\nconcurrency_key = \"/t\"\nper_key_concurrency = 0",
            "between 1",
        ),
        ("[plugin.x]\nrate = \"fast\"", "N/INTERVAL"),
        ("[plugin.x]\nrate_key = \"/t\"", "need rate"),
    ] {
        let err = parse(bad).err().unwrap_or_default();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    Ok(())
}
