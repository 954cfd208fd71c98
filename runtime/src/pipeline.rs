//! Consume → transform → produce with Kafka transactions, shared by the
//! services that turn one topic into others (`stream-router`,
//! `enrich-activity serve`).
//!
//! A [`Pipeline`] reads batches from its consumer group and commits each
//! batch's outputs together with the batch's input offsets:
//!
//! - **exactly once** (the default): the outputs are produced inside a Kafka
//!   transaction that also carries the input offsets
//!   (`send_offsets_to_transaction` with the consumer's group metadata, so a
//!   replica that lost its partitions in a rebalance is fenced and cannot
//!   commit). Readers with `isolation.level=read_committed` see every output
//!   exactly once, whatever crashes: an aborted or unfinished transaction is
//!   invisible and its input is read again.
//! - **at least once** (only when configured, e.g. a broker without
//!   transactions): the outputs are produced and every acknowledgement awaited
//!   before the offsets are committed. A crash between the two repeats outputs;
//!   nothing is lost.
//!
//! A rebalance while a batch is being collected discards the batch before
//! anything of it is produced and rewinds to the committed offsets, so no
//! offset is ever committed past a record whose outputs were not written.
//!
//! An output the broker refuses for good (larger than the topic takes, a
//! policy, no permission to write the topic) is set aside instead of retried
//! for ever: it goes to the dead-letter topic with its key, headers and why
//! (`dl.reason = refused_by_kafka`, `dl.target_topic`), cut to a stub with its
//! first bytes when even the dead letter is refused, and the batch commits.
//! Without a dead-letter topic such a batch is retried until an operator acts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use crate::kafka::{Defaults, KafkaSettings};

/// How outputs and input offsets are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
}

impl std::str::FromStr for Delivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exactly-once" => Ok(Delivery::ExactlyOnce),
            "at-least-once" => Ok(Delivery::AtLeastOnce),
            other => Err(format!(
                "`{other}` is not a delivery mode (exactly-once or at-least-once)"
            )),
        }
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::ExactlyOnce => "exactly-once",
            Delivery::AtLeastOnce => "at-least-once",
        })
    }
}

/// What a pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub kafka: KafkaSettings,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Prefix of the metric names (`<prefix>_consumer_lag`, ...).
    pub metrics_prefix: &'static str,
    pub delivery: Delivery,
    /// With `ExactlyOnce`: fall back to at least once, with a warning, when
    /// the broker has no transactions. Otherwise such a broker stops the start.
    pub allow_fallback: bool,
    /// Stable per replica (a pod name): a restarted replica with the same id
    /// fences its predecessor and aborts its open transaction at once.
    pub transactional_id: String,
    pub session_timeout: Duration,
    /// How long a Kafka call (commit, abort, init) may take.
    pub timeout: Duration,
    /// Where outputs the broker refuses for good are set aside; empty: such a
    /// batch is retried until an operator acts.
    pub deadletter_topic: String,
    /// The service named in those dead letters (`dl.source`).
    pub service: &'static str,
    /// The largest record the producer sends (librdkafka's
    /// `message.max.bytes`); a larger output is refused for good.
    pub max_record_bytes: usize,
}

/// The default `max_record_bytes` of a pipeline: room for an event of the
/// gateway's largest `limits.max_record_bytes` the docs suggest, with its
/// headers. The topic's own `max.message.bytes` still decides.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 8 << 20;

/// A dead letter that the broker refuses even as a stub of this many bytes
/// of its value cannot be set aside.
pub const STUB_BYTES: usize = 16 << 10;

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The batch was given up (transaction aborted, group rebalanced); its
    /// input will be read again. Retry by reading the next batch.
    #[error("batch not committed, its records will be read again: {0}")]
    Retry(String),
    /// The producer or consumer cannot go on (fenced by a newer replica with
    /// the same transactional id, or a fatal client error).
    #[error("{0}")]
    Fatal(String),
}

/// The consumer's context: notices rebalances and exports the lag.
pub struct PipelineContext {
    rebalanced: AtomicBool,
    prefix: &'static str,
    pub rebalances: AtomicU64,
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(format!("{}_consumer_lag", self.prefix), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Error(_)) {
            self.rebalanced.store(true, Ordering::SeqCst);
            self.rebalances.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(?rebalance, "rebalance");
    }
}

/// A consumer group and a producer that commit together.
pub struct Pipeline {
    consumer: std::sync::Arc<StreamConsumer<PipelineContext>>,
    /// What the stall watch reads ([`crate::stall`]).
    progress: std::sync::Arc<crate::stall::Progress>,
    producer: FutureProducer,
    delivery: Delivery,
    timeout: Duration,
    prefix: &'static str,
    deadletter_topic: String,
    service: &'static str,
    max_record_bytes: usize,
    /// For the topics' `max.message.bytes`.
    admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    /// Each output topic's `max.message.bytes` and when it was read.
    limits: std::sync::Mutex<std::collections::HashMap<String, (usize, std::time::Instant)>>,
}

/// How long a topic's `max.message.bytes` is trusted before it is read again.
const LIMIT_TTL: Duration = Duration::from_secs(300);

/// Why a broker or librdkafka refused one output.
fn refused_for_good(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | MessageBatchTooLarge
                | InvalidRecord
                | PolicyViolation
                | TopicAuthorizationFailed
                | InvalidTopic
        )
    )
}

/// How one attempt at producing a batch's outputs ended.
enum Attempt {
    Done,
    /// These outputs were refused for good (index, error): nothing of the
    /// attempt was committed; set them aside and try again.
    Refused(Vec<(usize, String)>),
    Failed(PipelineError),
}

/// What `init_transactions` said about the broker.
enum InitFailure {
    /// The broker has no transactions (too old, or turned off).
    NoTransactions(String),
    /// The broker refuses this producer transactions (ACLs) or the
    /// producer cannot go on: configuration, not a moment.
    Refused(String),
    /// Anything else (a broker still starting or electing its transaction
    /// coordinator, a timeout): try again.
    NotNow(String),
}

fn classify_init(e: &KafkaError) -> InitFailure {
    use RDKafkaErrorCode::*;
    match e.rdkafka_error_code() {
        Some(UnsupportedFeature | UnsupportedVersion) => InitFailure::NoTransactions(e.to_string()),
        Some(TransactionalIdAuthorizationFailed | ClusterAuthorizationFailed) => InitFailure::Refused(format!(
            "{e}: the broker's ACLs do not let this principal use transactions (Write on the transactional id, \
             IdempotentWrite on the cluster; docs/security.md lists them)"
        )),
        _ => match e {
            KafkaError::Transaction(t) if t.is_fatal() => InitFailure::Refused(e.to_string()),
            _ => InitFailure::NotNow(e.to_string()),
        },
    }
}

/// How many times `init_transactions` is tried before the start fails.
const INIT_ATTEMPTS: u32 = 12;

/// librdkafka settings a pipeline derives from its service's keys, or relies
/// on: refused in `[kafka.properties]`.
pub const DERIVED_SETTINGS: &[(&str, &str)] = &[
    (
        "queue.buffering.max.messages",
        "a whole batch's outputs must fit the producer's queue, or the batch retries for ever",
    ),
    ("session.timeout.ms", "write `session_timeout`"),
    ("message.max.bytes", "write `max_record_bytes`"),
    (
        "partition.assignment.strategy",
        "the pipeline relies on eager assignors (a rebalance revokes every partition)",
    ),
];

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    // The services run on the multi-threaded runtime; elsewhere just call.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Pipeline {
    /// Connects, and with `ExactlyOnce` initialises transactions (fencing any
    /// earlier producer with the same transactional id). Then subscribes.
    pub fn start(s: &PipelineSettings) -> Result<Self, String> {
        let mut consumer_config = s.kafka.client();
        consumer_config
            .set("group.id", &s.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // Only committed transactions of upstream producers.
            .set("isolation.level", "read_committed")
            // Eager assignors: a rebalance revokes every partition, and
            // fetching restarts at the committed offsets.
            .set("partition.assignment.strategy", "range,roundrobin")
            .set("session.timeout.ms", s.session_timeout.as_millis().to_string())
            .set_default("statistics.interval.ms", "5000");
        let consumer: StreamConsumer<PipelineContext> = consumer_config
            .create_with_context(PipelineContext {
                rebalanced: AtomicBool::new(false),
                prefix: s.metrics_prefix,
                rebalances: AtomicU64::new(0),
            })
            .map_err(|e| format!("creating the consumer: {e}"))?;

        let producer_config = |transactional: bool| {
            let mut c = s.kafka.client();
            // Room for a whole batch's outputs (router: max_batch x targets).
            c.set("queue.buffering.max.messages", "1000000")
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set_default("compression.type", "zstd")
                .set_default("linger.ms", "5")
                .set("message.max.bytes", s.max_record_bytes.max(STUB_BYTES * 4).to_string())
                .set("message.timeout.ms", s.timeout.as_millis().to_string());
            if transactional {
                // librdkafka refuses a message.timeout.ms above the
                // transaction timeout: a `timeout` over a minute widens it.
                c.set("transactional.id", &s.transactional_id)
                    .set("transaction.timeout.ms", transaction_timeout_ms(s.timeout).to_string());
            }
            c
        };
        let mut delivery = s.delivery;
        let producer: FutureProducer = match delivery {
            Delivery::AtLeastOnce => producer_config(false)
                .create()
                .map_err(|e| format!("creating the producer: {e}"))?,
            Delivery::ExactlyOnce => {
                let p: FutureProducer = producer_config(true)
                    .create()
                    .map_err(|e| format!("creating the producer: {e}"))?;
                let mut wait = Duration::from_secs(1);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let failure = match blocking(|| p.init_transactions(s.timeout)) {
                        Ok(()) => break p,
                        Err(e) => classify_init(&e),
                    };
                    match failure {
                        InitFailure::NoTransactions(e) if s.allow_fallback => {
                            tracing::warn!(error = %e, "the broker has no transactions: falling back to at-least-once delivery (outputs may repeat after a crash)");
                            delivery = Delivery::AtLeastOnce;
                            break producer_config(false)
                                .create()
                                .map_err(|e| format!("creating the producer: {e}"))?;
                        }
                        InitFailure::NoTransactions(e) => {
                            return Err(format!(
                                "the broker has no transactions ({e}). It can run at least once: set delivery = \
                                 \"at-least-once\" or allow_fallback = true"
                            ))
                        }
                        InitFailure::Refused(e) => return Err(format!("initialising Kafka transactions: {e}")),
                        InitFailure::NotNow(e) if attempt < INIT_ATTEMPTS => {
                            tracing::warn!(error = %e, attempt, retry_in = ?wait, "initialising Kafka transactions failed (the broker may still be starting); trying again");
                            std::thread::sleep(wait);
                            wait = (wait * 2).min(Duration::from_secs(10));
                        }
                        InitFailure::NotNow(e) => {
                            return Err(format!(
                                "initialising Kafka transactions failed {attempt} times, the last: {e}. The broker is \
                                 unreachable or its transaction coordinator unavailable (a transaction state log it \
                                 cannot create, with fewer brokers than transaction.state.log.replication.factor)"
                            ))
                        }
                    }
                }
            }
        };
        let topics: Vec<&str> = s.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("subscribing to {topics:?}: {e}"))?;
        tracing::info!(%delivery, group = %s.group_id, ?topics, "pipeline started");
        Ok(Pipeline {
            consumer: std::sync::Arc::new(consumer),
            progress: Default::default(),
            producer,
            delivery,
            timeout: s.timeout,
            prefix: s.metrics_prefix,
            deadletter_topic: s.deadletter_topic.clone(),
            service: s.service,
            max_record_bytes: s.max_record_bytes.max(STUB_BYTES * 4),
            admin: s
                .kafka
                .client()
                .create()
                .map_err(|e| format!("creating the admin client: {e}"))?,
            limits: Default::default(),
        })
    }

    /// The mode in force (after any fallback).
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// Starts the stall watch of this pipeline's group into `watch`
    /// ([`crate::stall`]); nothing when its `after` is zero.
    pub fn watch_stalls(
        &self,
        watch: std::sync::Arc<crate::stall::Watch>,
        kafka: &KafkaSettings,
        shutdown: crate::shutdown::Shutdown,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
        crate::stall::spawn(
            watch,
            kafka,
            self.progress.clone(),
            crate::stall::positions_of(self.consumer.clone()),
            shutdown,
        )
        .map_err(|e| format!("starting the stall watch: {e:#}"))
    }

    /// How many rebalances this consumer has been through.
    pub fn rebalances(&self) -> u64 {
        self.consumer.context().rebalances.load(Ordering::Relaxed)
    }

    /// Reads up to `max` records, waiting at most `linger` after the first
    /// (and `idle` for the first). An empty batch means nothing arrived, or a
    /// rebalance discarded what had been read (it will be read again).
    pub async fn next_batch(
        &self,
        max: usize,
        linger: Duration,
        idle: Duration,
    ) -> Result<Vec<OwnedMessage>, PipelineError> {
        self.consumer.context().rebalanced.store(false, Ordering::SeqCst);
        let mut batch = Vec::new();
        let mut deadline = tokio::time::Instant::now() + idle;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Ok(Ok(msg)) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + linger;
                    }
                    self.progress.delivered(msg.topic(), msg.partition(), msg.offset());
                    batch.push(msg.detach());
                }
            }
        }
        if self.consumer.context().rebalanced.load(Ordering::SeqCst) && !batch.is_empty() {
            metrics::counter!(format!("{}_batches_discarded_total", self.prefix), "why" => "rebalance").increment(1);
            tracing::info!(
                records = batch.len(),
                "a rebalance came while reading: batch discarded, reading again from the committed offsets"
            );
            self.rewind()?;
            return Ok(Vec::new());
        }
        Ok(batch)
    }

    /// Produces `outputs` and commits the offsets after `batch`, as one
    /// transaction (or outputs first, offsets after, at least once).
    pub async fn commit(&self, batch: &[OwnedMessage], mut outputs: Vec<Output>) -> Result<(), PipelineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let offsets = next_offsets(batch).map_err(|e| PipelineError::Fatal(e.to_string()))?;
        // The broker refuses a whole request of a partition when one record
        // in it is too large: a refused output is first sent again alone
        // (isolated), and set aside only when it is refused alone too. Each
        // round isolates or sets aside (output, dead letter, stub): six
        // rounds at most change anything.
        let mut isolated: std::collections::HashSet<usize> = std::collections::HashSet::new();
        // Outputs larger than their topic takes are set aside before anything
        // is sent: the broker would refuse the whole request they travel in.
        let limits = self.limits_of(&outputs).await;
        let too_large: Vec<(usize, String)> = outputs
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                let limit = *limits.get(&o.topic)?;
                let size = o.payload.len() + crate::deadletter::overhead(o);
                (size > limit).then(|| {
                    (
                        i,
                        format!("{size} bytes with headers, larger than the topic's max.message.bytes ({limit})"),
                    )
                })
            })
            .collect();
        if !too_large.is_empty() {
            self.set_aside(&mut outputs, too_large, &limits)?;
        }
        for _ in 0..6 {
            let attempt = match self.delivery {
                Delivery::AtLeastOnce => match self.produce_all(&outputs, &isolated).await {
                    Attempt::Done => {
                        blocking(|| self.consumer.commit(&offsets, CommitMode::Sync))
                            .map_err(|e| PipelineError::Retry(format!("committing offsets: {e}")))?;
                        Attempt::Done
                    }
                    other => other,
                },
                Delivery::ExactlyOnce => self.transaction(&outputs, &offsets, &isolated).await,
            };
            match attempt {
                Attempt::Done => return Ok(()),
                Attempt::Refused(refused) => {
                    let (alone, together): (Vec<_>, Vec<_>) =
                        refused.into_iter().partition(|(i, _)| isolated.contains(i));
                    if !together.is_empty() {
                        tracing::info!(
                            outputs = together.len(),
                            "outputs refused in a request together: sending each again alone"
                        );
                    }
                    isolated.extend(together.iter().map(|(i, _)| *i));
                    self.set_aside(&mut outputs, alone, &limits)?;
                }
                Attempt::Failed(e) => {
                    tracing::warn!(error = %e, "batch not committed");
                    return Err(e);
                }
            }
        }
        self.rewind()?;
        Err(PipelineError::Retry(
            "outputs are still refused after being set aside".into(),
        ))
    }

    /// Replaces the outputs the broker refused for good by their dead
    /// letters (a dead letter refused in turn by a stub of it). `Err` when
    /// there is no dead-letter topic, or even a stub is refused: the batch
    /// waits for an operator (rewound, retried).
    fn set_aside(
        &self,
        outputs: &mut [Output],
        refused: Vec<(usize, String)>,
        limits: &std::collections::HashMap<String, usize>,
    ) -> Result<(), PipelineError> {
        use crate::deadletter as dl;
        let dead_limit = limits
            .get(&self.deadletter_topic)
            .copied()
            .unwrap_or(usize::MAX)
            .min(self.max_record_bytes);
        for (i, error) in refused {
            let o = &mut outputs[i];
            let stuck = |why: String| {
                tracing::error!(topic = %o.topic, error = %error, "{why}");
                metrics::counter!(format!("{}_outputs_refused_total", self.prefix), "outcome" => "stuck").increment(1);
                let _ = self.rewind();
                PipelineError::Retry(format!(
                    "an output for {} is refused for good ({error}); {why}",
                    o.topic
                ))
            };
            if self.deadletter_topic.is_empty() {
                return Err(stuck(
                    "no deadletter_topic to set it aside: the batch is retried until the topic takes it".into(),
                ));
            }
            if o.topic == self.deadletter_topic {
                if o.headers.iter().any(|(k, _)| k == dl::TRUNCATED) && o.payload.len() <= STUB_BYTES {
                    return Err(stuck(format!(
                        "even a {STUB_BYTES}-byte stub is refused by {}: check the topic's ACLs and max.message.bytes",
                        self.deadletter_topic
                    )));
                }
                tracing::warn!(error = %error, "the dead-letter topic refused a dead letter: sending a stub of it");
                metrics::counter!(format!("{}_outputs_refused_total", self.prefix), "outcome" => "stub").increment(1);
                *o = dl::fit(std::mem::replace(o, empty_output()), STUB_BYTES);
                continue;
            }
            tracing::warn!(topic = %o.topic, error = %error, "an output is refused for good: dead-lettering it");
            metrics::counter!(format!("{}_outputs_refused_total", self.prefix), "outcome" => "dead_lettered")
                .increment(1);
            metrics::counter!("deadletters_total", "source" => self.service, "reason" => "refused_by_kafka")
                .increment(1);
            let original = std::mem::replace(o, empty_output());
            let mut headers: Vec<(String, Vec<u8>)> = original
                .headers
                .into_iter()
                .filter(|(k, _)| !k.starts_with("dl."))
                .collect();
            let mut add = |k: &str, v: String| headers.push((k.to_owned(), v.into_bytes()));
            add(dl::SOURCE, self.service.into());
            add(dl::REASON, "refused_by_kafka".into());
            add(dl::DETAIL, format!("{} refused the record: {error}", original.topic));
            add(dl::TIME, crate::clock::rfc3339(crate::clock::now_micros()));
            add(dl::TARGET_TOPIC, original.topic.clone());
            *o = dl::fit(
                Output {
                    topic: self.deadletter_topic.clone(),
                    key: original.key,
                    payload: original.payload,
                    headers,
                },
                dead_limit,
            );
        }
        Ok(())
    }

    /// `max.message.bytes` of every topic of `outputs` and of the dead-letter
    /// topic, read from the brokers (cached for [`LIMIT_TTL`]); a topic whose
    /// limit cannot be read is left out (the broker's refusal decides).
    async fn limits_of(&self, outputs: &[Output]) -> std::collections::HashMap<String, usize> {
        use rdkafka::admin::{AdminOptions, ResourceSpecifier};
        let mut topics: Vec<&str> = outputs.iter().map(|o| o.topic.as_str()).collect();
        if !self.deadletter_topic.is_empty() {
            topics.push(&self.deadletter_topic);
        }
        topics.sort_unstable();
        topics.dedup();
        let mut known = std::collections::HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.limits.lock().expect("limits lock");
            for t in topics {
                match cache.get(t) {
                    Some((limit, at)) if at.elapsed() < LIMIT_TTL => {
                        known.insert(t.to_owned(), *limit);
                    }
                    _ => missing.push(t.to_owned()),
                }
            }
        }
        if missing.is_empty() {
            return known;
        }
        let specs: Vec<ResourceSpecifier<'_>> = missing.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        match self.admin.describe_configs(&specs, &opts).await {
            Ok(results) => {
                let mut cache = self.limits.lock().expect("limits lock");
                for (topic, r) in missing.iter().zip(results) {
                    let limit = r
                        .ok()
                        .and_then(|c| c.get("max.message.bytes").and_then(|e| e.value.clone()))
                        .and_then(|v| v.parse::<usize>().ok());
                    if let Some(limit) = limit {
                        cache.insert(topic.clone(), (limit, std::time::Instant::now()));
                        known.insert(topic.clone(), limit);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, topics = ?missing, "cannot read the topics' max.message.bytes; the broker's answers decide")
            }
        }
        known
    }

    /// Queues `o`; an isolated output goes in a request of its own: what was
    /// queued before it is flushed first, and it is flushed before the next.
    fn enqueue_in_turn(&self, o: &Output, alone: bool) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        if alone {
            blocking(|| self.producer.flush(self.timeout))?;
        }
        let d = self.enqueue(o)?;
        if alone {
            blocking(|| self.producer.flush(self.timeout))?;
        }
        Ok(d)
    }

    async fn transaction(
        &self,
        outputs: &[Output],
        offsets: &TopicPartitionList,
        isolated: &std::collections::HashSet<usize>,
    ) -> Attempt {
        match self.transaction_once(outputs, offsets, isolated).await {
            Ok(()) => Attempt::Done,
            Err(Attempt::Refused(refused)) => Attempt::Refused(refused),
            Err(Attempt::Failed(e)) => {
                tracing::warn!(error = %e, "transaction failed");
                Attempt::Failed(e)
            }
            Err(Attempt::Done) => Attempt::Done,
        }
    }

    async fn transaction_once(
        &self,
        outputs: &[Output],
        offsets: &TopicPartitionList,
        isolated: &std::collections::HashSet<usize>,
    ) -> Result<(), Attempt> {
        let classify = |what: &str, e: KafkaError| -> PipelineError {
            match &e {
                KafkaError::Transaction(t) if t.is_fatal() => PipelineError::Fatal(format!("{what}: {e}")),
                _ => PipelineError::Retry(format!("{what}: {e}")),
            }
        };
        // A transaction that cannot even begin (a commit or abort of an earlier
        // one still pending in librdkafka) cannot be repaired here: restarting
        // fences and aborts whatever is open.
        self.producer.begin_transaction().map_err(|e| {
            Attempt::Failed(PipelineError::Fatal(format!(
                "beginning a transaction: {e}; restarting aborts what is open"
            )))
        })?;
        let mut deliveries = Vec::with_capacity(outputs.len());
        let mut refused = Vec::new();
        let result = async {
            for (i, o) in outputs.iter().enumerate() {
                match self.enqueue_in_turn(o, isolated.contains(&i)) {
                    Ok(d) => deliveries.push((i, d)),
                    Err(e) if refused_for_good(&e) => refused.push((i, e.to_string())),
                    Err(e) => return Err(PipelineError::Retry(format!("queueing an output for {}: {e}", o.topic))),
                }
            }
            if !refused.is_empty() {
                return Err(PipelineError::Retry("outputs refused for good".into()));
            }
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or_else(|| PipelineError::Retry("no consumer group metadata".into()))?;
            blocking(|| {
                self.producer
                    .send_offsets_to_transaction(offsets, &metadata, self.timeout)
            })
            .map_err(|e| classify("adding the offsets to the transaction", e))?;
            // Commit flushes, and fails when any output failed. A retriable
            // failure (a timeout) leaves the commit pending in librdkafka: the
            // same call must be made again, or every later call conflicts.
            self.retrying("committing the transaction", |t| self.producer.commit_transaction(t))
                .map_err(|e| classify("committing the transaction", e))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(PipelineError::Fatal(why)) => Err(Attempt::Failed(PipelineError::Fatal(why))),
            Err(PipelineError::Retry(why)) => {
                metrics::counter!(format!("{}_transactions_aborted_total", self.prefix)).increment(1);
                self.retrying("aborting the transaction", |t| self.producer.abort_transaction(t))
                    .map_err(|e| {
                        Attempt::Failed(PipelineError::Fatal(format!(
                            "aborting the transaction: {e}; restarting aborts what is open"
                        )))
                    })?;
                // The abort purged what was not delivered: every delivery
                // report is in. Those refused for good are set aside.
                for (i, d) in deliveries {
                    if let Ok(Ok(Err((e, _)))) = tokio::time::timeout(self.timeout, d).await {
                        if refused_for_good(&e) {
                            refused.push((i, e.to_string()));
                        }
                    }
                }
                if !refused.is_empty() {
                    return Err(Attempt::Refused(refused));
                }
                self.rewind().map_err(Attempt::Failed)?;
                Err(Attempt::Failed(PipelineError::Retry(why)))
            }
        }
    }

    /// Calls a transactional operation again while librdkafka says the same
    /// call may succeed (a timeout), for at most four timeouts.
    fn retrying(&self, what: &str, call: impl Fn(Duration) -> Result<(), KafkaError>) -> Result<(), KafkaError> {
        let mut attempts = 0;
        loop {
            match blocking(|| call(self.timeout)) {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempt = attempts, "{what}: retriable, calling again");
                }
                other => return other,
            }
        }
    }

    fn enqueue(&self, o: &Output) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
        for (k, v) in &o.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut record = FutureRecord::to(&o.topic).payload(&o.payload).headers(headers);
        if let Some(key) = &o.key {
            record = record.key(key);
        }
        self.producer.send_result(record).map_err(|(e, _)| e)
    }

    /// At least once: every output queued and acknowledged, or nothing is
    /// committed and the batch is read again (a queueing failure included:
    /// the outputs queued before it are awaited, then the batch rewound).
    async fn produce_all(&self, outputs: &[Output], isolated: &std::collections::HashSet<usize>) -> Attempt {
        let mut deliveries = Vec::with_capacity(outputs.len());
        let mut refused = Vec::new();
        let mut failed = None;
        for (i, o) in outputs.iter().enumerate() {
            match self.enqueue_in_turn(o, isolated.contains(&i)) {
                Ok(d) => deliveries.push((i, d)),
                Err(e) if refused_for_good(&e) => refused.push((i, e.to_string())),
                Err(e) => {
                    failed = Some(format!("queueing an output for {}: {e}", o.topic));
                    break;
                }
            }
        }
        for (i, d) in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) if refused_for_good(&e) => refused.push((i, e.to_string())),
                Ok(Err((e, _))) => failed = Some(e.to_string()),
                Err(_) => failed = Some("delivery cancelled".into()),
            }
        }
        if let Some(e) = failed {
            // Nothing is committed: read the batch again.
            return match self.rewind() {
                Ok(()) => Attempt::Failed(PipelineError::Retry(format!("producing outputs: {e}"))),
                Err(e) => Attempt::Failed(e),
            };
        }
        if !refused.is_empty() {
            // The others are written; producing them again after the refused
            // ones are set aside repeats them, which at least once allows.
            return Attempt::Refused(refused);
        }
        Attempt::Done
    }

    /// Moves every assigned partition back to its committed offset, so that
    /// what was read but not committed is read again.
    pub fn rewind(&self) -> Result<(), PipelineError> {
        blocking(|| -> Result<(), String> {
            let assignment = self.consumer.assignment().map_err(|e| e.to_string())?;
            if assignment.count() == 0 {
                return Ok(());
            }
            let committed = self
                .consumer
                .committed_offsets(assignment, self.timeout)
                .map_err(|e| e.to_string())?;
            let mut to = TopicPartitionList::new();
            for e in committed.elements() {
                // A partition whose committed offset could not be read must not
                // start over from the beginning: that would repeat outputs.
                e.error()
                    .map_err(|err| format!("reading the committed offset of {}/{}: {err}", e.topic(), e.partition()))?;
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    // Nothing committed yet: where auto.offset.reset starts.
                    _ => Offset::Beginning,
                };
                to.add_partition_offset(e.topic(), e.partition(), offset)
                    .map_err(|e| e.to_string())?;
            }
            let sought = self
                .consumer
                .seek_partitions(to, self.timeout)
                .map_err(|e| e.to_string())?;
            for e in sought.elements() {
                e.error()
                    .map_err(|err| format!("seeking {}/{}: {err}", e.topic(), e.partition()))?;
            }
            Ok(())
        })
        .map_err(|e| PipelineError::Fatal(format!("rewinding to the committed offsets failed: {e}")))
    }
}

fn empty_output() -> Output {
    Output {
        topic: String::new(),
        key: None,
        payload: Vec::new(),
        headers: Vec::new(),
    }
}

/// The offset after the last record of each partition in `batch`.
pub fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, KafkaError> {
    let mut next: std::collections::BTreeMap<(String, i32), i64> = std::collections::BTreeMap::new();
    for m in batch {
        let e = next.entry((m.topic().to_owned(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

/// The transaction timeout for a pipeline whose Kafka calls may take
/// `timeout`: a minute, or `timeout` when longer (librdkafka requires
/// `message.timeout.ms` <= `transaction.timeout.ms`; brokers allow up to
/// `transaction.max.timeout.ms`, 15 minutes by default: [`MAX_TIMEOUT`]).
pub fn transaction_timeout_ms(timeout: Duration) -> u128 {
    timeout.as_millis().max(60_000)
}

/// The longest `timeout` a pipeline takes: the brokers' default
/// `transaction.max.timeout.ms`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(900);

/// The transactional id of this replica: `<prefix>-<host name>` (a pod's
/// name in Kubernetes), or `<prefix>-pid<process id>` when the host has no
/// name (replicas then never fence each other, but a restart does not fence
/// its predecessor either: its open transaction times out instead).
///
/// Two replicas on one host (two routers beside each other) must not share
/// an id, or each start fences the other and they take turns failing. So
/// each process takes the first free slot of its host, held by an exclusive
/// lock on a file in the temporary directory for as long as it runs: the
/// first gets `<prefix>-<host>`, a second `<prefix>-<host>-2`, and so on.
/// A restarted replica finds its predecessor's slot free again (the lock
/// dies with the process) and fences it, as it should.
pub fn default_transactional_id(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        return format!("{prefix}-pid{}", std::process::id());
    };
    let base = format!("{prefix}-{host}");
    match take_slot(&base) {
        Some(1) | None => base,
        Some(n) => format!("{base}-{n}"),
    }
}

/// The first of 64 slots of `base` no other running process holds (its lock
/// kept until this process ends); `None` when locks cannot be taken here.
fn take_slot(base: &str) -> Option<u32> {
    static HELD: std::sync::Mutex<Vec<(String, u32, std::fs::File)>> = std::sync::Mutex::new(Vec::new());
    let mut held = HELD.lock().expect("slot lock");
    if let Some((_, n, _)) = held.iter().find(|(b, _, _)| b == base) {
        // This process already holds a slot for `base`: the same id again.
        return Some(*n);
    }
    let dir = std::env::temp_dir().join("context-transactional-ids");
    std::fs::create_dir_all(&dir).ok()?;
    let safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    for n in 1..=64u32 {
        let path = dir.join(format!("{safe}-{n}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        match file.try_lock() {
            Ok(()) => {
                held.push((base.to_owned(), n, file));
                return Some(n);
            }
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot lock a transactional id slot");
                return None;
            }
        }
    }
    None
}

/// What a consume → produce service does with each batch.
#[allow(async_fn_in_trait)]
pub trait Stage {
    /// Called before each read: the place to pick up a changed rules or
    /// model file, so one batch sees one version.
    async fn refresh(&mut self) {}

    /// The records to produce for `batch`; `Err` (a reason) when it cannot be
    /// done now: nothing is produced and the batch is read again after a pause.
    async fn transform(&mut self, batch: &[OwnedMessage]) -> Result<Vec<Output>, String>;
}

/// How [`drive`] reads batches.
#[derive(Debug, Clone, Copy)]
pub struct DriveOptions {
    /// Records per batch (and per transaction) at most.
    pub max_batch: usize,
    /// How long a batch waits for more records after its first.
    pub linger: Duration,
}

/// The loop of every consume → transform → produce service: read a batch,
/// transform it, commit outputs and offsets together; on a failure rewind
/// and retry with backoff (not ready meanwhile), until `shutdown`. Records
/// `<prefix>_transform_seconds`, `<prefix>_commit_seconds` and
/// `<prefix>_batches_committed_total`. `Err` only when the pipeline cannot
/// go on (fenced, fatal client error).
pub async fn drive(
    pipeline: &Pipeline,
    stage: &mut impl Stage,
    options: DriveOptions,
    ready: &AtomicBool,
    mut shutdown: crate::shutdown::Shutdown,
) -> Result<(), String> {
    let prefix = pipeline.prefix;
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        stage.refresh().await;
        let batch = tokio::select! {
            biased;
            _ = shutdown.requested() => return Ok(()),
            b = pipeline.next_batch(options.max_batch, options.linger, Duration::from_millis(500)) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(PipelineError::Retry(e)) => {
                tracing::warn!(error = %e, "reading a batch");
                continue;
            }
            Err(PipelineError::Fatal(e)) => return Err(e),
        };
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = match stage.transform(&batch).await {
            Ok(outputs) => {
                let transformed = started.elapsed();
                let committed = pipeline.commit(&batch, outputs).await;
                metrics::histogram!(format!("{prefix}_transform_seconds")).record(transformed.as_secs_f64());
                metrics::histogram!(format!("{prefix}_commit_seconds"))
                    .record((started.elapsed() - transformed).as_secs_f64());
                tracing::debug!(records = batch.len(), transform = ?transformed, commit = ?(started.elapsed() - transformed), "batch");
                committed
            }
            // Nothing of it was produced; read it again after a pause.
            Err(not_now) => pipeline.rewind().and(Err(PipelineError::Retry(not_now))),
        };
        match outcome {
            Ok(()) => {
                ready.store(true, Ordering::Relaxed);
                backoff.reset();
                metrics::counter!(format!("{prefix}_batches_committed_total")).increment(1);
            }
            Err(PipelineError::Retry(e)) => {
                ready.store(false, Ordering::Relaxed);
                pipeline.progress.error(&e);
                tracing::warn!(error = %e, retry_in = ?backoff.peek(), "batch not committed; it will be read again");
                if !backoff.wait(&mut shutdown).await {
                    return Ok(());
                }
            }
            Err(PipelineError::Fatal(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn only_a_broker_without_transactions_allows_the_fallback() {
        for code in [
            RDKafkaErrorCode::UnsupportedFeature,
            RDKafkaErrorCode::UnsupportedVersion,
        ] {
            assert!(matches!(classify_init(&global(code)), InitFailure::NoTransactions(_)));
        }
        for code in [
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            assert!(matches!(classify_init(&global(code)), InitFailure::Refused(_)));
        }
        // A broker still starting, a coordinator moving, a timeout: again.
        for code in [
            RDKafkaErrorCode::CoordinatorNotAvailable,
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert!(
                matches!(classify_init(&global(code)), InitFailure::NotNow(_)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn only_refusals_about_the_record_or_topic_are_for_good() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(refused_for_good(&global(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::PurgeQueue,
        ] {
            assert!(!refused_for_good(&global(code)), "{code:?}");
        }
    }

    #[test]
    fn a_process_keeps_its_transactional_id_slot() {
        let base = format!("unit-slot-{}", std::process::id());
        let first = take_slot(&base);
        assert!(first.is_some());
        assert_eq!(take_slot(&base), first, "the same process asks again: the same slot");
    }

    #[test]
    fn a_dead_letter_too_large_is_cut_and_says_how_long_it_was() {
        let o = Output {
            topic: "dead".into(),
            key: Some(b"install".to_vec()),
            payload: vec![7u8; 100_000],
            headers: vec![("dl.reason".into(), b"refused_by_kafka".to_vec())],
        };
        let same = crate::deadletter::fit(o.clone(), 200_000);
        assert_eq!(same.payload.len(), 100_000);
        assert!(same.headers.iter().all(|(k, _)| k != crate::deadletter::TRUNCATED));
        let cut = crate::deadletter::fit(o, STUB_BYTES);
        assert!(cut.payload.len() + crate::deadletter::overhead(&cut) <= STUB_BYTES);
        assert!(cut.payload.len() > STUB_BYTES / 2);
        assert!(cut.payload.iter().all(|b| *b == 7));
        assert_eq!(
            cut.headers
                .iter()
                .find(|(k, _)| k == crate::deadletter::TRUNCATED)
                .map(|(_, v)| v.as_slice()),
            Some(b"100000".as_slice())
        );
        assert_eq!(cut.key.as_deref(), Some(b"install".as_slice()));
    }
}
