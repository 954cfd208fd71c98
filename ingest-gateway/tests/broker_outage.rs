//! The broker goes away and comes back: the gateway answers 503 with
//! Retry-After and turns not-ready while Kafka cannot acknowledge, then
//! accepts again without a restart, and no acknowledged event is lost. This
//! test stops the shared broker, so it is a test binary of its own (cargo
//! runs test binaries one after another).

mod common;

use std::time::Duration;

use common::{body, read_events, session, start};
use context_integration::stack;

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_means_503_then_200_again_without_a_restart() {
    // The idempotent producer (always on) outlives the broker restart.
    let h = start(|c| c.produce_timeout = std::time::Duration::from_secs(3)).await;
    let before = session(70, 10);
    assert_eq!(h.post(Some(&h.key), body(&before), &[]).await.0, 200);

    stack(&["down", "broker"]).unwrap();
    let during = session(71, 10);
    let during_body = body(&during);
    let (status, retry_after, answer) = h.post(Some(&h.key), during_body.clone(), &[]).await;
    let restarted = stack(&["up", "broker"]);
    assert_eq!(status, 503, "{answer}");
    let wait: u64 = retry_after.expect("a 503 carries Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert!(answer["message"].as_str().unwrap().contains("retrying"), "{answer}");
    restarted.unwrap();

    // The client retries the same batch until it is acknowledged.
    let mut status = 0;
    for _ in 0..60 {
        status = h.post(Some(&h.key), during_body.clone(), &[]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(status, 200, "the gateway never recovered");
    let mut ready = 0;
    for _ in 0..30 {
        ready = h.get("/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ready, 200);

    // Every acknowledged event is there (retries may add duplicates, removed downstream).
    let stored = read_events(&h.events_topic, 20).await;
    for e in before.iter().chain(during.iter()) {
        assert!(
            stored.iter().any(|s| s.event_id == e.event_id),
            "event {} lost",
            e.event_id
        );
    }

    // The schema registry lives on the same broker: a gateway started after
    // the restart registers its own subject and is acknowledged (a registry
    // whose reader stayed on a dead fetch answered 500 here).
    let fresh = start(|c| c.produce_timeout = std::time::Duration::from_secs(3)).await;
    let after = session(72, 5);
    let (status, _, answer) = fresh.post(Some(&fresh.key), body(&after), &[]).await;
    assert_eq!(status, 200, "{answer}");
}
