//! Property tests of the HTTP API over real HTTP: arbitrary methods, paths,
//! query strings, headers and bodies against a real server on a real store.
//! Whatever a client sends, the server answers (no handler panics: a panic
//! would drop the connection without a status line), never with a 5xx
//! while the store is healthy, and without a token never accepts a request
//! a foreign web page could have sent (`guard.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::{ApiState, router};
use crate::config::{Config, HttpSettings, Overrides};
use crate::pump::{Control, Deps};
use crate::registry::{PluginSet, Registry};
use crate::store::{Store, StoreOptions};
use crate::transport::Embedded;

/// A daemon's API without plugins, on a temp store, without a token.
struct Server {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    stop: CancellationToken,
    store: Store,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let options = StoreOptions {
        synchronous: crate::store::Synchronous::Normal,
        ..StoreOptions::default()
    };
    let store = rt
        .block_on(async { Store::open(&dir.path().join("s.db"), &options) })
        .unwrap_or_else(|e| panic!("store: {e}"));
    let config = Config::load(&Overrides::default()).unwrap_or_else(|e| panic!("config: {e}"));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let settings = HttpSettings {
        addr,
        token: None,
        body_limit: 4096,
        allowed_hosts: vec!["sluice.test".into()],
    };
    let deps = Arc::new(Deps {
        store: store.clone(),
        state: crate::state::Ledger::new(store.clone(), crate::state::DEFAULT_CACHE_BYTES),
        transport: Embedded::new(store.clone(), Duration::from_millis(50)),
        registry: Arc::new(Registry::new(PluginSet::default())),
        config: Arc::new(config),
        control: Arc::new(Control::default()),
    });
    let state = Arc::new(ApiState {
        deps,
        jetstream: None,
        cluster: None,
    });
    let stop = CancellationToken::new();
    let app = router(state, &settings, addr);
    rt.spawn(super::serve(listener, app, stop.clone()));
    Server {
        addr,
        _dir: dir,
        _rt: rt,
        stop,
        store,
    }
}

/// One request as raw bytes.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Percent-encodes everything but unreserved characters, so any string can
/// travel in a request target.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("test.counter".to_owned()),
        Just("a..b".to_owned()),
        Just("..".to_owned()),
        "[a-z.]{0,12}",
        any::<String>(),
        "\\PC{0,300}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    let query = proptest::collection::vec(
        (
            prop_oneof![
                Just("delay"),
                Just("at"),
                Just("expires_in"),
                Just("kind"),
                Just("state"),
                Just("channel"),
                Just("limit"),
                Just("before"),
                Just("colour")
            ],
            any::<String>(),
        ),
        0..4,
    )
    .prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    (
        prop_oneof![
            Just("/v1/channels/{}/messages"),
            Just("/v1/channels/{}/pause"),
            Just("/v1/channels/{}/resume"),
            Just("/v1/jobs/{}"),
            Just("/v1/jobs/{}/result"),
            Just("/v1/jobs"),
            Just("/v1/dead-letters/{}/replay"),
            Just("/v1/dead-letters"),
            Just("/v1/plugins"),
            Just("/v1/channels"),
            Just("/metrics"),
            Just("/healthz"),
            Just("/readyz"),
            Just("/{}"),
        ],
        segment(),
        query,
        any::<bool>(),
    )
        .prop_map(|(route, seg, query, raw)| {
            // Mostly encoded; sometimes the raw text (the server must
            // refuse a malformed request line, not fall over).
            let seg = if raw && seg.is_ascii() && !seg.contains(char::is_whitespace) {
                seg
            } else {
                encode(&seg)
            };
            let path = route.replace("{}", &seg);
            if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            }
        })
}

fn header_value() -> impl Strategy<Value = String> {
    // Visible ASCII and spaces: what an HTTP/1 header line can carry.
    "[ -~]{0,80}"
}

fn request() -> impl Strategy<Value = Req> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("DELETE"),
        Just("PUT"),
        Just("PATCH"),
        Just("HEAD"),
        Just("OPTIONS"),
        Just("BREW"),
    ];
    let host = prop_oneof![
        Just(None),
        Just(Some("own".to_owned())),
        Just(Some("sluice.test".to_owned())),
        Just(Some("evil.example".to_owned())),
        header_value().prop_map(Some),
    ];
    let origin = prop_oneof![
        Just(None),
        Just(Some("own".to_owned())),
        Just(Some("http://evil.example".to_owned())),
        Just(Some("null".to_owned())),
        header_value().prop_map(Some),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some("multipart/form-data; boundary=x".to_owned())),
        header_value().prop_map(Some),
    ];
    let extra = proptest::collection::vec(
        (
            prop_oneof![
                Just("Idempotency-Key"),
                Just("Authorization"),
                Just("Accept"),
                Just("X-Anything")
            ],
            header_value(),
        ),
        0..3,
    );
    let body = prop_oneof![
        Just(Vec::new()),
        Just(br#"{"amount": 1}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(any::<u8>(), 4000..5000),
    ];
    (method, target(), host, origin, content_type, extra, body).prop_map(
        |(method, target, host, origin, content_type, extra, body)| {
            let mut headers = Vec::new();
            if let Some(h) = host {
                headers.push(("Host".to_owned(), h));
            }
            if let Some(o) = origin {
                headers.push(("Origin".to_owned(), o));
            }
            if let Some(t) = content_type {
                headers.push(("Content-Type".to_owned(), t));
            }
            for (k, v) in extra {
                headers.push((k.to_owned(), v));
            }
            Req {
                method: method.to_owned(),
                target,
                headers,
                body,
            }
        },
    )
}

/// Sends `req` (with "own" replaced by the server's address); returns the
/// status, or `None` if the connection closed without one.
fn send(addr: SocketAddr, req: &Req) -> Option<u16> {
    let own = addr.to_string();
    let mut raw = format!("{} {} HTTP/1.1\r\n", req.method, req.target).into_bytes();
    for (k, v) in &req.headers {
        let v = if v == "own" {
            own.clone()
        } else if v == "http://own" || (k == "Origin" && v == "own") {
            format!("http://{own}")
        } else {
            v.clone()
        };
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            req.body.len()
        )
        .as_bytes(),
    );
    raw.extend_from_slice(&req.body);
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    stream.write_all(&raw).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    status.parse().ok()
}

/// Whether a page on another site could have sent `req` unasked.
fn cross_site(req: &Req) -> bool {
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let own_host = matches!(get("Host"), Some("own" | "sluice.test"));
    let own_origin = matches!(get("Origin"), None | Some("own"));
    let simple_body = !req.body.is_empty()
        && !get("Content-Type").is_some_and(|t| {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !t.is_empty()
                && !matches!(
                    t.as_str(),
                    "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
                )
        });
    !own_host || !own_origin || simple_body
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_request_gets_an_answer_and_cross_site_ones_never_succeed(
        reqs in proptest::collection::vec(request(), 1..8)
    ) {
        let server = shared();
        for req in &reqs {
            let status = send(server.addr, req);
            prop_assert!(status.is_some(), "no answer to {req:?}");
            let status = status.unwrap_or_default();
            prop_assert!(status < 500, "{status} for {req:?}");
            if (200..300).contains(&status) && cross_site(req) {
                prop_assert!(false, "{status} for a cross-site request {req:?}");
            }
        }
        // Still serving.
        let probe = Req {
            method: "GET".into(),
            target: "/healthz".into(),
            headers: vec![("Host".into(), "own".into())],
            body: Vec::new(),
        };
        prop_assert_eq!(send(server.addr, &probe), Some(200));
    }
}

/// One server for every case (a server per case would cost a store each).
fn shared() -> &'static Server {
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(server)
}

#[test]
fn accepted_posts_are_all_in_the_store() {
    let server = shared();
    let post = Req {
        method: "POST".into(),
        target: "/v1/channels/fuzz.count/messages".into(),
        headers: vec![
            ("Host".into(), "own".into()),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: b"{}".to_vec(),
    };
    for _ in 0..5 {
        assert_eq!(send(server.addr, &post), Some(202));
    }
    let jobs = server
        ._rt
        .block_on(server.store.jobs(crate::store::JobFilter {
            channel: Some("fuzz.count".into()),
            limit: 100,
            ..crate::store::JobFilter::default()
        }))
        .unwrap_or_default();
    assert_eq!(jobs.len(), 5);
}
