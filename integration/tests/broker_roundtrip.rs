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

/// Kafka transactions: what a transactional producer aborts never reaches a
/// `read_committed` consumer, what it commits does, once.
#[tokio::test]
async fn aborted_transactions_are_invisible_to_read_committed_consumers() -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let topic = unique("it_txn");
    create_topic(&topic, 2).await?;
    let producer: ThreadedProducer<DefaultProducerContext> = context_integration::base_config()
        .set("transactional.id", unique("it_txn_producer"))
        .create()?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;
    let send = |value: &str| {
        producer
            .send(BaseRecord::to(&topic).key(value).payload(value))
            .map_err(|(e, _)| anyhow::anyhow!("enqueue {value}: {e}"))
    };
    for (batch, commit) in [
        (["c1", "c2", "c3"], true),
        (["a1", "a2", "a3"], false),
        (["c4", "c5", "c6"], true),
    ] {
        producer.begin_transaction()?;
        for v in batch {
            send(v)?;
        }
        if commit {
            producer.commit_transaction(timeout)?;
        } else {
            // Written to the log first, so that the abort has something to hide.
            producer.flush(timeout)?;
            producer.abort_transaction(timeout)?;
        }
    }

    let read = |isolation: &'static str, n: usize| {
        let topic = topic.clone();
        async move {
            let consumer: rdkafka::consumer::StreamConsumer = context_integration::base_config()
                .set("group.id", unique("it_txn_group"))
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", isolation)
                .create()?;
            consumer.subscribe(&[&topic])?;
            let mut values: Vec<String> = consume_n(&consumer, n, Duration::from_secs(60))
                .await?
                .into_iter()
                .map(|(_, v)| String::from_utf8(v).unwrap())
                .collect();
            // Nothing else arrives.
            let extra = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await;
            anyhow::ensure!(extra.is_err(), "{isolation}: more than {n} records");
            values.sort();
            anyhow::Ok(values)
        }
    };
    assert_eq!(read("read_committed", 6).await?, ["c1", "c2", "c3", "c4", "c5", "c6"]);
    // The aborted records are in the log: read_uncommitted sees them.
    assert_eq!(read("read_uncommitted", 9).await?.len(), 9);
    Ok(())
}
