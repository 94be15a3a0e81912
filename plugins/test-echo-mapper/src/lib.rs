//! Test plugin (not an example): a mapper that returns whatever its input
//! tells it to, for the property tests of what the host does with mapper
//! outputs (tests/it/mapper_outputs.rs). On `test.echo`:
//! - a message's body `{"name": N, "body": B}` becomes the request (N, B);
//!   `{"reject": R}` is rejected with reason R;
//! - a request's body `{"headers": [[K, V], ...], "body": [bytes]}` becomes
//!   the outgoing message; `{"reject": R}` is rejected with reason R.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct In {
    #[serde(default)]
    reject: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct Out {
    #[serde(default)]
    reject: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Vec<u8>,
}

struct TestEchoMapper;

impl Mapper for TestEchoMapper {
    fn describe() -> Describe {
        Describe::mapper("test-echo-mapper", "0.1.0").channel("test.echo")
    }

    fn to_request(message: Message) -> Result<Request, String> {
        let input: In = message.json()?;
        match input.reject {
            Some(reason) => Err(reason),
            None => Ok(Request {
                name: input.name,
                body: input.body,
            }),
        }
    }

    fn to_message(request: Request) -> Result<Outgoing, String> {
        let out: Out = request.parse()?;
        match out.reject {
            Some(reason) => Err(reason),
            None => Ok(Outgoing {
                headers: out.headers,
                body: out.body,
            }),
        }
    }
}

sluice_sdk::export_mapper!(TestEchoMapper);
