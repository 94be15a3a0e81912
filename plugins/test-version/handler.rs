// Shared source of the test-version-1 and test-version-2 plugins (not a
// crate): one handler, "test-version" on channel "test.version" (version
// 1 also on "test.version.v1", which version 2 drops), built
// twice with a different VERSION so hot-reload tests can swap between two
// real builds and tell from a job's result which one ran it.
//
// Request: `{"seq": u64, "spin": u64}`. Burns `spin` rounds of arithmetic
// (so calls are in flight while a swap happens), then returns
// `{"version": VERSION, "seq": seq}`.

use sluice_sdk::prelude::*;

#[derive(Deserialize)]
struct Work {
    seq: u64,
    #[serde(default)]
    spin: u64,
}

struct TestVersion;

impl Handler for TestVersion {
    type Request = Work;

    fn describe() -> Describe {
        let describe = Describe::handler("test-version", VERSION).channel("test.version");
        // Version 1 also serves a channel version 2 drops.
        if VERSION.starts_with("1.") {
            describe.channel("test.version.v1")
        } else {
            describe
        }
    }

    fn handle(_ctx: &mut Context, req: Work) -> Result<Outcome, Error> {
        let mut x = req.seq;
        for i in 0..req.spin {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        std::hint::black_box(x);
        Outcome::done_with(&serde_json::json!({ "version": VERSION, "seq": req.seq }))
    }
}

sluice_sdk::export_handler!(TestVersion);
