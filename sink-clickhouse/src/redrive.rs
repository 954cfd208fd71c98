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
//! It is idempotent by `(app_id, event_id)`, the key of `context.events`:
//! an event (a gateway reject or a record of the events topic) already
//! stored is skipped (the same event id from another app is another event),
//! and what is sent twice anyway merges away downstream. The router's and
//! the tagger's letters are always sent: their outputs merge by
//! `(app_id, event_id)` (and model version). Dead letters are never
//! deleted, so a second redrive with the same selection reads the same
//! letters again and skips what is stored; move `--since` on to go further.
//! A letter retried several times (stored once per retry until its copies
//! merge) is read once.
//!
//! Every record is produced with the key its kind has on the normal path:
//! the install id (`install_id`, as text), which the gateway, the router and
//! the tagger key by, so that an install's records stay in one partition and
//! in order. A rebuilt gateway reject gets it from its batch; any other
//! letter from its bytes (decoded with the writer's schema); bytes that are
//! no record of the contract are sent without a key.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use context_runtime::kafka::Defaults;
use context_schemas::{ActivityTag, AvroRecord, ContextEvent, MotionWindow};
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

/// Dead letters by source and reason, most first. Each letter counts once
/// however often it was retried: until its copies merge, `dead_letters`
/// holds one row per retry, so what is counted is distinct letters
/// ([`crate::ddl::DEAD_LETTER_IDENTITY`]), not rows.
pub async fn list(c: &Config, sel: &Selection) -> Result<Vec<Group>, clickhouse::error::Error> {
    c.clickhouse(false)
        .query(&format!(
            "SELECT source, reason, uniqExact({}) AS count, toUInt32(min(failed_time)) AS first, \
             toUInt32(max(failed_time)) AS last FROM `{}`.dead_letters WHERE {} \
             GROUP BY source, reason ORDER BY count DESC, source, reason",
            crate::ddl::DEAD_LETTER_IDENTITY,
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
    truncated: u64,
    target_topic: String,
    /// The record's key when it was stored (empty before the column was).
    install_id: String,
}

/// What a record of the contract says about itself: the key of
/// `context.events` and the install the record is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    app_id: String,
    event_id: String,
    install_id: String,
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
    /// Stubs (`dl.truncated`): only the first bytes were kept.
    pub truncated: usize,
    /// Of installs in the forget ledger: never sent again.
    pub forgotten: usize,
}

impl Outcome {
    pub fn summary(&self, dry_run: bool) -> String {
        let verb = if dry_run { "would send" } else { "sent" };
        let sent: Vec<String> = self.sent.iter().map(|(t, n)| format!("{n} to {t}")).collect();
        let still: Vec<String> = self.still_rejected.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!(
            "{verb}: {}; already stored: {}; still rejected: {}; not rebuildable: {}; truncated: {}; forgotten: {}",
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
            self.not_rebuildable,
            self.truncated,
            self.forgotten
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
    // The first copy of each letter (retries are copies until they merge).
    let mut cursor = reader
        .query(&format!(
            "SELECT source, source_topic, app_id, event_id, failed_at_us, payload, envelope, truncated, target_topic, install_id \
             FROM `{}`.dead_letters WHERE {} ORDER BY failed_at_us LIMIT 1 BY {} LIMIT {}",
            c.database,
            sel.filter(),
            crate::ddl::DEAD_LETTER_IDENTITY,
            sel.limit
        ))
        .fetch::<Letter>()?;
    let mut run = Redrive {
        c,
        dry_run,
        // No patience for unknown ids: a letter whose schema the registry
        // does not know now is reported as such, not waited for.
        registry: schema_registry::RegistryClient::connect(&c.registry)?.with_unknown_id_patience(Duration::ZERO),
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
        forgotten: context_runtime::forget::follow_configured(&c.kafka, &c.forget_topic).await?,
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
    /// What was sent (or skipped) already in this run: its destination, app
    /// and event id, or its bytes when it has no id.
    seen: HashSet<Vec<u8>>,
    outcome: Outcome,
    /// The forget ledger: letters of forgotten installs stay where they are.
    forgotten: std::sync::Arc<context_runtime::forget::Forgotten>,
}

/// `T` decoded from `payload`: `None` for bytes that are not a `T`; an
/// error only for a registry that is away.
async fn decoded<T: AvroRecord + 'static>(
    registry: &schema_registry::RegistryClient,
    payload: &[u8],
) -> anyhow::Result<Option<T>> {
    match registry.decode::<T>(payload).await {
        Ok((_, record)) => Ok(Some(record)),
        Err(e) if e.is_retryable() => {
            anyhow::bail!("reading a dead letter's bytes: {e}; nothing further was sent")
        }
        Err(_) => Ok(None),
    }
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

    /// The ids in a letter's bytes, read with the writer's schema (whichever
    /// record of the contract it names). `None` for bytes that are not such
    /// a record: not the wire format, a schema the registry does not know
    /// (an `unknown_schema_id` letter whose schema is still missing), bytes
    /// that do not decode. A registry that is away stops the redrive rather
    /// than send records without their key.
    async fn ids_in(&self, payload: &[u8]) -> anyhow::Result<Option<Ids>> {
        let Ok((id, _)) = context_schemas::wire::unframe(payload) else {
            return Ok(None);
        };
        let writer = match self.registry.schema_by_id(id).await {
            Ok(schema) => schema,
            Err(e) if e.is_retryable() => {
                anyhow::bail!("reading the schema {id} of a dead letter's bytes: {e}; nothing further was sent")
            }
            Err(_) => return Ok(None),
        };
        let name = writer.name().map(|n| n.name().to_owned()).unwrap_or_default();
        let ids = |app_id: String, event_id: uuid::Uuid, install_id: uuid::Uuid| Ids {
            app_id,
            event_id: event_id.to_string(),
            install_id: install_id.to_string(),
        };
        Ok(match name.as_str() {
            "ContextEvent" => decoded::<ContextEvent>(&self.registry, payload)
                .await?
                .map(|e| ids(e.app_id, e.event_id, e.install_id)),
            "MotionWindow" => decoded::<MotionWindow>(&self.registry, payload)
                .await?
                .map(|w| ids(w.app_id, w.event_id, w.install_id)),
            "ActivityTag" => decoded::<ActivityTag>(&self.registry, payload)
                .await?
                .map(|t| ids(t.app_id, t.event_id, t.install_id)),
            _ => None,
        })
    }

    async fn chunk(&mut self, mut letters: Vec<Letter>) -> anyhow::Result<()> {
        let c = self.c;
        // A letter of a record read from Kafka: its ids and its key are in
        // its bytes (the sink's own letters carry no ids in their columns).
        let mut keys: Vec<Option<Vec<u8>>> = Vec::with_capacity(letters.len());
        for l in &mut letters {
            let mut key = None;
            if l.source != "ingest-gateway" {
                if let Some(ids) = self.ids_in(&l.payload.0).await? {
                    if l.app_id.is_none() {
                        l.app_id = Some(ids.app_id);
                    }
                    if l.event_id.is_none() {
                        l.event_id = Some(ids.event_id);
                    }
                    key = Some(ids.install_id.into_bytes());
                }
            }
            keys.push(key);
            // One spelling per id, so that the same event is recognised.
            l.event_id = l
                .event_id
                .take()
                .map(|id| uuid::Uuid::parse_str(&id).map(|u| u.to_string()).unwrap_or(id));
        }
        // Events already stored (the same app and event id) are not sent again.
        let candidates: Vec<(String, String)> = letters
            .iter()
            .filter(|l| self.is_event(l))
            .filter_map(|l| Some((stored_app(l).to_owned(), l.event_id.clone()?)))
            .filter(|(_, id)| uuid::Uuid::parse_str(id).is_ok())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut stored: HashSet<(String, String)> = HashSet::new();
        if !candidates.is_empty() {
            let apps: HashSet<&str> = candidates.iter().map(|(app, _)| app.as_str()).collect();
            let ids: Vec<String> = candidates.iter().map(|(_, id)| format!("toUUID('{id}')")).collect();
            let placeholders = |n: usize| vec!["?"; n].join(", ");
            let sql = format!(
                "SELECT DISTINCT app_id, toString(event_id) FROM `{}`.events \
                 WHERE app_id IN ({}) AND event_id IN ({}) AND (app_id, toString(event_id)) IN ({})",
                c.database,
                placeholders(apps.len()),
                ids.join(", "),
                placeholders(candidates.len())
            );
            let mut query = c.clickhouse(false).query(&sql);
            for app in &apps {
                query = query.bind(*app);
            }
            for pair in &candidates {
                query = query.bind(pair);
            }
            let found: Vec<(String, String)> = query.fetch_all().await?;
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
        for (l, letter_key) in letters.into_iter().zip(keys) {
            let valid_id = l.event_id.as_ref().filter(|id| uuid::Uuid::parse_str(id).is_ok());
            // Where it goes and what it is: an event and its motion window
            // share an id but are not duplicates of each other, nor are two
            // apps' events of one id.
            let mut identity = if self.is_event(&l) {
                b"event".to_vec()
            } else {
                l.source_topic.clone().unwrap_or_default().into_bytes()
            };
            identity.push(0);
            match valid_id {
                Some(id) => {
                    identity.extend_from_slice(stored_app(&l).as_bytes());
                    identity.push(0);
                    identity.extend_from_slice(id.as_bytes());
                }
                // Its bytes' digest: what `seen` keeps stays small per letter.
                None => {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    l.payload.0.hash(&mut h);
                    l.payload.0.len().hash(&mut h);
                    identity.extend_from_slice(&h.finish().to_le_bytes());
                }
            }
            let is_stored = self.is_event(&l)
                && valid_id.is_some_and(|id| stored.contains(&(stored_app(&l).to_owned(), id.clone())));
            if is_stored || !self.seen.insert(identity) {
                self.outcome.already_stored += 1;
                continue;
            }
            if l.truncated > 0 {
                self.outcome.truncated += 1;
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
                // An output Kafka refused goes where it was going; any other
                // record back to the topic it was read from.
                let target = Some(&l.target_topic)
                    .filter(|t| !t.is_empty())
                    .or(l.source_topic.as_ref());
                match target {
                    Some(t) if !t.is_empty() => (t.clone(), letter_key, l.payload.0.clone()),
                    _ => {
                        self.outcome.not_rebuildable += 1;
                        continue;
                    }
                }
            };
            // Whatever its capture time: a letter keeps none it can be trusted for.
            let install = key
                .clone()
                .or_else(|| Some(l.install_id.clone().into_bytes()).filter(|k| !k.is_empty()));
            if self.forgotten.drops_key(l.app_id.as_deref(), install.as_deref(), None) {
                self.outcome.forgotten += 1;
                metrics::counter!("sink_redrive_forgotten_total").increment(1);
                continue;
            }
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

/// The app a letter's event is stored under: its `app_id`, or (a gateway
/// reject without one) `unknown`, as [`rebuild`] gives it.
fn stored_app(l: &Letter) -> &str {
    l.app_id.as_deref().unwrap_or("unknown")
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
