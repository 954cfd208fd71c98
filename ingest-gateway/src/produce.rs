//! Producing to Kafka and waiting for every acknowledgement.
//!
//! The producer is idempotent with `acks=all` and a bounded queue. A batch is
//! enqueued record by record; a full queue stops the batch at once (503). The
//! request then waits for every delivery report until its deadline. The
//! [`Health`] it keeps turns `/readyz` false after a failure until a probe (or a
//! later batch) reaches the broker again, and derives `Retry-After`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use context_runtime::kafka::Defaults;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::time::Instant;

use crate::config::Config;

/// One record to produce.
pub struct Outgoing {
    pub topic: Arc<str>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Why a batch could not be acknowledged. All of these are retryable.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("the producer queue is full")]
    QueueFull,
    #[error("Kafka did not acknowledge every event within {0:?}")]
    Timeout(Duration),
    #[error("Kafka refused a record: {0}")]
    Kafka(KafkaError),
}

impl ProduceError {
    /// A refusal every retry of the same records meets until an operator
    /// acts (a record over the topic's size limit, no permission, a policy):
    /// answered with a long `Retry-After`, and it says nothing about the
    /// broker's health. A missing topic is not one: it may be being created
    /// or its leader moving.
    pub fn is_permanent(&self) -> bool {
        use RDKafkaErrorCode as C;
        match self {
            ProduceError::Kafka(e) => matches!(
                e.rdkafka_error_code(),
                Some(
                    C::MessageSizeTooLarge
                        | C::InvalidMessageSize
                        | C::TopicAuthorizationFailed
                        | C::ClusterAuthorizationFailed
                        | C::PolicyViolation
                        | C::InvalidRecord
                )
            ),
            _ => false,
        }
    }
}

/// What the gateway has observed of the broker.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.consecutive_failures.load(Ordering::Relaxed) == 0
    }

    fn failed(&self) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Seconds a client should wait: 1 s after the first failure, doubling
    /// with each further failed batch, at most 60 s.
    pub fn retry_after(&self) -> u64 {
        let n = self.consecutive_failures.load(Ordering::Relaxed).clamp(1, 7);
        (1u64 << (n - 1)).min(60)
    }
}

#[derive(Clone)]
pub struct Kafka {
    producer: FutureProducer,
    pub health: Arc<Health>,
    timeout: Duration,
    probe_topic: String,
}

impl Kafka {
    pub fn new(s: &Config) -> Result<Self, KafkaError> {
        let mut config = s.kafka.client();
        for (key, value) in crate::config::PRODUCER_SETTINGS {
            config.set(*key, *value);
        }
        for (key, value) in crate::config::PRODUCER_DEFAULTS {
            config.set_default(key, *value);
        }
        let producer: FutureProducer = config
            .set("message.timeout.ms", s.produce_timeout.as_millis().to_string())
            .set("queue.buffering.max.messages", s.queue_max_messages.to_string())
            .set("queue.buffering.max.kbytes", s.queue_max_kbytes.to_string())
            // Room for the largest dead letter the request limits allow (an
            // event's whole JSON); events themselves stop at max_record_bytes.
            .set(
                "message.max.bytes",
                (s.limits.max_decompressed_bytes.max(s.limits.max_record_bytes) + (1 << 20)).to_string(),
            )
            .create()?;
        Ok(Kafka {
            producer,
            health: Arc::new(Health::default()),
            timeout: s.produce_timeout,
            probe_topic: s.events_topic.clone(),
        })
    }

    /// Enqueues every record, then waits until all are acknowledged or the
    /// deadline passes.
    pub async fn send_all(&self, records: Vec<Outgoing>) -> Result<(), ProduceError> {
        let started = Instant::now();
        let result = self.send_each(records).await;
        match &result {
            Ok(()) => {
                self.health.succeeded();
                metrics::histogram!("gateway_produce_seconds").record(started.elapsed().as_secs_f64());
            }
            // A refusal for good says nothing about the broker being away.
            Err(e) if e.is_permanent() => {}
            Err(_) => self.health.failed(),
        }
        result
    }

    async fn send_each(&self, records: Vec<Outgoing>) -> Result<(), ProduceError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let record = FutureRecord::to(&r.topic)
                .key(&r.key)
                .payload(&r.value)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(ProduceError::QueueFull);
                }
                Err((e, _)) => return Err(ProduceError::Kafka(e)),
            }
        }
        for f in pending {
            match tokio::time::timeout_at(deadline, f).await {
                Err(_) => return Err(ProduceError::Timeout(self.timeout)),
                Ok(Err(_canceled)) => return Err(ProduceError::Kafka(KafkaError::Canceled)),
                Ok(Ok(Err((e, _)))) => return Err(ProduceError::Kafka(e)),
                Ok(Ok(Ok(_))) => {}
            }
        }
        Ok(())
    }

    /// While unhealthy, asks the broker for metadata every second and marks
    /// the producer healthy again once it answers, so readiness recovers even
    /// when no traffic arrives.
    pub fn probe(&self) -> tokio::task::JoinHandle<()> {
        let kafka = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if kafka.health.healthy() {
                    continue;
                }
                let (producer, topic) = (kafka.producer.clone(), kafka.probe_topic.clone());
                let ok = tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(Some(&topic), Duration::from_secs(2))
                        .map(|md| {
                            md.topics()
                                .iter()
                                .any(|t| t.error().is_none() && !t.partitions().is_empty())
                        })
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                if ok {
                    tracing::info!("the broker answers again; ready");
                    kafka.health.succeeded();
                }
            }
        })
    }

    /// Waits until queued records are delivered (on shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "not every queued record was delivered before shutdown");
        }
    }
}
