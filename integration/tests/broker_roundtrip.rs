//! A ContextEvent through the real broker: produce, consume with a consumer
//! group, decode, compare.

use std::collections::HashMap;
use std::time::Duration;

use context_integration::{consume_n, consumer, create_topic, producer, unique};
use context_schemas::codec::decode_wire;
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;

const SCHEMA_ID: u32 = 1;

fn writer_schema(
    id: u32,
) -> Result<std::sync::Arc<context_schemas::apache_avro::Schema>, context_schemas::SchemaError> {
    assert_eq!(id, SCHEMA_ID, "record carries an unexpected schema id");
    Ok(std::sync::Arc::new(ContextEvent::schema().clone()))
}

#[tokio::test]
async fn context_events_roundtrip_through_a_consumer_group() -> anyhow::Result<()> {
    let topic = unique("it_events");
    create_topic(&topic, 3).await?;
    let producer = producer()?;
    let events: Vec<ContextEvent> = (0..20)
        .map(|i| sample::event(1000 + i, &SampleOptions::default()))
        .collect();
    for e in &events {
        let payload = e.to_wire(SCHEMA_ID)?;
        let key = e.install_id.to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| anyhow::anyhow!("delivery failed: {err}"))?;
    }

    let consumer = consumer(&unique("it_group"))?;
    consumer.subscribe(&[&topic])?;
    let received = consume_n(&consumer, events.len(), Duration::from_secs(60)).await?;

    let by_id: HashMap<_, _> = events.iter().map(|e| (e.event_id, e)).collect();
    for (key, value) in received {
        let (id, decoded) = decode_wire::<ContextEvent, _>(&value, writer_schema)?;
        assert_eq!(id, SCHEMA_ID);
        let sent = by_id.get(&decoded.event_id).expect("an event we sent");
        assert_eq!(&decoded, *sent);
        assert_eq!(key.as_deref(), Some(sent.install_id.to_string().as_bytes()));
    }
    Ok(())
}
