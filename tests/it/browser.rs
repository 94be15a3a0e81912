//! A real headless Chromium driven over the DevTools protocol (CDP), for the
//! dashboard tests: navigate, read the DOM, click like a person (mouse
//! events at an element's centre, through the browser's input pipeline,
//! not `element.click()`), and save screenshots.
//!
//! Why a few lines of CDP over a websocket and not a CDP crate: the crates
//! that cover the whole protocol (chromiumoxide, headless_chrome) compile
//! a generated binding of thousands of types, minutes of build on a 2-core
//! CI box for the five commands used here. `tungstenite` (sync) and
//! `serde_json` are all this needs.
//!
//! Chromium is Debian's `chromium` (`scripts/test` installs it), started
//! with a fresh profile and the flags that keep it off the network.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Width and height of the page the tests look at: a laptop screen.
pub const VIEWPORT: (u32, u32) = (1440, 900);

/// One browser with one page.
pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (`SLUICE_CHROMIUM` or `chromium` on PATH) and opens
    /// a blank page.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let binary = std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log");
        let child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (scripts/test installs Debian's chromium): {e}")
            });
        // Chromium writes its port and browser path here once listening.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let [port, path, ..] = text.lines().collect::<Vec<_>>()[..]
            {
                break format!("ws://127.0.0.1:{port}{path}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port; log:\n{}",
                std::fs::read_to_string(profile.path().join("chromium.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let (ws, _) = tungstenite::connect(url.as_str()).expect("connect to DevTools");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("read timeout");
        }
        let mut browser = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.send("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser.send(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        browser.send("Page.enable", json!({}));
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// Sends one command (to the page once attached) and returns its result;
    /// panics on a protocol error.
    fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            let frame = self.ws.read().unwrap_or_else(|e| panic!("{method}: {e}"));
            let Message::Text(text) = frame else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).expect("CDP JSON");
            if reply["id"].as_u64() != Some(id) {
                continue; // an event
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Loads `url` and waits for the document.
    pub fn goto(&mut self, url: &str) {
        self.send("Page.navigate", json!({ "url": url }));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        );
    }

    /// Evaluates `expression` in the page (promises awaited) and returns
    /// its value; panics on an exception.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.send(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `condition` (a JS expression) is true.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&format!("!!({condition})")) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("not true within {timeout:?}: {condition}\npage text:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Clicks the first element matching `selector` the way a mouse does:
    /// scrolled into view, pressed and released at its centre.
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("selector");
        let at = self.eval(&format!(
            "(() => {{ const el = document.querySelector({sel}); if (!el) return null;
               el.scrollIntoView({{ block: 'center' }}); const r = el.getBoundingClientRect();
               return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            panic!("nothing to click at {selector}; page:\n{}", self.text());
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.send(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Saves the whole page (not only the viewport) as a PNG.
    pub fn screenshot(&mut self, path: &Path) {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .as_f64()
            .unwrap_or(f64::from(VIEWPORT.1))
            .max(f64::from(VIEWPORT.1));
        let shot = self.send(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": VIEWPORT.0, "height": height, "scale": 1 } }),
        );
        let data = shot["data"].as_str().expect("screenshot data");
        let png = data_encoding::BASE64
            .decode(data.as_bytes())
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the tests save screenshots: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    crate::util::repo_root().join("target/dashboard-screenshots")
}
