//! The HTTP API without a token: cross-site requests and foreign hosts are
//! refused, refusals reach the client, and it never listens off loopback.

use std::time::Duration;

use crate::api::{Api, free_port, http_config};
use crate::util::{Env, FAST};

#[test]
fn without_a_token_cross_site_requests_and_foreign_hosts_are_refused() {
    let (config, addr) = http_config("allowed_hosts = [\"sluice.test\"]");
    let env = Env::new(&["test-counter"], &config);
    let daemon = env.start();
    let api = Api::new(&addr, None);
    api.wait_up(&daemon);
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    let id = api.post_job("test.counter", r#"{"amount": 1}"#);
    env.wait_settled("test.counter", 1, Duration::from_secs(30));
    let posts = "/v1/channels/test.counter/messages";
    let result = format!("/v1/jobs/{id}/result");
    let allowed = format!("sluice.test:{port}");
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
    let cases: Vec<Case> = vec![
        // A simple cross-site POST: text/plain, a form, or no type at all.
        (
            "POST",
            posts,
            vec![("Content-Type", "text/plain")],
            "{}",
            415,
        ),
        (
            "POST",
            posts,
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            "{}",
            415,
        ),
        (
            "POST",
            posts,
            vec![("Content-Type", "multipart/form-data; boundary=x")],
            "{}",
            415,
        ),
        // A foreign page's Origin, on a write and on a read.
        (
            "POST",
            posts,
            vec![("Origin", "http://evil.example")],
            "{}",
            403,
        ),
        ("GET", &result, vec![("Origin", "null")], "", 403),
        // DNS rebinding: the browser sends the attacker's host name.
        ("GET", &result, vec![("Host", "evil.example")], "", 403),
        (
            "GET",
            "/v1/jobs",
            vec![("Host", "evil.example:80")],
            "",
            403,
        ),
        (
            "POST",
            posts,
            vec![("Host", "rebind.evil.example")],
            "{}",
            403,
        ),
        // The daemon's own names, and the allow-list, are served.
        ("GET", &result, vec![("Host", allowed.as_str())], "", 200),
        (
            "GET",
            &result,
            vec![("Origin", "http://sluice.test")],
            "",
            403,
        ),
    ];
    for (method, path, headers, body, status) in &cases {
        let r = api.send(method, path, headers, Some(body.as_bytes()));
        assert_eq!(r.status, *status, "{method} {path} {headers:?}: {}", r.text);
        if *status != 200 {
            assert!(
                r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                r.text
            );
            assert!(
                !r.text.contains("audited") && !r.text.contains("amount"),
                "{}",
                r.text
            );
        }
    }
    let origin = format!("http://localhost:{port}");
    let r = api.send("POST", posts, &[("Origin", origin.as_str())], Some(b"{}"));
    assert_eq!(r.status, 202, "same-origin post: {}", r.text);
    assert_eq!(
        env.jobs("test.counter").len(),
        2,
        "no refused post was queued"
    );
}

/// A refusal must reach the client even when the body arrives after the
/// headers (as it does from most clients): a server that answers and
/// closes with the body unread makes the kernel reset the connection, and
/// the client sees "connection reset" instead of why it was refused. Raw
/// TCP, so no client library hides it; the same connection then serves
/// the next request.
#[test]
fn a_refusal_reaches_a_client_whose_body_comes_after_its_headers() {
    use std::io::{BufRead, BufReader, Read, Write};
    let (config, addr) = http_config("");
    let token_config = format!("{config}token = \"s3cret\"\n");
    for (config, content_type, status) in [
        // No token: a cross-site simple POST (guard).
        (config.as_str(), "text/plain", "415"),
        // A token configured but not sent (auth).
        (token_config.as_str(), "application/json", "401"),
    ] {
        let env = Env::new(&["test-counter"], config);
        let daemon = env.start();
        let token = config.contains("token").then_some("s3cret");
        Api::new(&addr, token).wait_up(&daemon);
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let body = r#"{"amount": 1}"#;
        write!(
            stream,
            "POST /v1/channels/test.counter/messages HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("write headers");
        stream.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        stream.write_all(body.as_bytes()).expect("write body");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let answer = read_response(&mut reader);
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{answer}"
        );
        // The connection is still good for the next request.
        write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
        let next = read_response(&mut reader);
        assert!(next.starts_with("http/1.1 200"), "{next}");
        assert!(env.jobs("test.counter").is_empty(), "nothing queued");
    }

    /// One response (head and a Content-Length body), lower case.
    fn read_response(reader: &mut BufReader<std::net::TcpStream>) -> String {
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("after {head:?}: {e}"));
            assert!(n > 0, "connection closed after {head:?}");
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&lower);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        head + &String::from_utf8_lossy(&body)
    }
}

#[test]
fn api_refuses_to_listen_off_loopback_without_a_token() {
    let config = format!("{FAST}\n[http]\naddr = \"0.0.0.0:{}\"\n", free_port());
    let env = Env::new(&["test-counter"], &config);
    let out = env.sluice(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a token is required"), "{err}");
}
