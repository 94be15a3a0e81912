//! Test plugin (not an example): tries to escape the sandbox and reports what
//! happened instead of panicking. Each probe is "ok: ..." if it worked and
//! "error: ..." if it was refused; with the host's empty WASI context every
//! one must be an error and `env` must be empty. Request: `{"port": u16}`
//! (optional, default 4222), the local TCP port to try.

use std::net::TcpStream;

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Probe {
    #[serde(default = "default_port")]
    port: u16,
}

fn default_port() -> u16 {
    4222
}

fn report<T>(result: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("ok: {}", ok(value)),
        Err(e) => format!("error: {e}"),
    }
}

struct TestSandbox;

impl Handler for TestSandbox {
    type Request = Probe;

    fn describe() -> Describe {
        Describe::handler("test-sandbox", "0.1.0").channel("test.sandbox")
    }

    fn handle(_ctx: &mut Context, req: Probe) -> Result<Outcome, Error> {
        let file = report(std::fs::read("/etc/passwd"), |b| {
            format!("{} bytes", b.len())
        });
        let dir = report(std::fs::read_dir("/"), |entries| {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.join(",")
        });
        let env: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        let path = match std::env::var("PATH") {
            Ok(v) => format!("ok: {v}"),
            Err(e) => format!("error: {e}"),
        };
        let net = report(TcpStream::connect(("127.0.0.1", req.port)), |_| {
            format!("connected to 127.0.0.1:{}", req.port)
        });
        Outcome::done_with(&serde_json::json!({
            "file": file, "dir": dir, "env": env, "path": path, "net": net,
        }))
    }
}

sluice_sdk::export_handler!(TestSandbox);
