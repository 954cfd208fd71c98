//! The gateway's memory of answered batches is bounded in bytes: batches
//! whose 200 answers are large (every event rejected, with long ids) never
//! make it hold more than `dedup_capacity_bytes`, as its own gauge
//! `gateway_dedup_cache_bytes` says on `/metrics`; the oldest answers go
//! first, the newest are still answered from memory. Its own test binary:
//! the metrics recorder is one per process.

mod common;

use common::{count, session};
use ingest_gateway::sdk;
use serde_json::json;

/// The value of the sample `name` (without labels) on `/metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A batch of 200 tiny events, each with an event_id of 1000 bytes: every
/// one rejected, a dead letter each, and 200 entries in the answer.
fn hostile(seed: u64) -> Vec<u8> {
    let mut json = sdk::batch_json(&session(seed, 200), common::now_micros());
    for (i, e) in json["events"].as_array_mut().unwrap().iter_mut().enumerate() {
        e["event_id"] = json!(format!("{i:04}{}", "x".repeat(1000)));
        e["signals"] = json!({});
        e.as_object_mut().unwrap().remove("motion");
    }
    json.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dedup_memory_stays_under_its_byte_bound() {
    let metrics = context_runtime::install_metrics();
    assert!(metrics.is_some(), "no recorder");
    let bound = 256 << 10;
    let h = common::start_with_metrics(|c| c.dedup_capacity_bytes = bound, metrics).await;
    let bodies: Vec<Vec<u8>> = (0..12).map(|i| hostile(1800 + i)).collect();
    for (i, b) in bodies.iter().enumerate() {
        let (status, _, answer) = h.post(Some(&h.key), b.clone(), &[]).await;
        assert_eq!(status, 200, "batch {i}: {answer}");
        assert_eq!(answer["rejected"].as_array().map(Vec::len), Some(200), "batch {i}");
        let (_, text) = h.get("/metrics").await;
        let held = sample(&text, "gateway_dedup_cache_bytes").expect("the gateway exports gateway_dedup_cache_bytes");
        assert!(held > 0.0, "batch {i}: nothing remembered");
        assert!(
            held <= bound as f64,
            "batch {i}: the dedup memory holds {held} bytes, over its bound {bound}"
        );
    }
    let (_, text) = h.get("/metrics").await;
    let entries = sample(&text, "gateway_dedup_cache_entries").unwrap_or_default();
    assert!(
        (1.0..12.0).contains(&entries),
        "{entries} answers kept: the bound must have forgotten some"
    );
    let letters = count(&h.deadletter_topic);
    assert_eq!(letters, 12 * 200);

    // The newest is answered from memory: nothing produced again.
    let (status, _, _) = h.post(Some(&h.key), bodies[11].clone(), &[]).await;
    assert_eq!(status, 200);
    let (_, text) = h.get("/metrics").await;
    assert_eq!(sample(&text, "gateway_batches_deduplicated_total"), Some(1.0));
    assert_eq!(count(&h.deadletter_topic), letters);
    // The oldest was forgotten first: taken (and dead-lettered) again.
    let (status, _, _) = h.post(Some(&h.key), bodies[0].clone(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(count(&h.deadletter_topic), letters + 200);
}
