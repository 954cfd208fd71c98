//! The forget ledger: which installs were asked to be erased, and when.
//!
//! A request is one record of the compacted topic `context.forget.v1`
//! (key `<app_id>/<install_id>`, value a JSON [`Request`]), written with
//! `acks=all` by the gateway (`POST /v1/forget`) or by `sink-clickhouse
//! forget`. Every stage that reads or re-reads data ([`follow`]s the topic:
//! it reads it whole before its first batch, then keeps reading) and drops a
//! record of a forgotten install whose capture time is not after the request
//! ([`Forgotten::drops`]). So neither a replay, a redrive nor a phone sending
//! an old batch late brings erased data back; what an install sends after
//! its request is kept.
//!
//! Compaction keeps the newest request of every key forever: asking again
//! moves the request's time forward. Memory: about [`BYTES_PER_INSTALL`] per
//! forgotten install in every stage that follows the ledger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::kafka::KafkaSettings;

/// The topic's default name (SPEC.md).
pub const TOPIC: &str = "context.forget.v1";

/// What one forgotten install costs a stage's memory, at most (the map's
/// entry, its app id, the request's texts): the documented bound per entry.
pub const BYTES_PER_INSTALL: usize = 256;

/// One request to erase an install's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub app_id: String,
    pub install_id: Uuid,
    /// When it was asked for, µs since the epoch (the clock of whoever
    /// took the request). Records captured at or before it are erased.
    pub requested_at_us: i64,
    /// `device` (the app's own `POST /v1/forget`) or `operator:<name>`.
    pub requested_by: String,
    pub request_id: Uuid,
}

impl Request {
    pub fn new(app_id: &str, install_id: Uuid, requested_by: &str) -> Self {
        Request {
            app_id: app_id.to_owned(),
            install_id,
            requested_at_us: crate::clock::now_micros(),
            requested_by: requested_by.to_owned(),
            request_id: Uuid::new_v4(),
        }
    }

    /// The record's key: one per app and install, so compaction keeps the newest.
    pub fn key(&self) -> Vec<u8> {
        format!("{}/{}", self.app_id, self.install_id).into_bytes()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a request serializes")
    }
}

/// What every stage knows of the ledger: per install, the apps that asked
/// and until when their records are erased.
#[derive(Debug, Default)]
pub struct Forgotten {
    by_install: RwLock<HashMap<Uuid, Vec<Request>>>,
    len: AtomicUsize,
    loaded: AtomicBool,
}

impl Forgotten {
    /// A ledger with nothing in it (a stage run without one, and tests).
    pub fn empty() -> Arc<Self> {
        let f = Forgotten::default();
        f.loaded.store(true, Ordering::Relaxed);
        Arc::new(f)
    }

    /// Whether a record of `install` (of `app`, when the record names it)
    /// captured at `captured_at_us` (µs; `None` when it carries no capture
    /// time, as a dead letter) is of a forgotten install and not after its
    /// request. With no app named, any app's request of the install counts.
    pub fn drops(&self, app: Option<&str>, install: &Uuid, captured_at_us: Option<i64>) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let map = self.by_install.read().expect("forget ledger lock");
        let Some(requests) = map.get(install) else { return false };
        requests
            .iter()
            .any(|r| app.is_none_or(|a| a == r.app_id) && captured_at_us.is_none_or(|t| t <= r.requested_at_us))
    }

    /// [`Forgotten::drops`] for an install id as text (a record's key).
    pub fn drops_key(&self, app: Option<&str>, key: Option<&[u8]>, captured_at_us: Option<i64>) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        key.and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| Uuid::parse_str(k.trim()).ok())
            .is_some_and(|install| self.drops(app, &install, captured_at_us))
    }

    /// Adds a request, or moves an install's request forward in time.
    pub fn insert(&self, request: Request) {
        let mut map = self.by_install.write().expect("forget ledger lock");
        let requests = map.entry(request.install_id).or_default();
        match requests.iter_mut().find(|r| r.app_id == request.app_id) {
            Some(r) if r.requested_at_us <= request.requested_at_us => *r = request,
            Some(_) => {}
            None => {
                requests.push(request);
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        metrics::gauge!("forget_ledger_installs").set(self.len.load(Ordering::Relaxed) as f64);
    }

    /// Forgotten (app, install) pairs.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the topic was read to its end once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        let map = self.by_install.read().expect("forget ledger lock");
        let mut all: Vec<Request> = map.values().flatten().cloned().collect();
        all.sort_by_key(|r| (r.requested_at_us, r.request_id));
        all
    }
}

/// Why the ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the forget ledger topic `{0}` does not exist: create it with `context-topics apply` (the chart's topics hook does)")]
    Missing(String),
    #[error("reading the forget ledger `{topic}`: {detail}")]
    Kafka { topic: String, detail: String },
    #[error("the forget ledger `{topic}` was not read to its end within {within:?}: {detail}")]
    Slow {
        topic: String,
        within: Duration,
        detail: String,
    },
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn reader(kafka: &KafkaSettings) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    // Assigned, never subscribed: no group is joined and no offset committed.
    kafka
        .client()
        .set("group.id", "context-forget-ledger-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
}

/// Every partition of `topic` with its high watermark.
fn ends(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64)>, LedgerError> {
    let err = |e: rdkafka::error::KafkaError| LedgerError::Kafka {
        topic: topic.to_owned(),
        detail: e.to_string(),
    };
    let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT).map_err(err)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(LedgerError::Missing(topic.to_owned()));
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(LedgerError::Missing(topic.to_owned()));
    }
    let mut out = Vec::new();
    for p in t.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), CALL_TIMEOUT).map_err(err)?;
        out.push((p.id(), high));
    }
    Ok(out)
}

fn apply(ledger: &Forgotten, msg: &rdkafka::message::BorrowedMessage<'_>) {
    let Some(payload) = msg.payload() else { return };
    match serde_json::from_slice::<Request>(payload) {
        Ok(r) => ledger.insert(r),
        Err(e) => {
            metrics::counter!("forget_ledger_unreadable_total").increment(1);
            tracing::warn!(error = %e, partition = msg.partition(), offset = msg.offset(), "a forget request that is not a request; ignored");
        }
    }
}

/// Reads the ledger `topic` to its end (within `patience`), then keeps
/// reading it on a thread of its own until `stop` is set (set already: a
/// one-time read, as `forget status` does). The returned
/// ledger is complete as of the call: a stage that checks its records
/// against it from then on drops everything asked before it started.
pub async fn follow(
    kafka: &KafkaSettings,
    topic: &str,
    patience: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Arc<Forgotten>, LedgerError> {
    let (kafka, topic_owned) = (kafka.clone(), topic.to_owned());
    let ledger = Arc::new(Forgotten::default());
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<(), LedgerError>>();
    let shared = ledger.clone();
    std::thread::Builder::new()
        .name("forget-ledger".into())
        .spawn(move || {
            let topic = topic_owned;
            let started = std::time::Instant::now();
            let consumer = match reader(&kafka) {
                Ok(c) => c,
                Err(e) => {
                    let _ = loaded_tx.send(Err(LedgerError::Kafka {
                        topic,
                        detail: e.to_string(),
                    }));
                    return;
                }
            };
            // The topic may be missing or a broker away for a moment: try
            // again within the patience before giving up.
            let partitions = loop {
                match ends(&consumer, &topic) {
                    Ok(p) => break p,
                    Err(e) if started.elapsed() >= patience => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            };
            let mut tpl = TopicPartitionList::new();
            for (p, _) in &partitions {
                let _ = tpl.add_partition_offset(&topic, *p, Offset::Beginning);
            }
            if let Err(e) = consumer.assign(&tpl) {
                let _ = loaded_tx.send(Err(LedgerError::Kafka {
                    topic,
                    detail: e.to_string(),
                }));
                return;
            }
            let mut remaining: HashMap<i32, i64> = partitions.into_iter().filter(|(_, high)| *high > 0).collect();
            let mut loaded_tx = Some(loaded_tx);
            let mut last_error = String::new();
            // Until read whole, whatever `stop` says; then until `stop`.
            while loaded_tx.is_some() || !stop.load(Ordering::Relaxed) {
                if let Some(tx) = loaded_tx.take_if(|_| remaining.is_empty()) {
                    shared.loaded.store(true, Ordering::Relaxed);
                    tracing::info!(installs = shared.len(), topic = %topic, took = ?started.elapsed(), "forget ledger loaded");
                    let _ = tx.send(Ok(()));
                }
                if loaded_tx.is_some() && started.elapsed() >= patience {
                    let _ = loaded_tx.take().map(|tx| {
                        tx.send(Err(LedgerError::Slow {
                            topic: topic.clone(),
                            within: patience,
                            detail: last_error.clone(),
                        }))
                    });
                    return;
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => {
                        // Compaction or transaction markers can leave the
                        // end past the last record: the position says.
                        if loaded_tx.is_some() {
                            if let Ok(pos) = consumer.position() {
                                for e in pos.elements() {
                                    if let Offset::Offset(o) = e.offset() {
                                        if remaining.get(&e.partition()).is_some_and(|high| o >= *high) {
                                            remaining.remove(&e.partition());
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Some(Ok(msg)) => {
                        apply(&shared, &msg);
                        if remaining.get(&msg.partition()).is_some_and(|high| msg.offset() + 1 >= *high) {
                            remaining.remove(&msg.partition());
                        }
                    }
                    Some(Err(e)) => {
                        last_error = e.to_string();
                        tracing::warn!(error = %e, topic = %topic, "reading the forget ledger");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
        .map_err(|e| LedgerError::Kafka {
            topic: topic.to_owned(),
            detail: format!("starting the reader thread: {e}"),
        })?;
    match loaded_rx.await {
        Ok(Ok(())) => Ok(ledger),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LedgerError::Kafka {
            topic: topic.to_owned(),
            detail: "the reader stopped before the ledger was read".into(),
        }),
    }
}

/// How long a stage waits at start for the ledger to be read whole.
pub const START_PATIENCE: Duration = Duration::from_secs(60);

/// The ledger of a service's `forget_topic`, followed for the life of the
/// process; an empty topic name turns forgetting off (with a warning).
pub async fn follow_configured(kafka: &KafkaSettings, topic: &str) -> Result<Arc<Forgotten>, LedgerError> {
    if topic.trim().is_empty() {
        tracing::warn!("forget_topic is empty: records of forgotten installs are not dropped by this process");
        return Ok(Forgotten::empty());
    }
    follow(kafka, topic, START_PATIENCE, Arc::new(AtomicBool::new(false))).await
}

/// Writes requests to the ledger, each acknowledged by every in-sync replica.
pub struct Writer {
    producer: FutureProducer,
    topic: String,
}

impl Writer {
    pub fn new(kafka: &KafkaSettings, topic: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = kafka
            .client()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Writer {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// `Ok` once Kafka acknowledged the request.
    pub async fn send(&self, request: &Request) -> Result<(), String> {
        let (key, value) = (request.key(), request.to_json());
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("writing the forget request to `{}`: {e}", self.topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(app: &str, install: Uuid, at: i64) -> Request {
        Request {
            app_id: app.into(),
            install_id: install,
            requested_at_us: at,
            requested_by: "device".into(),
            request_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn only_records_of_the_install_up_to_its_request_are_dropped() {
        let f = Forgotten::empty();
        let (gone, kept) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(!f.drops(Some("app"), &gone, Some(1)), "an empty ledger drops nothing");
        f.insert(request("app", gone, 1_000));
        assert!(f.drops(Some("app"), &gone, Some(1_000)));
        assert!(f.drops(Some("app"), &gone, Some(5)));
        assert!(
            !f.drops(Some("app"), &gone, Some(1_001)),
            "sent after the request: kept"
        );
        assert!(
            !f.drops(Some("other"), &gone, Some(5)),
            "another app's install of the same id"
        );
        assert!(!f.drops(Some("app"), &kept, Some(5)));
        assert!(f.drops(None, &gone, None), "a letter naming neither app nor time");
        assert!(f.drops_key(Some("app"), Some(gone.to_string().as_bytes()), Some(3)));
        assert!(!f.drops_key(Some("app"), Some(b"not a uuid"), Some(3)));
        assert!(!f.drops_key(Some("app"), None, Some(3)));
    }

    #[test]
    fn asking_again_moves_the_request_forward_never_back() {
        let f = Forgotten::empty();
        let install = Uuid::new_v4();
        f.insert(request("app", install, 1_000));
        f.insert(request("app", install, 2_000));
        assert!(f.drops(Some("app"), &install, Some(1_500)));
        f.insert(request("app", install, 10));
        assert!(
            f.drops(Some("app"), &install, Some(1_500)),
            "an older copy does not undo"
        );
        f.insert(request("other", install, 10));
        assert_eq!(f.len(), 2);
        assert_eq!(f.requests().len(), 2);
    }
}
