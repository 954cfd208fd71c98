//! Producing to Kafka and waiting for every acknowledgement.
//!
//! The producer is idempotent with `acks=all` and a bounded queue. A batch is
//! enqueued record by record; a full queue stops the batch at once (503). The
//! request then waits for every delivery report until its deadline. The
//! [`Health`] it keeps turns `/readyz` false after a failure until a probe (or a
//! later batch) reaches the broker again, and derives `Retry-After`.
//!
//! A dead letter always fits its topic: the topic's `max.message.bytes` is
//! read at start (and every five minutes), a dead letter over it is cut to a
//! stub before it is sent ([`Outgoing::fit`]), and one the broker still
//! refuses for its size is sent again alone, then as a stub of
//! [`STUB_BYTES`]. So a large reject never turns its batch into a 500 the
//! phone retries for ever.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use context_runtime::deadletter as dl;
use context_runtime::kafka::Defaults;
use context_runtime::pipeline::{Output, STUB_BYTES};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::time::Instant;

use crate::config::Config;

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: Arc<str>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// A dead letter's `dl.*` headers; none on an event.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Outgoing {
    /// This record cut to fit a topic that takes at most `max_bytes`
    /// ([`dl::fit`]: its value truncated, [`dl::TRUNCATED`] naming the
    /// original length); unchanged when it fits.
    pub fn fit(self, max_bytes: usize) -> Outgoing {
        let Outgoing {
            topic,
            key,
            value,
            headers,
        } = self;
        let fitted = dl::fit(
            Output {
                topic: topic.to_string(),
                key: Some(key),
                payload: value,
                headers,
            },
            max_bytes,
        );
        Outgoing {
            topic,
            key: fitted.key.unwrap_or_default(),
            value: fitted.payload,
            headers: fitted.headers,
        }
    }

    /// Whether [`Outgoing::fit`] cut this record.
    pub fn is_stub(&self) -> bool {
        self.headers.iter().any(|(k, _)| k == dl::TRUNCATED)
    }
}

/// The broker's default `max.message.bytes` (1 MiB + 12), assumed for the
/// dead-letter topic while its own cannot be read.
pub const BROKER_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// How often the dead-letter topic's `max.message.bytes` is read again.
const LIMIT_REFRESH: Duration = Duration::from_secs(300);

/// A refusal of a record for its size: librdkafka's own check
/// (`MSG_SIZE_TOO_LARGE` against `message.max.bytes`) or the broker's
/// (`MESSAGE_TOO_LARGE` against the topic's `max.message.bytes`,
/// `RECORD_LIST_TOO_LARGE`).
fn refused_for_size(e: &ProduceError) -> bool {
    matches!(
        e,
        ProduceError::Kafka(k) if matches!(
            k.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
        )
    )
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
    deadletter_topic: Arc<str>,
    /// The largest dead letter sent whole: the dead-letter topic's
    /// `max.message.bytes`, at most the producer's `message.max.bytes`.
    deadletter_max_bytes: Arc<AtomicUsize>,
    /// The producer's `message.max.bytes`.
    producer_max_bytes: usize,
    /// Reads the dead-letter topic's `max.message.bytes`.
    admin: Arc<AdminClient<DefaultClientContext>>,
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
        // Room for the largest dead letter the request limits allow (an
        // event's whole JSON); events themselves stop at max_record_bytes.
        let producer_max_bytes = s.limits.max_decompressed_bytes.max(s.limits.max_record_bytes) + (1 << 20);
        let producer: FutureProducer = config
            .set("message.timeout.ms", s.produce_timeout.as_millis().to_string())
            .set("queue.buffering.max.messages", s.queue_max_messages.to_string())
            .set("queue.buffering.max.kbytes", s.queue_max_kbytes.to_string())
            .set("message.max.bytes", producer_max_bytes.to_string())
            .create()?;
        let assumed = BROKER_DEFAULT_MAX_MESSAGE_BYTES.min(producer_max_bytes);
        Ok(Kafka {
            producer,
            health: Arc::new(Health::default()),
            timeout: s.produce_timeout,
            probe_topic: s.events_topic.clone(),
            deadletter_topic: s.deadletter_topic.as_str().into(),
            deadletter_max_bytes: Arc::new(AtomicUsize::new(assumed)),
            producer_max_bytes,
            admin: Arc::new(s.kafka.client().create()?),
        })
    }

    /// The largest dead letter sent whole; a larger one is cut to a stub
    /// ([`Outgoing::fit`]).
    pub fn deadletter_max_bytes(&self) -> usize {
        self.deadletter_max_bytes.load(Ordering::Relaxed)
    }

    /// Reads the dead-letter topic's `max.message.bytes` and takes it as the
    /// largest dead letter (at most the producer's `message.max.bytes`);
    /// false when it cannot be read (the last value read, or the broker's
    /// default, stays).
    pub async fn refresh_deadletter_limit(&self) -> bool {
        let topic = self.deadletter_topic.clone();
        match read_max_message_bytes(&self.admin, &topic, Duration::from_secs(5)).await {
            Ok(topic_max) => {
                let limit = topic_max.min(self.producer_max_bytes);
                let before = self.deadletter_max_bytes.swap(limit, Ordering::Relaxed);
                metrics::gauge!("gateway_deadletter_max_bytes").set(limit as f64);
                if before != limit {
                    tracing::info!(
                        topic = %topic,
                        max_message_bytes = topic_max,
                        largest_whole_dead_letter = limit,
                        "dead letters up to this size are kept whole, larger ones as stubs of their first bytes"
                    );
                }
                if limit < 4 * STUB_BYTES {
                    tracing::warn!(
                        topic = %topic,
                        max_message_bytes = topic_max,
                        "the dead-letter topic takes so little that a dead letter with its headers may not fit even \
                         as a stub: raise its max.message.bytes (33 MiB, the gateway's producer limit, keeps every \
                         dead letter whole)"
                    );
                }
                true
            }
            Err(e) => {
                let limit = self.deadletter_max_bytes();
                metrics::gauge!("gateway_deadletter_max_bytes").set(limit as f64);
                tracing::warn!(
                    topic = %topic,
                    error = %e,
                    largest_whole_dead_letter = limit,
                    "cannot read the dead-letter topic's max.message.bytes (the gateway needs DescribeConfigs on \
                     it); dead letters over the last known limit, or the broker's default, are kept as stubs"
                );
                false
            }
        }
    }

    /// Reads the dead-letter topic's limit again every five minutes (a
    /// topic created or changed after the start).
    pub fn watch_deadletter_limit(&self) -> tokio::task::JoinHandle<()> {
        let kafka = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIMIT_REFRESH).await;
                kafka.refresh_deadletter_limit().await;
            }
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
        let deadline = Instant::now() + self.timeout;
        let mut pending = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match self.enqueue(r) {
                Ok(f) => pending.push((i, f)),
                Err(e) if self.is_dead_letter(r) && refused_for_size(&e) => {
                    self.resend_dead_letter(r, deadline).await?;
                }
                Err(e) => return Err(e),
            }
        }
        for (i, f) in pending {
            match self.acknowledged(f, deadline).await {
                Ok(()) => {}
                Err(e) if self.is_dead_letter(&records[i]) && refused_for_size(&e) => {
                    self.resend_dead_letter(&records[i], deadline).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues one record.
    fn enqueue(&self, r: &Outgoing) -> Result<DeliveryFuture, ProduceError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_slice()),
            });
        }
        let record = FutureRecord::to(&r.topic)
            .key(&r.key)
            .payload(&r.value)
            .headers(headers);
        match self.producer.send_result(record) {
            Ok(f) => Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(ProduceError::QueueFull),
            Err((e, _)) => Err(ProduceError::Kafka(e)),
        }
    }

    /// Waits for one delivery report until `deadline`.
    async fn acknowledged(&self, f: DeliveryFuture, deadline: Instant) -> Result<(), ProduceError> {
        match tokio::time::timeout_at(deadline, f).await {
            Err(_) => Err(ProduceError::Timeout(self.timeout)),
            Ok(Err(_canceled)) => Err(ProduceError::Kafka(KafkaError::Canceled)),
            Ok(Ok(Err((e, _)))) => Err(ProduceError::Kafka(e)),
            Ok(Ok(Ok(_))) => Ok(()),
        }
    }

    fn is_dead_letter(&self, r: &Outgoing) -> bool {
        *r.topic == *self.deadletter_topic
    }

    /// A dead letter refused for its size: sent again whole and alone first
    /// (the broker refuses a whole batch of records, so a small one may
    /// have travelled with a large one), then, refused again, as a stub of
    /// its first [`STUB_BYTES`] with its headers. Only a stub refused too
    /// fails the batch.
    async fn resend_dead_letter(&self, r: &Outgoing, deadline: Instant) -> Result<(), ProduceError> {
        if !r.is_stub() {
            match self.send_one(r, deadline).await {
                Err(e) if refused_for_size(&e) => {}
                other => return other,
            }
        }
        let stub = r.clone().fit(STUB_BYTES);
        tracing::warn!(
            bytes = r.value.len(),
            topic = %r.topic,
            "the dead-letter topic refused a dead letter for its size: sending a stub of its first bytes \
             (raise the topic's max.message.bytes to keep them whole)"
        );
        metrics::counter!("gateway_deadletters_truncated_total", "when" => "refused").increment(1);
        self.send_one(&stub, deadline).await
    }

    async fn send_one(&self, r: &Outgoing, deadline: Instant) -> Result<(), ProduceError> {
        let f = self.enqueue(r)?;
        self.acknowledged(f, deadline).await
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

/// `max.message.bytes` of `topic`, as the brokers describe it (the topic's
/// own, or the broker's default it inherits).
async fn read_max_message_bytes(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    wait: Duration,
) -> Result<usize, String> {
    let spec = ResourceSpecifier::Topic(topic);
    let opts = AdminOptions::new().request_timeout(Some(wait));
    let described = tokio::time::timeout(wait + Duration::from_secs(1), admin.describe_configs([&spec], &opts))
        .await
        .map_err(|_| format!("no answer within {wait:?}"))?
        .map_err(|e| e.to_string())?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| "no answer for the topic".to_owned())?
        .map_err(|code| format!("{code}"))?;
    let value = resource
        .get("max.message.bytes")
        .and_then(|entry| entry.value.clone())
        .ok_or_else(|| "the topic has no max.message.bytes".to_owned())?;
    value
        .trim()
        .parse::<usize>()
        .map_err(|e| format!("max.message.bytes `{value}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_over_the_limit_is_cut_to_a_stub_with_its_headers() {
        let record = Outgoing {
            topic: "dead".into(),
            key: b"install".to_vec(),
            value: vec![b'x'; 300_000],
            headers: vec![(dl::REASON.to_owned(), b"invalid_event_id".to_vec())],
        };
        let same = record.clone().fit(1 << 20);
        assert!(!same.is_stub());
        assert_eq!(same.value.len(), 300_000);
        let stub = record.fit(200_000);
        assert!(stub.is_stub());
        assert!(stub.value.len() < 200_000 && stub.value.iter().all(|&b| b == b'x'));
        let header = |k: &str| stub.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(header(dl::TRUNCATED).as_deref(), Some(&b"300000"[..]));
        assert_eq!(header(dl::REASON).as_deref(), Some(&b"invalid_event_id"[..]));
        assert_eq!((&*stub.topic, stub.key.as_slice()), ("dead", &b"install"[..]));
    }

    #[test]
    fn size_refusals_are_told_apart() {
        let size = ProduceError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        let batch = ProduceError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::MessageBatchTooLarge));
        let acl = ProduceError::Kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ));
        assert!(refused_for_size(&size) && refused_for_size(&batch));
        assert!(!refused_for_size(&acl) && !refused_for_size(&ProduceError::QueueFull));
    }
}
