//! A broker restart keeps acknowledged records. This test stops and starts the
//! shared broker, so it lives in its own test binary: cargo runs test binaries
//! one after another, so no other test sees the broker go away.

use std::time::Duration;

use context_integration::{consume_n, consumer, create_topic, producer, stack, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{wire, AvroRecord, ContextEvent};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;

#[tokio::test]
async fn broker_restart_keeps_acknowledged_records() -> anyhow::Result<()> {
    let topic = unique("it_restart");
    create_topic(&topic, 1).await?;
    let event = sample::event(77, &SampleOptions::default());
    let payload = event.to_wire(9)?;
    {
        let producer = producer()?;
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| anyhow::anyhow!("delivery failed: {err}"))?;
    }

    stack(&["down", "broker"])?;
    stack(&["up", "broker"])?;

    let consumer = consumer(&unique("it_restart_group"))?;
    consumer.subscribe(&[&topic])?;
    let received = consume_n(&consumer, 1, Duration::from_secs(60)).await?;
    let (id, body) = wire::unframe(&received[0].1)?;
    assert_eq!(id, 9);
    assert_eq!(ContextEvent::decode(body)?, event);
    Ok(())
}
