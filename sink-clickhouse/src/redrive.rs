//! `sink-clickhouse dead-letters list | redrive`: what was given up on, and
//! submitting it again once its cause is fixed.
//!
//! Every dead letter ends up in `context.dead_letters` with its original
//! bytes. A redrive takes the ones chosen by reason (and source, time
//! window) and puts them back on the normal path:
//! - a gateway reject (`source = ingest-gateway`) is rebuilt from its event
//!   JSON and the batch envelope it kept (`dl.envelope`), validated again as
//!   the gateway does, and, when valid now, produced to the events topic;
//! - any other (the sink's, the router's, the tagger's) is produced, bytes
//!   unchanged, to the topic it was read from (`source_topic`).
//!
//! It is idempotent by `event_id`: an event (a gateway reject or a record
//! of the events topic) already in `context.events` is skipped, and what is
//! sent twice anyway merges away by `event_id` downstream. The router's and
//! the tagger's letters are always sent: their outputs merge by `event_id`
//! (and model version). Dead letters are never deleted, so a second redrive
//! with the same selection reads the same letters again and skips what is
//! stored; move `--since` on to go further.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use context_runtime::kafka::Defaults;
use context_schemas::{AvroRecord, ContextEvent};
use ingest_gateway::batch::Encoding;
use ingest_gateway::validate::Validator;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;

use crate::config::Config;
use crate::rows::Bytes;

/// Which dead letters a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub reason: Option<String>,
    pub source: Option<String>,
    /// µs since the epoch, inclusive.
    pub since: Option<i64>,
    /// µs since the epoch, exclusive.
    pub until: Option<i64>,
    pub limit: u64,
}

impl Selection {
    fn filter(&self) -> String {
        let mut clauses = vec!["1".to_owned()];
        let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        if let Some(r) = &self.reason {
            clauses.push(format!("reason = {}", quote(r)));
        }
        if let Some(s) = &self.source {
            clauses.push(format!("source = {}", quote(s)));
        }
        if let Some(t) = self.since {
            clauses.push(format!("failed_at_us >= {t}"));
        }
        if let Some(t) = self.until {
            clauses.push(format!("failed_at_us < {t}"));
        }
        clauses.join(" AND ")
    }
}

/// One line of `list`.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct Group {
    pub source: String,
    pub reason: String,
    pub count: u64,
    pub first: u32,
    pub last: u32,
}

/// Dead letters by source and reason, most first.
pub async fn list(c: &Config, sel: &Selection) -> Result<Vec<Group>, clickhouse::error::Error> {
    c.clickhouse(false)
        .query(&format!(
            "SELECT source, reason, count() AS count, toUInt32(min(failed_time)) AS first, \
             toUInt32(max(failed_time)) AS last FROM `{}`.dead_letters WHERE {} \
             GROUP BY source, reason ORDER BY count DESC, source, reason",
            c.database,
            sel.filter()
        ))
        .fetch_all()
        .await
}

#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
struct Letter {
    source: String,
    source_topic: Option<String>,
    app_id: Option<String>,
    event_id: Option<String>,
    failed_at_us: i64,
    payload: Bytes,
    envelope: String,
}

/// What a redrive did (or, dry, would do).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Produced again, by destination topic.
    pub sent: BTreeMap<String, usize>,
    /// Its event is already in `context.events`, or it was selected twice.
    pub already_stored: usize,
    /// A gateway reject still invalid, by its reason now.
    pub still_rejected: BTreeMap<String, usize>,
    /// Cannot be rebuilt: a gateway reject without its envelope (older than
    /// envelopes in dead letters), or another without a source topic.
    pub not_rebuildable: usize,
}

impl Outcome {
    pub fn summary(&self, dry_run: bool) -> String {
        let verb = if dry_run { "would send" } else { "sent" };
        let sent: Vec<String> = self.sent.iter().map(|(t, n)| format!("{n} to {t}")).collect();
        let still: Vec<String> = self.still_rejected.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!(
            "{verb}: {}; already stored: {}; still rejected: {}; not rebuildable: {}",
            if sent.is_empty() {
                "none".into()
            } else {
                sent.join(", ")
            },
            self.already_stored,
            if still.is_empty() {
                "none".into()
            } else {
                still.join(", ")
            },
            self.not_rebuildable
        )
    }
}

/// Letters read, checked and sent per step: the memory a redrive holds.
const CHUNK: usize = 1000;

/// Sends the selected dead letters again (unless `dry_run`), oldest first,
/// [`CHUNK`] at a time. Gateway rejects are validated with `gateway`'s
/// limits (the running gateway's configuration, for the same verdicts).
pub async fn redrive(
    c: &Config,
    sel: &Selection,
    dry_run: bool,
    gateway: &ingest_gateway::Config,
) -> anyhow::Result<Outcome> {
    {
        let kafka = c.kafka.clone();
        tokio::task::spawn_blocking(move || context_runtime::kafka::verify(&kafka, Duration::from_secs(10))).await??;
    }
    let reader = c.clickhouse(false);
    let mut cursor = reader
        .query(&format!(
            "SELECT source, source_topic, app_id, event_id, failed_at_us, payload, envelope \
             FROM `{}`.dead_letters WHERE {} ORDER BY failed_at_us LIMIT {}",
            c.database,
            sel.filter(),
            sel.limit
        ))
        .fetch::<Letter>()?;
    let mut run = Redrive {
        c,
        dry_run,
        registry: schema_registry::RegistryClient::connect(&c.registry)?,
        validator: Validator::new(gateway.limits.clone(), gateway.max_future, gateway.max_age),
        producer: c
            .kafka
            .client()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set_default("compression.type", "zstd")
            .set("message.max.bytes", (64 << 20).to_string())
            .create()?,
        schema_id: None,
        seen: HashSet::new(),
        outcome: Outcome::default(),
    };
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut read = 0usize;
    loop {
        let next = cursor.next().await?;
        let end = next.is_none();
        if let Some(l) = next {
            chunk.push(l);
        }
        if chunk.len() >= CHUNK || (end && !chunk.is_empty()) {
            read += chunk.len();
            run.chunk(std::mem::take(&mut chunk)).await?;
            eprintln!("[redrive] {read} dead letters read; {}", run.outcome.summary(dry_run));
        }
        if end {
            return Ok(run.outcome);
        }
    }
}

struct Redrive<'a> {
    c: &'a Config,
    dry_run: bool,
    registry: schema_registry::RegistryClient,
    validator: Validator,
    producer: FutureProducer,
    schema_id: Option<u32>,
    /// What was sent (or skipped) already in this run: its destination and
    /// event id, or its bytes when it has no id.
    seen: HashSet<Vec<u8>>,
    outcome: Outcome,
}

impl Redrive<'_> {
    /// Whether a letter is an event the sink gave up on (a gateway reject,
    /// or the sink's own letter of an events-topic record), the kind
    /// `context.events` can already hold. The router's and the tagger's
    /// letters are not checked, even when read from the events topic: their
    /// event may be stored while its window or tag never was, and what they
    /// lead to merges away downstream.
    fn is_event(&self, l: &Letter) -> bool {
        l.source == "ingest-gateway"
            || (l.source == "sink-clickhouse" && l.source_topic.as_deref() == Some(self.c.events_topic.as_str()))
    }

    async fn chunk(&mut self, mut letters: Vec<Letter>) -> anyhow::Result<()> {
        let c = self.c;
        // A record of the events topic given up on without its event id (the
        // sink's own dead letters): its id is in its bytes. A registry that is
        // away stops the redrive rather than skip the check.
        for l in &mut letters {
            if l.event_id.is_none() && l.source_topic.as_deref() == Some(c.events_topic.as_str()) {
                match self.registry.decode::<ContextEvent>(&l.payload.0).await {
                    Ok((_, e)) => l.event_id = Some(e.event_id.to_string()),
                    Err(e) if e.is_retryable() => {
                        anyhow::bail!("reading an event id from a dead letter's bytes: {e}; nothing further was sent")
                    }
                    Err(_) => {}
                }
            }
            // One spelling per id, so that the same event is recognised.
            l.event_id = l
                .event_id
                .take()
                .map(|id| uuid::Uuid::parse_str(&id).map(|u| u.to_string()).unwrap_or(id));
        }
        // Events already stored are not sent again.
        let ids: Vec<&String> = letters
            .iter()
            .filter(|l| self.is_event(l))
            .filter_map(|l| l.event_id.as_ref())
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
            .collect();
        let mut stored: HashSet<String> = HashSet::new();
        if !ids.is_empty() {
            let list: Vec<String> = ids.iter().map(|id| format!("toUUID('{id}')")).collect();
            let found: Vec<String> = c
                .clickhouse(false)
                .query(&format!(
                    "SELECT DISTINCT toString(event_id) FROM `{}`.events WHERE event_id IN ({})",
                    c.database,
                    list.join(", ")
                ))
                .fetch_all()
                .await?;
            stored.extend(found);
        }
        if self.schema_id.is_none() && letters.iter().any(|l| l.source == "ingest-gateway") {
            let subject = format!("{}-value", c.events_topic);
            // A dry run registers nothing: the id only goes into records it
            // does not send.
            self.schema_id = Some(if self.dry_run {
                self.registry
                    .lookup(&subject, ContextEvent::AVSC)
                    .await?
                    .unwrap_or_default()
            } else {
                self.registry.register(&subject, ContextEvent::AVSC).await?
            });
        }

        let mut pending = Vec::new();
        for l in letters {
            let valid_id = l.event_id.as_ref().filter(|id| uuid::Uuid::parse_str(id).is_ok());
            // Where it goes and what it is: an event and its motion window
            // share an id but are not duplicates of each other.
            let mut identity = if self.is_event(&l) {
                b"event".to_vec()
            } else {
                l.source_topic.clone().unwrap_or_default().into_bytes()
            };
            identity.push(0);
            match valid_id {
                Some(id) => identity.extend_from_slice(id.as_bytes()),
                // Its bytes' digest: what `seen` keeps stays small per letter.
                None => {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    l.payload.0.hash(&mut h);
                    l.payload.0.len().hash(&mut h);
                    identity.extend_from_slice(&h.finish().to_le_bytes());
                }
            }
            if (self.is_event(&l) && valid_id.is_some_and(|id| stored.contains(id))) || !self.seen.insert(identity) {
                self.outcome.already_stored += 1;
                continue;
            }
            let (topic, key, value) = if l.source == "ingest-gateway" {
                if l.envelope.is_empty() {
                    self.outcome.not_rebuildable += 1;
                    continue;
                }
                match rebuild(&l, &self.validator, self.schema_id.unwrap_or_default()) {
                    Ok((key, value)) => (c.events_topic.clone(), Some(key), value),
                    Err(reason) => {
                        *self.outcome.still_rejected.entry(reason).or_default() += 1;
                        continue;
                    }
                }
            } else {
                match &l.source_topic {
                    Some(t) if !t.is_empty() => (t.clone(), None, l.payload.0.clone()),
                    _ => {
                        self.outcome.not_rebuildable += 1;
                        continue;
                    }
                }
            };
            *self.outcome.sent.entry(topic.clone()).or_default() += 1;
            if self.dry_run {
                continue;
            }
            let mut record = FutureRecord::to(&topic).payload(&value);
            if let Some(k) = &key {
                record = record.key(k);
            }
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err((e, _)) => anyhow::bail!("Kafka did not take a redriven record: {e}"),
                }
            };
            pending.push(delivery);
        }
        for p in pending {
            p.await
                .map_err(|_| anyhow::anyhow!("the producer stopped before every redriven record was delivered"))?
                .map_err(|(e, _)| anyhow::anyhow!("Kafka did not take a redriven record: {e}"))?;
        }
        Ok(())
    }
}

/// A gateway reject as a one-event batch, validated as the gateway does:
/// the Kafka key and record, or the reason it is still refused.
fn rebuild(l: &Letter, validator: &Validator, schema_id: u32) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut batch: serde_json::Value =
        serde_json::from_str(&l.envelope).map_err(|e| format!("unreadable_envelope ({e})"))?;
    let event: serde_json::Value = serde_json::from_slice(&l.payload.0).map_err(|_| "malformed_event".to_owned())?;
    batch["events"] = serde_json::Value::Array(vec![event]);
    let body = batch.to_string();
    let app_id = l.app_id.as_deref().unwrap_or("unknown");
    // Received when it was first dead-lettered: the same skew correction.
    let prepared = ingest_gateway::pipeline::prepare(
        body.as_bytes(),
        Encoding::Identity,
        app_id,
        l.failed_at_us,
        None,
        validator,
        schema_id,
    )
    .map_err(|e| format!("not_a_batch ({e})"))?;
    match (
        prepared.accepted.into_iter().next(),
        prepared.rejected.into_iter().next(),
    ) {
        (Some(record), _) => Ok((prepared.key, record)),
        (None, Some(r)) => Err(r.rejection.reason.to_owned()),
        (None, None) => Err("empty".into()),
    }
}
