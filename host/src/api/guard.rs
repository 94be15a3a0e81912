//! Cross-site protection for an API without a token (loopback only).
//!
//! Why: a daemon on `127.0.0.1` without a token trusts whoever can reach
//! it, and a web page in the operator's browser can reach it. Two ways in:
//! - **cross-site requests**: a page may send a "simple" request (a POST
//!   with `text/plain`, a form, `multipart`) to any origin without asking
//!   first, so it could post jobs;
//! - **DNS rebinding**: a page's own host name re-pointed at 127.0.0.1
//!   makes the browser treat the daemon as same-origin, so the page could
//!   read job results.
//!
//! So, without a token, every request must name the daemon in `Host` (the
//! bound address, a loopback name with its port, or `[http] allowed_hosts`),
//! must not come from a foreign `Origin`, and a request with a body must
//! declare a content type a browser cannot send cross-site without a CORS
//! preflight (which this API never grants): `application/json`, or any
//! type other than `text/plain`, `application/x-www-form-urlencoded` and
//! `multipart/form-data` (so a mapped channel can take binary bodies).
//! With a token none of this is needed: a page cannot add the
//! `Authorization` header without a preflight either.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, HOST, ORIGIN};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Who may call an API that has no token.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// Accepted `Host` values, lower case, each with its port.
    allowed: Vec<String>,
}

impl Hosts {
    /// The bound address (its IP, `localhost`, and for a loopback address
    /// the other loopback names, each with the bound port) plus `extra`
    /// (`[http] allowed_hosts`, `name:port`; a name without a port gets
    /// the bound one).
    pub fn new(addr: SocketAddr, extra: &[String]) -> Hosts {
        let port = addr.port();
        let mut allowed = vec![match addr {
            SocketAddr::V4(a) => format!("{}:{port}", a.ip()),
            SocketAddr::V6(a) => format!("[{}]:{port}", a.ip()),
        }];
        if addr.ip().is_loopback() {
            for name in ["localhost", "127.0.0.1", "[::1]"] {
                allowed.push(format!("{name}:{port}"));
            }
        }
        for host in extra {
            allowed.push(with_port(host, port));
        }
        allowed.sort();
        allowed.dedup();
        Hosts { allowed }
    }

    /// Whether `host` (a `Host` header, or an `Origin`'s authority) names
    /// this daemon. A host without a port means port 80.
    fn allows(&self, host: &str) -> bool {
        let host = with_port(host, 80);
        self.allowed.contains(&host)
    }
}

/// `host` lower case, with `port` added when it names none (`name`,
/// `1.2.3.4`, `[::1]`).
fn with_port(host: &str, port: u16) -> String {
    let host = host.trim().to_ascii_lowercase();
    let has_port = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':')),
        None => host.contains(':'),
    };
    if has_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Refuses what a foreign web page could send; see the module docs.
pub async fn same_site(State(hosts): State<Arc<Hosts>>, request: Request, next: Next) -> Response {
    match check(&hosts, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => super::error::refuse(request, e.into_response()).await,
    }
}

fn check(hosts: &Hosts, request: &Request) -> Result<(), ApiError> {
    let forbidden = |m: String| Err(ApiError::new(StatusCode::FORBIDDEN, m));
    let headers = request.headers();
    // HTTP/1.1 carries the authority in Host; axum exposes an absolute
    // request target's authority in the URI.
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(h) if hosts.allows(&h) => {}
        Some(h) => {
            return forbidden(format!(
                "Host {} does not name this daemon (without a token only its own address, or [http] allowed_hosts, is served)",
                crate::names::quote(&h)
            ));
        }
        None => return forbidden("a Host header is required".into()),
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.strip_prefix("http://").filter(|a| !a.contains('/'));
        if !authority.is_some_and(|a| hosts.allows(a)) {
            return forbidden(format!(
                "cross-site request from Origin {} refused (set a token to serve other origins)",
                crate::names::quote(origin)
            ));
        }
    }
    if super::error::has_body(headers) {
        let essence = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let simple = match essence.as_deref() {
            None | Some("") => true,
            Some(t) => matches!(
                t,
                "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
            ),
        };
        if simple {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a request body needs Content-Type: application/json (or the type your channel's mapper reads; not text/plain, a form or multipart)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], body: &'static str) -> Request {
        let mut b = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/jobs");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if !body.is_empty() {
            b = b.header("content-length", body.len().to_string());
        }
        b.body(axum::body::Body::from(body))
            .unwrap_or_else(|_| Request::new(axum::body::Body::empty()))
    }

    fn status(hosts: &Hosts, headers: &[(&str, &str)], body: &'static str) -> u16 {
        match check(hosts, &req(headers, body)) {
            Ok(()) => 200,
            Err(e) => e.status.as_u16(),
        }
    }

    #[test]
    fn only_this_daemons_host_and_origin_are_served() {
        let addr: SocketAddr = "127.0.0.1:8080"
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let hosts = Hosts::new(addr, &["sluice.internal".into()]);
        let json = ("content-type", "application/json");
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "sluice.internal:8080",
        ] {
            assert_eq!(status(&hosts, &[("host", host), json], "{}"), 200, "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1:9999",
            "localhost",
            "127.0.0.1",
            "evil.example",
            "",
        ] {
            assert_eq!(
                status(&hosts, &[("host", host), json], "{}"),
                403,
                "{host:?}"
            );
        }
        assert_eq!(status(&hosts, &[json], "{}"), 403, "no Host");
        let h = ("host", "127.0.0.1:8080");
        assert_eq!(
            status(
                &hosts,
                &[h, ("origin", "http://127.0.0.1:8080"), json],
                "{}"
            ),
            200
        );
        for origin in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8080/x",
            "http://127.0.0.1:80801",
        ] {
            assert_eq!(
                status(&hosts, &[h, ("origin", origin), json], "{}"),
                403,
                "{origin}"
            );
        }
    }

    #[test]
    fn bodies_a_browser_could_send_cross_site_are_refused() {
        let hosts = Hosts::new(SocketAddr::from(([127, 0, 0, 1], 8080)), &[]);
        let h = ("host", "127.0.0.1:8080");
        for t in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "TEXT/PLAIN",
        ] {
            assert_eq!(status(&hosts, &[h, ("content-type", t)], "{}"), 415, "{t}");
        }
        assert_eq!(status(&hosts, &[h], "{}"), 415, "no content type");
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "application/octet-stream",
        ] {
            assert_eq!(status(&hosts, &[h, ("content-type", t)], "{}"), 200, "{t}");
        }
        assert_eq!(status(&hosts, &[h], ""), 200, "no body needs no type");
    }
}
