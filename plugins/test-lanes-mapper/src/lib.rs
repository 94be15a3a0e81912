//! Test-only: a pass-through mapper on half of test-lanes' channels and
//! on `lanes.out`, so under the host-wide call budget mapper calls (both
//! directions) compete with handler calls.

use sluice_sdk::prelude::*;

struct TestLanesMapper;

impl Mapper for TestLanesMapper {
    fn describe() -> Describe {
        Describe::mapper("test-lanes-mapper", "0.1.0")
            .channel("lanes.0")
            .channel("lanes.2")
            .channel("lanes.4")
            .channel("lanes.6")
            .channel("lanes.out")
    }

    fn to_request(message: Message) -> Result<Request, String> {
        let body = String::from_utf8(message.body).map_err(|e| e.to_string())?;
        Ok(Request {
            name: "work".into(),
            body,
        })
    }

    fn to_message(request: Request) -> Result<Outgoing, String> {
        Ok(Outgoing {
            headers: Vec::new(),
            body: request.body.into_bytes(),
        })
    }
}

sluice_sdk::export_mapper!(TestLanesMapper);
