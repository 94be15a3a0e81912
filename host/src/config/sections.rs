//! The `[nats]`, `[http]` and `[otel]` sections: each is on when a URL or
//! address is given (by flag or file) and is validated as a whole here;
//! and the `[[cron]]` entries, each validated whole.

use std::time::Duration;

use super::bounds::{DAY, HOUR, bounded};
use super::raw::{RawCron, RawHttp, RawNats, RawOtel};
use super::{ConfigError, Overrides};
use crate::cron::{CronEntry, Schedule};
use crate::telemetry::OtelSettings;
use crate::transport::JetStreamSettings;

/// Largest `[http] body_limit`: a request body is held in memory whole.
pub(super) const MAX_BODY_LIMIT: u64 = 64 << 20;

/// The HTTP API's settings (`[http]`, `--http ADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Bearer token every request must carry (except the health probes);
    /// required unless `addr` is a loopback address.
    pub token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Without a token: `Host` names served besides the bound address and
    /// loopback names (`name` or `name:port`).
    pub allowed_hosts: Vec<String>,
}

/// JetStream settings when a URL is given by flag or file.
pub(super) fn nats_settings(
    raw: Option<&RawNats>,
    flag_url: Option<&str>,
) -> Result<Option<JetStreamSettings>, ConfigError> {
    let url = flag_url
        .map(str::to_owned)
        .or(raw.and_then(|r| r.url.clone()));
    let Some(url) = url else {
        if raw.is_some() {
            return Err(ConfigError::Invalid(
                "[nats]: url is missing (or pass --nats URL)".into(),
            ));
        }
        return Ok(None);
    };
    if let Err(reason) = crate::transport::server_addrs(&url) {
        return Err(ConfigError::Invalid(format!(
            "[nats] url {url:?} is not a NATS server URL: {reason}"
        )));
    }
    let d = JetStreamSettings::default();
    let raw = raw.cloned().unwrap_or_default();
    let s = JetStreamSettings {
        url,
        ack_wait: raw.ack_wait.unwrap_or(d.ack_wait),
        replicas: raw.replicas.unwrap_or(d.replicas),
        max_age: raw.max_age.unwrap_or(d.max_age),
        duplicate_window: raw.duplicate_window.unwrap_or(d.duplicate_window),
        fetch_wait: d.fetch_wait,
        shared_state: raw.shared_state.unwrap_or(d.shared_state),
    };
    bounded(
        "[nats]",
        "ack_wait",
        s.ack_wait,
        Duration::from_secs(1),
        12 * HOUR,
    )?;
    bounded(
        "[nats]",
        "max_age",
        s.max_age,
        Duration::ZERO,
        10 * 365 * DAY,
    )?;
    bounded(
        "[nats]",
        "duplicate_window",
        s.duplicate_window,
        Duration::from_secs(1),
        7 * DAY,
    )?;
    if !s.max_age.is_zero() && s.duplicate_window > s.max_age {
        return Err(ConfigError::Invalid(
            "[nats]: duplicate_window must not be above max_age".into(),
        ));
    }
    if !(1..=5).contains(&s.replicas) {
        return Err(ConfigError::Invalid(format!(
            "[nats]: replicas must be between 1 and 5, not {}",
            s.replicas
        )));
    }
    Ok(Some(s))
}

/// `[otel]`: where spans go. Only plain `http://`: the exporter is built
/// without TLS (send to a collector agent on the host or its network).
pub(super) fn otel_settings(raw: &RawOtel) -> Result<OtelSettings, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(format!("[otel]: {m}"));
    let endpoint = raw
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| bad("endpoint is missing (e.g. \"http://127.0.0.1:4318\")".into()))?;
    let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
        bad(format!(
            "endpoint {endpoint:?} must be an http:// URL (OTLP/HTTP; this build has no TLS: \
             export to a collector over plain HTTP)"
        ))
    })?;
    if rest.is_empty() || rest.starts_with('/') || endpoint.parse::<axum::http::Uri>().is_err() {
        return Err(bad(format!(
            "endpoint {endpoint:?} is not a URL like http://host:4318"
        )));
    }
    let service_name = raw.service_name.clone().unwrap_or_else(|| "sluice".into());
    if service_name.is_empty()
        || service_name.len() > 255
        || service_name.chars().any(char::is_control)
    {
        return Err(bad(
            "service_name must be 1 to 255 characters, no control characters".into(),
        ));
    }
    Ok(OtelSettings {
        endpoint: endpoint.to_owned(),
        service_name,
    })
}

/// The HTTP API's settings when an address is given by flag or file.
pub(super) fn http_settings(
    raw: Option<&RawHttp>,
    overrides: &Overrides,
) -> Result<Option<HttpSettings>, ConfigError> {
    let addr = overrides
        .http_addr
        .clone()
        .or(raw.and_then(|r| r.addr.clone()));
    let Some(addr) = addr else {
        if raw.is_some() {
            return Err(ConfigError::Invalid(
                "[http]: addr is missing (or pass --http ADDR)".into(),
            ));
        }
        return Ok(None);
    };
    let addr: std::net::SocketAddr = addr.trim().parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "http address {addr:?} is not IP:PORT (e.g. 127.0.0.1:8080)"
        ))
    })?;
    let token = overrides
        .http_token
        .clone()
        .or(raw.and_then(|r| r.token.clone()))
        .filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ConfigError::Invalid(format!(
            "[http]: a token is required to listen on {addr}, which is not a loopback address \
             (set [http] token or SLUICE_HTTP_TOKEN, or listen on 127.0.0.1)"
        )));
    }
    let body_limit = raw.and_then(|r| r.body_limit).map_or(1 << 20, |b| b.0);
    if body_limit == 0 || body_limit > MAX_BODY_LIMIT {
        return Err(ConfigError::Invalid(format!(
            "[http]: body_limit must be between 1 byte and {MAX_BODY_LIMIT} bytes (64 MiB), not {body_limit}"
        )));
    }
    let allowed_hosts = raw
        .and_then(|r| r.allowed_hosts.clone())
        .unwrap_or_default();
    if let Some(bad) = allowed_hosts
        .iter()
        .find(|h| h.trim().is_empty() || h.contains(['/', ' ', '@']) || h.len() > 255)
    {
        return Err(ConfigError::Invalid(format!(
            "[http]: allowed_hosts entry {bad:?} is not a host name or host:port"
        )));
    }
    Ok(Some(HttpSettings {
        addr,
        token,
        body_limit: usize::try_from(body_limit).unwrap_or(usize::MAX),
        allowed_hosts,
    }))
}

/// Longest cron body, in bytes (a tick is a message like any other; this
/// keeps the config file's copy in memory small).
pub const MAX_CRON_BODY: usize = 1 << 20;

/// The `[[cron]]` entries, validated: each error names its entry (by name,
/// or by position when it has none).
pub(super) fn cron_entries(raw: &[RawCron]) -> Result<Vec<CronEntry>, ConfigError> {
    let mut out: Vec<CronEntry> = Vec::with_capacity(raw.len());
    for (i, c) in raw.iter().enumerate() {
        let where_ = match &c.name {
            Some(name) => format!("[[cron]] {}", crate::names::quote(name)),
            None => format!("[[cron]] #{}", i + 1),
        };
        let bad = |why: String| ConfigError::Invalid(format!("{where_}: {why}"));
        let name = c
            .name
            .clone()
            .ok_or_else(|| bad("name is missing".into()))?;
        crate::names::check_plugin_name(&name)
            .map_err(|e| bad(e.to_string().replacen("plugin name", "cron name", 1)))?;
        if out.iter().any(|e| e.name == name) {
            return Err(bad("another [[cron]] entry has this name".into()));
        }
        let expression = c
            .schedule
            .as_deref()
            .ok_or_else(|| bad("schedule is missing (e.g. \"0 3 * * *\")".into()))?;
        let schedule =
            Schedule::parse(expression, c.time_zone.as_deref().unwrap_or("UTC")).map_err(bad)?;
        let channel = c
            .channel
            .clone()
            .ok_or_else(|| bad("channel is missing".into()))?;
        crate::names::check_channel(&channel).map_err(|e| bad(e.to_string()))?;
        let body = c.body.clone().unwrap_or_default().into_bytes();
        if body.len() > MAX_CRON_BODY {
            return Err(bad(format!("body is larger than {MAX_CRON_BODY} bytes")));
        }
        let mut headers = Vec::with_capacity(c.headers.len());
        for (k, v) in &c.headers {
            crate::message::check_header(k, v).map_err(bad)?;
            headers.push((k.clone(), v.clone()));
        }
        let deadline = c.deadline.unwrap_or(crate::cron::DEFAULT_DEADLINE);
        if deadline < Duration::from_secs(1) || deadline > 366 * DAY {
            return Err(bad("deadline must be between 1s and 366d".into()));
        }
        out.push(CronEntry {
            name,
            schedule,
            channel,
            kind: c.kind.unwrap_or_default(),
            body,
            headers,
            missed: c.missed.unwrap_or_default(),
            deadline,
        });
    }
    Ok(out)
}
