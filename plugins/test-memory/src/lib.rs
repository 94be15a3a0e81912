//! Test plugin (not an example): a memory bomb. It allocates 1 MiB chunks
//! forever, writes to every page of each and keeps them all alive, so only
//! the host's memory limit (or fuel/timeout) can stop it.

use sluice_sdk::prelude::*;

const CHUNK: usize = 1 << 20;

struct TestMemory;

impl Handler for TestMemory {
    type Request = serde::de::IgnoredAny;

    fn describe() -> Describe {
        Describe::handler("test-memory", "0.1.0").channel("test.memory")
    }

    fn handle(_ctx: &mut Context, _req: Self::Request) -> Result<Outcome, Error> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            for page in chunk.iter_mut().step_by(4096) {
                *page = 1;
            }
            chunks.push(std::hint::black_box(chunk));
            std::hint::black_box(&mut chunks);
        }
    }
}

sluice_sdk::export_handler!(TestMemory);
