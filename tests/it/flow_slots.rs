//! Flow control's shared concurrency slots on JetStream
//! (`transport::jetstream::flow`): what a slot is held by, how it comes
//! back, and what a dead host or a restarted server does to the limit.

use sluice::transport::{Got, SharedFlow};

use crate::nats::NatsServer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn host(nats: &NatsServer) -> SharedFlow {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    SharedFlow::open(&client, 1).await.expect("flow bucket")
}

/// Review #9: a job's next slice (or its re-queued run) can be pulled on
/// the same host before the last delivery's slot is given back. Named by
/// the job, both deliveries were one holder: the second was let in at
/// once, and the late give-back of the first then took the second's slot
/// with it, so another host ran a second job of the key.
#[test]
fn a_late_give_back_of_one_delivery_never_frees_the_next_deliverys_slot() {
    let nats = NatsServer::start();
    runtime().block_on(async {
        let (a, b) = (host(&nats).await, host(&nats).await);
        let (handler, key) = ("test-wire", "tenant.a b\u{e9}");
        let first = a.holder("job-x");
        let second = a.holder("job-x");
        assert_ne!(first, second, "one holder per delivery");
        assert_eq!(a.acquire(handler, key, 1, &first).await, Ok(Got::Yes));
        assert_eq!(
            a.acquire(handler, key, 1, &second).await,
            Ok(Got::No),
            "the next slice waits for the last one's slot"
        );
        a.release(handler, key, &first).await;
        assert_eq!(a.acquire(handler, key, 1, &second).await, Ok(Got::Yes));
        // A give-back of the first that comes late (a retried release)
        // takes nothing of the second's.
        a.release(handler, key, &first).await;
        assert_eq!(a.holders(handler, key).await, Ok(vec![second.clone()]));
        assert_eq!(
            b.acquire(handler, key, 1, &b.holder("job-y")).await,
            Ok(Got::No),
            "another host finds the key at its limit"
        );
        // Taking is idempotent per holder (a retry after a lost answer).
        assert_eq!(a.acquire(handler, key, 1, &second).await, Ok(Got::Yes));
        a.release(handler, key, &second).await;
        assert_eq!(
            b.acquire(handler, key, 1, &b.holder("job-y")).await,
            Ok(Got::Yes)
        );
    });
}
