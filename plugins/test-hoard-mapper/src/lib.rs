//! Test plugin (not an example): a mapper whose outputs are too big, for
//! the host's bounds on mapper outputs. On `test.hoard.in` it passes
//! messages through, except `{"do": "huge-request"}`, which it turns into a
//! 17 MiB request. On `test.hoard.out` it inflates a post's body to
//! `inflate` bytes, or gives it `headers` headers.

use sluice_sdk::prelude::*;

#[derive(Deserialize, Default)]
struct Out {
    #[serde(default)]
    inflate: usize,
    #[serde(default)]
    headers: usize,
}

struct TestHoardMapper;

impl Mapper for TestHoardMapper {
    fn describe() -> Describe {
        Describe::mapper("test-hoard-mapper", "0.1.0")
            .channel("test.hoard.in")
            .channel("test.hoard.out")
    }

    fn to_request(message: Message) -> Result<Request, String> {
        let body = String::from_utf8(message.body).map_err(|e| e.to_string())?;
        if body.contains("huge-request") {
            return Ok(Request {
                name: "huge".into(),
                body: "x".repeat(17 << 20),
            });
        }
        Ok(Request {
            name: "hoard".into(),
            body,
        })
    }

    fn to_message(request: Request) -> Result<Outgoing, String> {
        let out: Out = request.parse()?;
        let mut outgoing = Outgoing {
            headers: Vec::new(),
            body: vec![b'x'; out.inflate.max(2)],
        };
        for i in 0..out.headers {
            outgoing = outgoing.header(format!("h{i}"), "");
        }
        Ok(outgoing)
    }
}

sluice_sdk::export_mapper!(TestHoardMapper);
