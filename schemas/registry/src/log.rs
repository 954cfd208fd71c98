//! The `_schemas` topic as the registry's log: a reader thread applies every
//! record to the [`Store`] in offset order; writers append and then wait until
//! the reader has applied their record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use context_runtime::kafka::KafkaSettings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::error::RegistryError;
use crate::store::{LogKey, Store};

/// The log reader, the producer and the state they maintain.
pub struct SchemaLog {
    pub store: Arc<RwLock<Store>>,
    topic: String,
    producer: FutureProducer,
    /// The next offset the reader will apply: everything below is in `store`.
    applied: watch::Receiver<i64>,
    /// The end of the log when the registry started; ready once applied.
    startup_end: i64,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl SchemaLog {
    /// Connects to the broker and starts reading `topic` from the beginning.
    pub fn start(kafka: &KafkaSettings, topic: &str, timeout: Duration) -> Result<Self, RegistryError> {
        let producer: FutureProducer = kafka
            .client()
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(RegistryError::kafka("creating the producer"))?;
        let reader_client = kafka.client();
        let open_reader = move |from: Offset, topic: &str| -> Result<BaseConsumer<QuietEof>, RegistryError> {
            let consumer: BaseConsumer<QuietEof> = reader_client
                .clone()
                .set("group.id", "schema-registry-reader")
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                // Writers wait for the reader: do not let an idle fetch sit at the broker.
                .set("fetch.wait.max.ms", "10")
                .create_with_context(QuietEof)
                .map_err(RegistryError::kafka("creating the reader"))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, from)
                .map_err(RegistryError::kafka("assigning the schemas topic"))?;
            consumer
                .assign(&tpl)
                .map_err(RegistryError::kafka("assigning the schemas topic"))?;
            Ok(consumer)
        };
        let (_, startup_end) = producer
            .client()
            .fetch_watermarks(topic, 0, timeout)
            .map_err(RegistryError::kafka("reading the end of the schemas topic"))?;
        let consumer = open_reader(Offset::Beginning, topic)?;

        let store = Arc::new(RwLock::new(Store::default()));
        let (applied_tx, applied) = watch::channel(0i64);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, stop, topic) = (store.clone(), stop.clone(), topic.to_owned());
            std::thread::Builder::new()
                .name("schemas-reader".into())
                .spawn(move || {
                    let reader = Reader {
                        topic: &topic,
                        store: &store,
                        applied: &applied_tx,
                        stop: &stop,
                        reopen: &open_reader,
                    };
                    reader.run(consumer)
                })
                .map_err(|e| RegistryError::Store(format!("cannot start the reader thread: {e}")))?
        };
        Ok(SchemaLog {
            store,
            topic: topic.to_owned(),
            producer,
            applied,
            startup_end,
            stop,
            reader: Some(reader),
            timeout,
        })
    }

    /// True once the reader has applied everything that was in the log at start.
    pub fn caught_up_at_start(&self) -> bool {
        *self.applied.borrow() >= self.startup_end
    }

    /// Waits until the reader has applied every record below `offset`.
    pub async fn wait_applied(&self, offset: i64) -> Result<(), RegistryError> {
        let mut rx = self.applied.clone();
        tokio::time::timeout(self.timeout, rx.wait_for(|&applied| applied >= offset))
            .await
            .map_err(|_| RegistryError::Timeout(format!("the schemas log did not reach offset {offset}")))?
            .map_err(|_| RegistryError::Store("the schemas reader stopped".into()))?;
        Ok(())
    }

    /// Waits until everything in the log right now is applied.
    pub async fn catch_up(&self) -> Result<(), RegistryError> {
        let end = self.end_offset(self.timeout).await?;
        self.wait_applied(end).await
    }

    /// The log's current end offset, read from the broker within `timeout`.
    async fn end_offset(&self, timeout: Duration) -> Result<i64, RegistryError> {
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        Ok(
            tokio::task::spawn_blocking(move || producer.client().fetch_watermarks(&topic, 0, timeout))
                .await
                .map_err(|e| RegistryError::Store(format!("watermark task failed: {e}")))?
                .map_err(RegistryError::kafka("reading the end of the schemas topic"))?
                .1,
        )
    }

    /// How many records of the log's current end the reader has not applied
    /// after waiting up to `patience` for it (0: caught up). Reading the end
    /// takes at most `patience` too (at least 500 ms).
    pub async fn behind(&self, patience: Duration) -> Result<i64, RegistryError> {
        let end = self.end_offset(patience.max(Duration::from_millis(500))).await?;
        let mut rx = self.applied.clone();
        let _ = tokio::time::timeout(patience, rx.wait_for(|&applied| applied >= end)).await;
        let applied = *self.applied.borrow();
        Ok((end - applied).max(0))
    }

    /// Appends a record (a tombstone when `value` is `None`), waits for the
    /// broker's acknowledgement and returns its offset.
    pub async fn append(&self, key: &LogKey, value: Option<Vec<u8>>) -> Result<i64, RegistryError> {
        let key = serde_json::to_vec(key).map_err(|e| RegistryError::Store(e.to_string()))?;
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topic).key(&key).partition(0);
        if let Some(v) = value.as_ref() {
            record = record.payload(v);
        }
        let delivery = self
            .producer
            .send(record, self.timeout)
            .await
            .map_err(|(e, _)| RegistryError::Kafka {
                action: "writing to the schemas topic",
                source: e,
            })?;
        Ok(delivery.offset)
    }

    /// Appends and waits until the record is applied.
    pub async fn append_applied(&self, key: &LogKey, value: Option<Vec<u8>>) -> Result<i64, RegistryError> {
        let offset = self.append(key, value).await?;
        self.wait_applied(offset + 1).await?;
        Ok(offset)
    }
}

impl Drop for SchemaLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The reader's client context: reaching the end of the partition is how the
/// reader knows it caught up, not an error worth logging.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(error = %error, reason, "schemas reader");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// How often the reader, with nothing arriving, compares what it applied with
/// the end of the log.
const STALL_CHECK: Duration = Duration::from_secs(2);
/// How long records may wait at the broker without the reader moving before it
/// reconnects: after a broker restart a consumer can sit on a dead fetch
/// session while writers time out waiting for it.
const STALL_REOPEN: Duration = Duration::from_secs(6);

type Reopen<'a> = &'a (dyn Fn(Offset, &str) -> Result<BaseConsumer<QuietEof>, RegistryError> + Send + Sync);

struct Reader<'a> {
    topic: &'a str,
    store: &'a RwLock<Store>,
    applied: &'a watch::Sender<i64>,
    stop: &'a AtomicBool,
    reopen: Reopen<'a>,
}

impl Reader<'_> {
    fn run(&self, mut consumer: BaseConsumer<QuietEof>) {
        let mut last_check = Instant::now();
        // (applied offset, since when) while the log's end is beyond it.
        let mut waiting: Option<(i64, Instant)> = None;
        while !self.stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(msg)) => {
                    let outcome = match msg.key().map(serde_json::from_slice::<LogKey>) {
                        Some(Ok(key)) => Some(self.store.write().expect("store lock").apply(&key, msg.payload())),
                        // Records of other registries' key types are skipped, as Confluent does.
                        _ => None,
                    };
                    tracing::debug!(offset = msg.offset(), ?outcome, "applied schemas record");
                    self.applied.send_replace(msg.offset() + 1);
                    continue;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // At the end: everything below the fetch position is applied.
                    if let Ok(position) = consumer.position() {
                        for elem in position.elements_for_topic(self.topic) {
                            if let Offset::Offset(o) = elem.offset() {
                                self.applied.send_if_modified(|a| {
                                    let advance = o > *a;
                                    if advance {
                                        *a = o;
                                    }
                                    advance
                                });
                            }
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading the schemas topic"),
            }
            if last_check.elapsed() < STALL_CHECK {
                continue;
            }
            last_check = Instant::now();
            let applied = *self.applied.borrow();
            let end = match consumer.fetch_watermarks(self.topic, 0, Duration::from_secs(1)) {
                Ok((_, end)) => end,
                Err(_) => continue, // the broker is away; the client reconnects by itself
            };
            waiting = match waiting {
                _ if end <= applied => None,
                Some((at, since)) if at == applied => {
                    if since.elapsed() >= STALL_REOPEN {
                        tracing::warn!(
                            applied,
                            end,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "the schemas reader made no progress while records waited; reconnecting"
                        );
                        match (self.reopen)(Offset::Offset(applied), self.topic) {
                            Ok(fresh) => consumer = fresh,
                            Err(e) => tracing::error!(error = %e, "reconnecting the schemas reader"),
                        }
                        Some((applied, Instant::now()))
                    } else {
                        Some((at, since))
                    }
                }
                _ => Some((applied, Instant::now())),
            };
        }
    }
}
