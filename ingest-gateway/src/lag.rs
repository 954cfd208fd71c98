//! Lag-aware backpressure: a background task reads how far the consumer
//! groups that must keep up with the events topic are behind, and keeps one
//! flag that the request path reads (`[backpressure]` in the configuration).
//!
//! Each check, on the broker's admin and consumer APIs, never on a request:
//! 1. the topic's partitions and watermarks, and its `retention.ms` and
//!    `retention.bytes` (read again every [`CONFIG_TTL`]);
//! 2. each group's committed offsets (a group that does not exist, or has
//!    committed nothing on a partition, is warned about and skipped);
//! 3. for each partition a group is behind on, the record at its committed
//!    offset, read with a consumer of its own: that record's timestamp is the
//!    age of the oldest unconsumed record; its size times the records behind
//!    estimates the unconsumed bytes. A committed offset below the earliest
//!    retained one means records were already deleted unread: refused at once.
//!
//! A measure over its bound turns refusal on; it turns off once every
//! measure is below `resume_share` of its bound. A check that fails (a
//! broker that is slow or away) keeps the previous answer: the produce path
//! has its own answers for a broker that is away.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use context_runtime::kafka::KafkaSettings;

use crate::config::Backpressure as Settings;

/// How long the topic's retention settings are trusted before read again:
/// an operator who lowers `retention.ms` (a disk filling up) moves the bound
/// within this much.
pub const CONFIG_TTL: Duration = Duration::from_secs(30);
/// The longest one broker call of a check may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes counted per record beside its key and value (batch framing).
const RECORD_OVERHEAD: u64 = 70;

/// The answer the request path reads.
#[derive(Default)]
pub struct Flag {
    active: AtomicBool,
    reason: RwLock<String>,
}

impl Flag {
    /// Why batches are refused now; `None` while they are taken.
    pub fn refusing(&self) -> Option<String> {
        if self.active.load(Ordering::Relaxed) {
            Some(self.reason.read().expect("backpressure reason").clone())
        } else {
            None
        }
    }

    fn set(&self, active: bool, reason: String) {
        *self.reason.write().expect("backpressure reason") = reason;
        self.active.store(active, Ordering::Relaxed);
        metrics::gauge!("gateway_backpressure_active").set(if active { 1.0 } else { 0.0 });
    }
}

/// How far one group is behind on the topic, at its worst partition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupLag {
    /// Age of the oldest unconsumed record (0 when caught up).
    pub age: Duration,
    /// The partition of that record.
    pub partition: i32,
    /// Unconsumed bytes (estimated) of its partition that has most.
    pub bytes: u64,
    /// Records already deleted by retention before the group read them.
    pub expired: i64,
    /// Partitions the group has no committed offset on.
    pub uncommitted: usize,
}

/// One check's findings.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub groups: BTreeMap<String, GroupLag>,
    /// Groups that do not exist on the broker.
    pub missing: Vec<String>,
}

/// The bound a measure is compared with, and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub age: Option<(Duration, &'static str)>,
    pub bytes: Option<u64>,
}

impl Bounds {
    pub fn of(s: &Settings, retention_ms: Option<i64>, retention_bytes: Option<i64>) -> Bounds {
        let from_retention = retention_ms
            .filter(|&ms| ms > 0)
            .map(|ms| Duration::from_millis((ms as f64 * s.retention_share) as u64));
        let age = match (from_retention, s.max_lag.is_zero()) {
            (Some(r), false) if s.max_lag < r => Some((s.max_lag, "backpressure.max_lag")),
            (Some(r), _) => Some((r, "backpressure.retention_share of retention.ms")),
            (None, false) => Some((s.max_lag, "backpressure.max_lag")),
            (None, true) => None,
        };
        let bytes = retention_bytes
            .filter(|&b| b > 0)
            .map(|b| (b as f64 * s.retention_share) as u64);
        Bounds { age, bytes }
    }
}

/// The worst ratio of a measure to its bound over every group (1.0: at the
/// bound), and the sentence that says which.
pub fn worst(reading: &Reading, bounds: &Bounds) -> (f64, String) {
    let mut worst = (0.0f64, String::new());
    for (group, lag) in &reading.groups {
        if lag.expired > 0 {
            return (
                f64::INFINITY,
                format!(
                    "group {group} has not read {} records that retention already deleted",
                    lag.expired
                ),
            );
        }
        if let Some((bound, source)) = bounds.age {
            let ratio = lag.age.as_secs_f64() / bound.as_secs_f64().max(1e-3);
            if ratio > worst.0 {
                worst = (
                    ratio,
                    format!(
                        "group {group}: the oldest record it has not read (partition {}) is {:.0} s old; the bound is {:.0} s ({source})",
                        lag.partition,
                        lag.age.as_secs_f64(),
                        bound.as_secs_f64()
                    ),
                );
            }
        }
        if let Some(bound) = bounds.bytes {
            let ratio = lag.bytes as f64 / (bound as f64).max(1.0);
            if ratio > worst.0 {
                worst = (
                    ratio,
                    format!(
                        "group {group}: about {} bytes of a partition not read; the bound is {bound} (backpressure.retention_share of retention.bytes)",
                        lag.bytes
                    ),
                );
            }
        }
    }
    worst
}

/// Whether to refuse after a reading whose worst ratio is `ratio`, having
/// refused before (`was`): on at 1, off below `resume_share`.
pub fn decide(was: bool, ratio: f64, resume_share: f64) -> bool {
    if was {
        ratio >= resume_share
    } else {
        ratio >= 1.0
    }
}

/// A topic's `retention.ms` and `retention.bytes` (unset: `None`).
type Retention = (Option<i64>, Option<i64>);

/// The broker clients of the checks.
struct Clients {
    topic: String,
    /// Metadata, watermarks, group list and the peeks at records.
    peek: BaseConsumer,
    /// One per group (a consumer's group is fixed), for committed offsets;
    /// none of them joins its group.
    groups: HashMap<String, BaseConsumer>,
    admin: AdminClient<DefaultClientContext>,
}

fn consumer(kafka: &KafkaSettings, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(kafka
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?)
}

impl Clients {
    fn new(kafka: &KafkaSettings, topic: &str, s: &Settings) -> anyhow::Result<Clients> {
        let mut groups = HashMap::new();
        for g in &s.groups {
            groups.insert(g.clone(), consumer(kafka, g)?);
        }
        Ok(Clients {
            topic: topic.to_owned(),
            peek: consumer(kafka, "ingest-gateway-backpressure-peek")?,
            groups,
            admin: kafka.client().create()?,
        })
    }

    /// `retention.ms` and `retention.bytes` of the topic.
    async fn retention(&self) -> anyhow::Result<Retention> {
        let opts = AdminOptions::new().request_timeout(Some(CALL_TIMEOUT));
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(&self.topic)], &opts)
            .await?;
        let mut out = (None, None);
        for r in results {
            let r = r.map_err(|e| anyhow::anyhow!("describing {}: {e:?}", self.topic))?;
            let get = |k: &str| r.get(k).and_then(|e| e.value.as_deref()).and_then(|v| v.parse().ok());
            out = (get("retention.ms"), get("retention.bytes"));
        }
        Ok(out)
    }

    /// The groups' lag (blocking: broker calls).
    fn read(&self) -> anyhow::Result<(BTreeMap<String, GroupLag>, Vec<String>)> {
        let metadata = self.peek.fetch_metadata(Some(&self.topic), CALL_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            anyhow::bail!("topic {} has no partitions (does it exist?)", self.topic);
        }
        let mut marks = HashMap::new();
        for &p in &partitions {
            marks.insert(p, self.peek.fetch_watermarks(&self.topic, p, CALL_TIMEOUT)?);
        }
        let mut all = TopicPartitionList::new();
        for &p in &partitions {
            all.add_partition(&self.topic, p);
        }
        let mut missing = Vec::new();
        // (group, partition, committed, high)
        let mut behind: Vec<(String, i32, i64, i64)> = Vec::new();
        let mut lags = BTreeMap::new();
        for (group, c) in &self.groups {
            let listed = self.peek.fetch_group_list(Some(group), CALL_TIMEOUT)?;
            let exists = listed.groups().iter().any(|g| g.name() == group && g.state() != "Dead");
            let committed = c.committed_offsets(all.clone(), CALL_TIMEOUT)?;
            let mut lag = GroupLag::default();
            let mut any = false;
            for e in committed.elements() {
                let p = e.partition();
                let (low, high) = marks[&p];
                match e.offset() {
                    Offset::Offset(o) => {
                        any = true;
                        if o < low {
                            lag.expired += low - o;
                        } else if o < high {
                            behind.push((group.clone(), p, o, high));
                        }
                    }
                    _ => lag.uncommitted += 1,
                }
            }
            if !exists && !any {
                missing.push(group.clone());
                continue;
            }
            lags.insert(group.clone(), lag);
        }
        // The records at the committed offsets: one read per distinct place.
        let mut places: Vec<(i32, i64)> = behind.iter().map(|b| (b.1, b.2)).collect();
        places.sort();
        places.dedup();
        let found = self.peek_at(&places)?;
        let now_ms = context_runtime::clock::now_micros() / 1000;
        for (group, p, o, high) in behind {
            let Some(&(ts_ms, size)) = found.get(&(p, o)) else {
                continue; // only control records left: nothing to read
            };
            let lag = lags.get_mut(&group).expect("group read above");
            let age = Duration::from_millis(now_ms.saturating_sub(ts_ms).max(0) as u64);
            if age > lag.age {
                lag.age = age;
                lag.partition = p;
            }
            lag.bytes = lag.bytes.max((high - o) as u64 * (size + RECORD_OVERHEAD));
        }
        Ok((lags, missing))
    }

    /// For each (partition, offset): the timestamp (ms) and size of the
    /// first record at or after it.
    fn peek_at(&self, places: &[(i32, i64)]) -> anyhow::Result<HashMap<(i32, i64), (i64, u64)>> {
        let mut found = HashMap::new();
        if places.is_empty() {
            return Ok(found);
        }
        // One partition at a time: a partition may be wanted at two offsets.
        let deadline = Instant::now() + CALL_TIMEOUT;
        for &(p, o) in places {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
            self.peek.assign(&tpl)?;
            while Instant::now() < deadline {
                match self.peek.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) if m.partition() == p && m.offset() >= o => {
                        let ts = m.timestamp().to_millis().unwrap_or(0);
                        let size = (m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64;
                        found.insert((p, o), (ts, size));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        // Nothing at or after o (only transaction markers).
                        let (_, high) = self.peek.fetch_watermarks(&self.topic, p, CALL_TIMEOUT)?;
                        let position =
                            self.peek
                                .position()?
                                .find_partition(&self.topic, p)
                                .and_then(|e| match e.offset() {
                                    Offset::Offset(x) => Some(x),
                                    _ => None,
                                });
                        if position.is_some_and(|x| x >= high) {
                            break;
                        }
                    }
                }
            }
        }
        self.peek.unassign()?;
        Ok(found)
    }
}

/// Starts the watcher of `s.groups` on `topic`; the flag it keeps.
pub fn watch(
    kafka: &KafkaSettings,
    topic: &str,
    s: &Settings,
) -> anyhow::Result<(Arc<Flag>, Option<tokio::task::JoinHandle<()>>)> {
    let flag = Arc::new(Flag::default());
    flag.set(false, String::new());
    if !s.enabled || s.groups.is_empty() {
        return Ok((flag, None));
    }
    let clients = Arc::new(Clients::new(kafka, topic, s)?);
    let settings = s.clone();
    let task = {
        let flag = flag.clone();
        tokio::spawn(async move {
            let mut retention: Option<(Instant, Retention)> = None;
            let mut warned_missing: Vec<String> = Vec::new();
            let mut ticker = tokio::time::interval(settings.check_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if retention.as_ref().is_none_or(|(at, _)| at.elapsed() > CONFIG_TTL) {
                    match clients.retention().await {
                        Ok(r) => {
                            if retention.as_ref().is_none_or(|(_, was)| *was != r) {
                                let b = Bounds::of(&settings, r.0, r.1);
                                tracing::info!(
                                    topic = %clients.topic,
                                    retention_ms = ?r.0,
                                    retention_bytes = ?r.1,
                                    age_bound = ?b.age.map(|(d, source)| format!("{d:?} ({source})")),
                                    bytes_bound = ?b.bytes,
                                    "backpressure: the bounds"
                                );
                                metrics::gauge!("gateway_backpressure_bound_seconds")
                                    .set(b.age.map_or(0.0, |(d, _)| d.as_secs_f64()));
                            }
                            retention = Some((Instant::now(), r));
                        }
                        Err(e) => tracing::warn!(error = %e, "backpressure: reading the topic's retention failed"),
                    }
                }
                let c = clients.clone();
                let read = tokio::task::spawn_blocking(move || c.read()).await;
                let (lags, missing) = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        metrics::counter!("gateway_backpressure_check_failures_total").increment(1);
                        tracing::warn!(error = %e, "backpressure: reading the groups' lag failed; the last answer stands");
                        continue;
                    }
                    Err(e) => {
                        metrics::counter!("gateway_backpressure_check_failures_total").increment(1);
                        tracing::warn!(error = %e, "backpressure: the lag check panicked; the last answer stands");
                        continue;
                    }
                };
                if missing != warned_missing {
                    for g in missing.iter().filter(|g| !warned_missing.contains(g)) {
                        tracing::warn!(group = %g, topic = %clients.topic,
                            "backpressure: consumer group does not exist (yet); it is not waited for until it does (check backpressure.groups)");
                    }
                    warned_missing = missing.clone();
                }
                for (group, lag) in &lags {
                    metrics::gauge!("gateway_consumer_lag_seconds", "group" => group.clone())
                        .set(lag.age.as_secs_f64());
                    metrics::gauge!("gateway_consumer_lag_bytes", "group" => group.clone()).set(lag.bytes as f64);
                }
                let (retention_ms, retention_bytes) = retention.as_ref().map(|r| r.1).unwrap_or((None, None));
                let bounds = Bounds::of(&settings, retention_ms, retention_bytes);
                let reading = Reading {
                    retention_ms,
                    retention_bytes,
                    groups: lags,
                    missing,
                };
                let (ratio, why) = worst(&reading, &bounds);
                let was = flag.refusing().is_some();
                let now = decide(was, ratio, settings.resume_share);
                if now != was {
                    if now {
                        tracing::warn!(reason = %why, "backpressure on: batches are answered 503 until the consumers catch up");
                    } else {
                        tracing::info!("backpressure off: the consumers caught up (below backpressure.resume_share of every bound)");
                    }
                }
                if now || now != was {
                    flag.set(now, why);
                }
            }
        })
    };
    Ok((flag, Some(task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_lag: u64) -> Settings {
        Settings {
            max_lag: Duration::from_secs(max_lag),
            ..Settings::default()
        }
    }

    #[test]
    fn the_tighter_bound_applies() {
        let day_ms = 86_400_000;
        let b = Bounds::of(&settings(0), Some(day_ms), None);
        assert_eq!(b.age.unwrap().0, Duration::from_secs(43_200));
        let b = Bounds::of(&settings(30), Some(day_ms), Some(1 << 30));
        assert_eq!(b.age, Some((Duration::from_secs(30), "backpressure.max_lag")));
        assert_eq!(b.bytes, Some(1 << 29));
        // retention.ms -1 (forever) and no max_lag: no age bound.
        assert_eq!(
            Bounds::of(&settings(0), Some(-1), Some(-1)),
            Bounds { age: None, bytes: None }
        );
    }

    #[test]
    fn refusal_turns_on_at_the_bound_and_off_below_the_resume_share() {
        assert!(!decide(false, 0.99, 0.8));
        assert!(decide(false, 1.0, 0.8));
        assert!(decide(true, 0.9, 0.8), "no flapping just under the bound");
        assert!(!decide(true, 0.79, 0.8));
    }

    #[test]
    fn expired_records_refuse_whatever_the_bounds() {
        let mut r = Reading::default();
        r.groups.insert(
            "g".into(),
            GroupLag {
                expired: 5,
                ..GroupLag::default()
            },
        );
        let (ratio, why) = worst(&r, &Bounds { age: None, bytes: None });
        assert!(
            ratio.is_infinite() && why.contains("retention already deleted"),
            "{why}"
        );
        let mut r = Reading::default();
        r.groups.insert(
            "g".into(),
            GroupLag {
                age: Duration::from_secs(45),
                partition: 3,
                ..GroupLag::default()
            },
        );
        let (ratio, why) = worst(
            &r,
            &Bounds {
                age: Some((Duration::from_secs(30), "backpressure.max_lag")),
                bytes: None,
            },
        );
        assert!((ratio - 1.5).abs() < 1e-9);
        assert!(why.contains("partition 3") && why.contains("45 s"), "{why}");
    }
}
