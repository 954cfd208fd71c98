//! The sink against the real broker, registry and ClickHouse: every event
//! exactly once after dedup, poison records in dead_letters, old and new
//! schema versions side by side, tags and dead letters in their tables,
//! and an idempotent, additive migration.

use context_runtime::config::ServiceConfig;
mod common;

use std::time::Duration;

use common::setup;
use context_integration::clickhouse_reader;
use context_schemas::apache_avro::types::Value;
use context_schemas::apache_avro::Schema;
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{wire, ActivityTag, AvroRecord, ClassProbability, ContextEvent};
use rdkafka::producer::FutureRecord;

/// The contract as it was before `signal` existed, and an event written with it.
fn old_version(signal: &str, seed: u64) -> (String, ContextEvent, Value) {
    let mut e = sample::event(seed, &SampleOptions::default());
    e.signals.clear(context_schemas::catalog().get(signal).unwrap().index);
    let value = sample::value_without_signal(&e, signal);
    (sample::schema_without_signal(signal), e, value)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_once_poison_in_dead_letters_old_and_new_versions_together() {
    let s = setup().await;
    // Version 1 of the schema (without a signal) registered before the current one.
    let (old_text, old_event, old_value) = old_version("uptime_s", 99);
    let subject = format!("{}-value", s.events_topic);
    let old_id = s.registry.register(&subject, &old_text).await;
    // The current schema is already registered; an older one is refused under
    // BACKWARD only if incompatible, which it is not.
    let old_id = old_id.unwrap();
    let old_bytes = wire::frame(
        old_id,
        &context_schemas::codec::write_datum(&Schema::parse_str(&old_text).unwrap(), old_value).unwrap(),
    );

    let metrics = context_runtime::install_metrics();
    let running = sink_clickhouse::start(s.config().checked().unwrap(), metrics)
        .await
        .unwrap();
    let mut sent = s.produce_events(1, 500).await;
    s.produce_raw(&s.events_topic, &old_bytes, &[]).await;
    // Poison: the events' own schema id, bytes that are no such record (an
    // id the registry does not know would be waited for first).
    s.produce_raw(
        &s.events_topic,
        &wire::frame(s.event_schema_id, b"\xffnot avro at all"),
        &[],
    )
    .await;
    sent.extend(s.produce_events(2, 300).await);
    // duplicates of the first 50 (a client retry)
    let again: Vec<ContextEvent> = sent[..50].to_vec();
    let p = context_integration::producer().unwrap();
    for e in &again {
        let payload = e.to_wire(s.event_schema_id).unwrap();
        p.send(
            FutureRecord::to(&s.events_topic).key("dup").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    // a tag and a gateway dead letter
    let tag = ActivityTag {
        event_id: sent[0].event_id,
        app_id: sent[0].app_id.clone(),
        session_id: sent[0].session_id,
        install_id: sent[0].install_id,
        timestamp: sent[0].timestamp,
        model_version: "m1".into(),
        activity: "walking".into(),
        confidence: 0.9,
        probabilities: vec![ClassProbability {
            label: "walking".into(),
            probability: 0.9,
        }],
        tagged_at: sent[0].timestamp + 5,
        reason: None,
    };
    let tag_id = s
        .registry
        .register(&format!("{}-value", s.activity_topic), ActivityTag::AVSC)
        .await
        .unwrap();
    s.produce_raw(&s.activity_topic, &tag.to_wire(tag_id).unwrap(), &[])
        .await;
    s.produce_raw(
        &s.deadletter_topic,
        br#"{"event_id":"x"}"#,
        &[
            ("dl.source", "ingest-gateway"),
            ("dl.reason", "invalid_event_id"),
            ("dl.time", "2025-10-09T08:55:00Z"),
            ("dl.app_id", "a1"),
        ],
    )
    .await;

    let expected = sent.len() as u64 + 1;
    let got = s.wait_for_events(expected, Duration::from_secs(90)).await;
    assert_eq!(got, expected, "distinct events in ClickHouse");

    let reader = clickhouse_reader();
    let db = &s.database;
    // After dedup every event is there exactly once.
    let (rows_final, distinct) = reader
        .query(&format!("SELECT count(), uniqExact(event_id) FROM `{db}`.events FINAL"))
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap();
    assert_eq!((rows_final, distinct), (expected, expected));
    // The old-version event is stored with its signal null, the others as sent.
    let uptime: Option<f64> = reader
        .query(&format!(
            "SELECT uptime_s FROM `{db}`.events WHERE event_id = toUUID(?)"
        ))
        .bind(old_event.event_id.to_string())
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(uptime, None);
    let level: Option<f64> = reader
        .query(&format!(
            "SELECT battery_level FROM `{db}`.events WHERE event_id = toUUID(?) LIMIT 1"
        ))
        .bind(sent[7].event_id.to_string())
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        level,
        match sent[7].signals.get("battery_level") {
            Some(context_schemas::SignalValue::Double(d)) => Some(*d),
            _ => None,
        }
    );

    // The poison record and the gateway's dead letter.
    let mut dead: Vec<(String, String, String)> = Vec::new();
    for _ in 0..40 {
        dead = reader
            .query(&format!(
                "SELECT source, reason, detail FROM `{db}`.dead_letters ORDER BY source"
            ))
            .fetch_all()
            .await
            .unwrap();
        if dead.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        (dead[0].0.as_str(), dead[0].1.as_str()),
        ("ingest-gateway", "invalid_event_id")
    );
    assert_eq!(
        (dead[1].0.as_str(), dead[1].1.as_str()),
        ("sink-clickhouse", "undecodable")
    );
    assert!(!dead[1].2.is_empty());

    let tags: Vec<(String, String)> = reader
        .query(&format!("SELECT activity, model_version FROM `{db}`.activity_latest"))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(tags, vec![("walking".to_string(), "m1".to_string())]);

    assert_eq!(reqwest_get(&format!("http://{}/readyz", running.admin_addr)).await, 200);
    // Metrics: rows inserted and the lag of every partition (from librdkafka's statistics).
    let mut text = String::new();
    for _ in 0..40 {
        text = reqwest::get(format!("http://{}/metrics", running.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("sink_consumer_lag") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(text.contains("sink_rows_inserted_total{table=\"events\"}"), "{text}");
    assert!(
        text.contains(&format!(
            "sink_consumer_lag{{topic=\"{}\",partition=\"0\"}}",
            s.events_topic
        )),
        "{text}"
    );
    running.shutdown().await.unwrap();
    s.drop_database().await;
}

async fn reqwest_get(url: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_is_idempotent_and_adds_a_new_signals_column() {
    let s = setup().await;
    let settings = s.config().checked().unwrap();
    let client = settings.clickhouse(false);
    let again = sink_clickhouse::migrate::migrate(&client, &s.database).await.unwrap();
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    assert!(again.conflicts.is_empty());
    // A database created before `battery_health` existed gains the column.
    client
        .query(&format!(
            "ALTER TABLE `{}`.events DROP COLUMN battery_health",
            s.database
        ))
        .execute()
        .await
        .unwrap();
    let report = sink_clickhouse::migrate::migrate(&client, &s.database).await.unwrap();
    assert_eq!(report.applied.len(), 1, "{:?}", report.applied);
    assert!(report.applied[0].contains("ADD COLUMN `battery_health` Nullable(Float64)"));
    let after = sink_clickhouse::migrate::migrate(&client, &s.database).await.unwrap();
    assert!(after.applied.is_empty());
    s.drop_database().await;
}
