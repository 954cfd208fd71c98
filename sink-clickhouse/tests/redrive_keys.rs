//! A redrive skips an event only when the same app's event of that id is
//! stored, and sends every record with the key of the normal path (the
//! install id), so that an install's records stay in one partition; an
//! output Kafka refused goes to the topic it was going to, and a stub (only
//! its first bytes kept) is never sent.

mod common;

use std::time::Duration;

use common::{now, setup};
use context_integration::{clickhouse_writer, consume_n, consumer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, DeadLetter};
use rdkafka::consumer::Consumer;
use sink_clickhouse::redrive::Selection;
use sink_clickhouse::rows::{DeadLetterRow, EventRow};

fn letter(source: &str, topic: &str, offset: i64, ids: Option<(&str, String)>, payload: Vec<u8>) -> DeadLetterRow {
    DeadLetterRow::from_dead_letter(DeadLetter {
        source: source.into(),
        reason: "refused_by_clickhouse".into(),
        detail: "test".into(),
        source_topic: Some(topic.into()),
        source_partition: Some(0),
        source_offset: Some(offset),
        app_id: ids.as_ref().map(|(app, _)| (*app).to_owned()),
        event_id: ids.map(|(_, id)| id),
        failed_at: now(),
        payload,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_matches_app_and_event_and_keeps_the_install_key() {
    let s = setup().await;
    let id = s.event_schema_id;

    // app-a's event is stored; app-b's event of the same id is not.
    let mut stored = sample::event(95_000, &SampleOptions::default());
    stored.app_id = "app-a".into();
    let mut other_app = stored.clone();
    other_app.app_id = "app-b".into();
    other_app.install_id = uuid::Uuid::new_v4();
    let mut insert = clickhouse_writer()
        .with_database(&s.database)
        .insert::<EventRow>("events")
        .await
        .unwrap();
    insert.write(&EventRow::from_event(stored.clone())).await.unwrap();
    insert.end().await.unwrap();

    // An event the router could not route, of a third install.
    let mut routed = sample::event(95_001, &SampleOptions::default());
    routed.install_id = uuid::Uuid::new_v4();
    let garbage = b"not a record of the contract".to_vec();
    let mut refused = sample::event(95_002, &SampleOptions::default());
    refused.install_id = uuid::Uuid::new_v4();
    let refused_bytes = refused.to_wire(id).unwrap();
    let (stored_bytes, other_bytes, routed_bytes) = (
        stored.to_wire(id).unwrap(),
        other_app.to_wire(id).unwrap(),
        routed.to_wire(id).unwrap(),
    );
    let letters = [
        // The sink's own letters carry no ids: they are in the bytes.
        letter("sink-clickhouse", &s.events_topic, 1, None, stored_bytes.clone()),
        letter("sink-clickhouse", &s.events_topic, 2, None, other_bytes.clone()),
        letter(
            "stream-router",
            &s.events_topic,
            3,
            Some((routed.app_id.as_str(), routed.event_id.to_string())),
            routed_bytes.clone(),
        ),
        letter("stream-router", &s.events_topic, 4, None, garbage.clone()),
        // The router's output the events topic refused (here: the topic
        // named), read by the sink from the dead-letter topic.
        letter("stream-router", &s.deadletter_topic, 5, None, refused_bytes.clone())
            .with_stub_and_target(0, s.events_topic.clone()),
        // A stub: the first bytes of a record too large for the dead letters.
        letter("stream-router", &s.events_topic, 6, None, refused_bytes[..20].to_vec())
            .with_stub_and_target(refused_bytes.len() as u64, s.events_topic.clone()),
    ];
    let mut insert = clickhouse_writer()
        .with_database(&s.database)
        .insert::<DeadLetterRow>("dead_letters")
        .await
        .unwrap();
    for l in &letters {
        insert.write(l).await.unwrap();
    }
    insert.end().await.unwrap();

    let selection = Selection {
        limit: 1000,
        ..Selection::default()
    };
    let outcome = sink_clickhouse::redrive::redrive(&s.config(), &selection, false, &ingest_gateway::Config::default())
        .await
        .unwrap();
    assert_eq!(outcome.already_stored, 1, "{outcome:?}");
    assert_eq!(outcome.sent.get(&s.events_topic), Some(&4), "{outcome:?}");
    assert_eq!(outcome.sent.get(&s.deadletter_topic), None, "{outcome:?}");
    assert_eq!(outcome.truncated, 1, "{outcome:?}");

    let c = consumer(&unique("it_redrive_keys")).unwrap();
    c.subscribe(&[s.events_topic.as_str()]).unwrap();
    let received = consume_n(&c, 4, Duration::from_secs(60)).await.unwrap();
    let key_of = |payload: &[u8]| {
        received
            .iter()
            .find(|(_, value)| value.as_slice() == payload)
            .map(|(key, _)| key.clone())
            .unwrap_or_else(|| panic!("{} bytes were not redriven", payload.len()))
    };
    assert_eq!(
        key_of(&other_bytes),
        Some(other_app.install_id.to_string().into_bytes()),
        "keyed by its install"
    );
    assert_eq!(key_of(&routed_bytes), Some(routed.install_id.to_string().into_bytes()));
    assert_eq!(
        key_of(&refused_bytes),
        Some(refused.install_id.to_string().into_bytes())
    );
    assert_eq!(
        key_of(&garbage),
        None,
        "bytes that are no record have no install to key by"
    );
    assert!(
        received.iter().all(|(_, v)| *v != stored_bytes),
        "the stored event was sent again"
    );
    s.drop_database().await;
}
