//! A broker restart (clean or `kill -9`) keeps acknowledged records. These
//! tests stop and start the shared broker, so they live in their own test
//! binary (cargo runs test binaries one after another, so no other test sees
//! the broker go away) and take turns through `BROKER`.

use std::time::Duration;

use context_integration::{consume_n, consumer, create_topic, producer, stack, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{wire, AvroRecord, ContextEvent};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;

/// One test at a time restarts the broker.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn broker_restart_keeps_acknowledged_records() -> anyhow::Result<()> {
    let _turn = BROKER.lock().await;
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

/// `kill -9` of the broker, then `scripts/stack up`: every record the broker
/// acknowledged (acks=all) before the kill is still there.
#[tokio::test]
async fn broker_kill_9_keeps_every_acknowledged_record() -> anyhow::Result<()> {
    let _turn = BROKER.lock().await;
    let topic = unique("it_kill9");
    create_topic(&topic, 2).await?;
    let n = 500;
    {
        let producer = producer()?;
        let mut deliveries = Vec::with_capacity(n);
        for i in 0..n {
            let payload = format!("record-{i}");
            let record = FutureRecord::to(&topic).key(&payload).payload(&payload);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
            );
        }
        // Acknowledged: every delivery reported success before the kill.
        for delivery in deliveries {
            delivery
                .await?
                .map_err(|(e, _)| anyhow::anyhow!("delivery failed: {e}"))?;
        }
    }

    let pid_file = context_integration::repo_root().join(".stack/kafka/pid");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    let killed = std::process::Command::new("kill").args(["-9", &pid]).status()?;
    assert!(killed.success(), "kill -9 {pid}");
    stack(&["up", "broker"])?;

    let consumer = consumer(&unique("it_kill9_group"))?;
    consumer.subscribe(&[&topic])?;
    let mut received: Vec<String> = consume_n(&consumer, n, Duration::from_secs(120))
        .await?
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect();
    received.sort();
    received.dedup();
    assert_eq!(received.len(), n, "every acknowledged record, once");
    Ok(())
}

/// `scripts/stack up` on a running stack changes nothing: same broker process,
/// same topics.
#[tokio::test]
async fn stack_up_twice_is_a_no_op() -> anyhow::Result<()> {
    let _turn = BROKER.lock().await;
    let pid_file = context_integration::repo_root().join(".stack/kafka/pid");
    stack(&["up", "broker"])?;
    let before = std::fs::read_to_string(&pid_file)?;
    stack(&["up", "broker"])?;
    assert_eq!(std::fs::read_to_string(&pid_file)?, before, "the broker was restarted");
    Ok(())
}
