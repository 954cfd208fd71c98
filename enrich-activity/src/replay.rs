//! `replay`: re-tags history with another model version.
//!
//! It reads `context.motion.v1` between two bounds (earliest, latest, a
//! time, or explicit `partition:offset` lists) through its own consumer group
//! (`enrich-activity-replay-<model_version>` unless given), so the live
//! `serve` group never moves. Offsets are committed after each batch's tags
//! are acknowledged, so an interrupted replay resumes where it stopped.
//! Tags carry the new `model_version` and sit beside the old ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use context_runtime::backoff::Backoff;
use context_runtime::kafka::KafkaSettings;
use context_runtime::registry::RegistrySettings;
use context_runtime::shutdown::Shutdown;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::serve::{commit_after, load_model, Counts, Tagger};

/// Where a replay starts or ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Earliest,
    Latest,
    /// Milliseconds since the epoch (Kafka record time).
    Time(i64),
    Offsets(BTreeMap<i32, i64>),
}

impl Bound {
    /// `earliest`, `latest`, an RFC 3339 time, or `0:120,1:98`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => return Ok(Bound::Earliest),
            "latest" => return Ok(Bound::Latest),
            _ => {}
        }
        if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
            return Ok(Bound::Time((t.unix_timestamp_nanos() / 1_000_000) as i64));
        }
        let mut offsets = BTreeMap::new();
        for part in s.split(',') {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| format!("`{s}` is not earliest, latest, an RFC 3339 time or partition:offset,..."))?;
            let p: i32 = p.trim().parse().map_err(|_| format!("`{p}` is not a partition"))?;
            let o: i64 = o.trim().parse().map_err(|_| format!("`{o}` is not an offset"))?;
            offsets.insert(p, o);
        }
        Ok(Bound::Offsets(offsets))
    }
}

#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub kafka: KafkaSettings,
    pub registry: RegistrySettings,
    pub motion_topic: String,
    pub activity_topic: String,
    pub model_path: PathBuf,
    pub from: Bound,
    pub to: Bound,
    /// Default: `enrich-activity-replay-<model_version>`.
    pub group_id: Option<String>,
    pub max_batch: usize,
    /// Print progress to stderr about every second.
    pub progress: bool,
    /// The configured `min_confidence`, as `serve` uses it; `None`: the
    /// model's own threshold.
    pub min_confidence: Option<f32>,
    /// The forget ledger (`forget_topic`): windows of forgotten installs,
    /// captured up to their request, are not tagged again. Empty: none.
    pub forget_topic: String,
}

/// The offsets a replay covers: per partition `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub group_id: String,
    pub model_version: String,
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// Partitions whose asked start lay below the log start (records already
    /// deleted by retention): `(partition, asked, earliest available)`.
    pub below_log_start: Vec<(i32, i64, i64)>,
}

impl Plan {
    pub fn total(&self) -> i64 {
        self.ranges.values().map(|(s, e)| (e - s).max(0)).sum()
    }

    pub fn describe(&self) -> String {
        let mut out = format!("replay with model {} as group {}\n", self.model_version, self.group_id);
        for (p, asked, earliest) in &self.below_log_start {
            out.push_str(&format!(
                "  partition {p}: offsets below {earliest} were deleted by retention; starting there instead of at {asked}\n"
            ));
        }
        for (p, (s, e)) in &self.ranges {
            out.push_str(&format!(
                "  partition {p}: offsets {s}..{e} ({} records)\n",
                (e - s).max(0)
            ));
        }
        out.push_str(&format!("  total: {} records", self.total()));
        out
    }
}

fn resolve(
    c: &BaseConsumer,
    topic: &str,
    bound: &Bound,
    parts: &[i32],
    marks: &BTreeMap<i32, (i64, i64)>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let timeout = Duration::from_secs(10);
    Ok(match bound {
        Bound::Earliest => parts.iter().map(|p| (*p, marks[p].0)).collect(),
        Bound::Latest => parts.iter().map(|p| (*p, marks[p].1)).collect(),
        Bound::Offsets(o) => parts
            .iter()
            .map(|p| (*p, o.get(p).copied().unwrap_or(marks[p].1)))
            .collect(),
        Bound::Time(ms) => {
            let mut tpl = TopicPartitionList::new();
            for p in parts {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*ms))?;
            }
            let found = c.offsets_for_times(tpl, timeout)?;
            parts
                .iter()
                .map(|p| {
                    let o = found
                        .find_partition(topic, *p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .unwrap_or(marks[p].1);
                    (*p, o)
                })
                .collect()
        }
    })
}

/// Works out the offset ranges, resuming from the group's commits.
pub fn plan(s: &ReplaySettings, model_version: &str) -> anyhow::Result<Plan> {
    let group_id = s
        .group_id
        .clone()
        .unwrap_or_else(|| format!("enrich-activity-replay-{model_version}"));
    context_runtime::kafka::verify(&s.kafka, Duration::from_secs(10))?;
    let c: BaseConsumer = s.kafka.client().set("group.id", &group_id).create()?;
    let timeout = Duration::from_secs(10);
    let md = c.fetch_metadata(Some(&s.motion_topic), timeout)?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == s.motion_topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!parts.is_empty(), "topic {} has no partitions", s.motion_topic);
    let mut marks = BTreeMap::new();
    for p in &parts {
        marks.insert(*p, c.fetch_watermarks(&s.motion_topic, *p, timeout)?);
    }
    let start = resolve(&c, &s.motion_topic, &s.from, &parts, &marks)?;
    let end = resolve(&c, &s.motion_topic, &s.to, &parts, &marks)?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(&s.motion_topic, *p);
    }
    let committed = c.committed_offsets(tpl, timeout)?;
    let mut ranges = BTreeMap::new();
    let mut below_log_start = Vec::new();
    for p in parts {
        let mut from = start[&p];
        let earliest = marks[&p].0;
        if from < earliest {
            below_log_start.push((p, from, earliest));
            from = earliest;
        }
        if let Some(Offset::Offset(done)) = committed.find_partition(&s.motion_topic, p).map(|e| e.offset()) {
            if done > from && done <= end[&p] {
                from = done; // resume
            }
        }
        ranges.insert(p, (from, end[&p].max(from)));
    }
    Ok(Plan {
        group_id,
        model_version: model_version.to_owned(),
        ranges,
        below_log_start,
    })
}

/// Replays the plan; returns the number of tags written. Stops early (and
/// can be resumed) when `shutdown` turns true.
pub async fn run(s: ReplaySettings, mut shutdown: Shutdown) -> anyhow::Result<Counts> {
    let model = Arc::new(load_model(&s.model_path)?);
    let plan = {
        let (s, v) = (s.clone(), model.model_version.clone());
        tokio::task::spawn_blocking(move || plan(&s, &v)).await??
    };
    let total = plan.total();
    if total == 0 {
        return Ok(Counts::default());
    }
    let mut tagger = Tagger::new(&s.kafka, &s.registry, &s.activity_topic).await?;
    tagger.min_confidence = s.min_confidence;
    tagger.forgotten = context_runtime::forget::follow_configured(&s.kafka, &s.forget_topic).await?;
    let consumer: StreamConsumer = s
        .kafka
        .client()
        .set("group.id", &plan.group_id)
        .set("enable.auto.commit", "false")
        // Should retention delete records after the plan was made, start at
        // the earliest that is left rather than jump to the end.
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, (start, end)) in &plan.ranges {
        if start < end {
            tpl.add_partition_offset(&s.motion_topic, *p, Offset::Offset(*start))?;
            open.insert(*p, *end);
        }
    }
    consumer.assign(&tpl)?;
    let (started, mut last_report) = (Instant::now(), Instant::now());
    // Per partition, the offset the replay has covered up to: records and,
    // on a topic written in transactions, the commit markers between and
    // after them, which are never delivered (the consumer's position moves
    // past them).
    let mut reached: BTreeMap<i32, i64> = plan.ranges.iter().map(|(p, (start, _))| (*p, *start)).collect();
    let done = |reached: &BTreeMap<i32, i64>| -> i64 {
        plan.ranges
            .iter()
            .map(|(p, (start, end))| (reached[p].min(*end) - start).max(0))
            .sum()
    };
    let mut counts = Counts::default();
    while !open.is_empty() {
        let mut batch = Vec::new();
        while batch.len() < s.max_batch && !open.is_empty() {
            tokio::select! {
                _ = shutdown.requested() => return Ok(counts),
                r = tokio::time::timeout(Duration::from_millis(300), consumer.recv()) => match r {
                    Err(_) => {
                        // Nothing more came: a partition whose position
                        // passed its end (past a last commit marker) is done.
                        if batch.is_empty() {
                            close_reached(&consumer, &s.motion_topic, &mut open, &mut reached)?;
                        }
                        break;
                    }
                    Ok(Err(e)) => { tracing::warn!(error = %e, "consumer error"); break }
                    Ok(Ok(msg)) => {
                        let (p, o) = (msg.partition(), msg.offset());
                        let Some(&end) = open.get(&p) else { continue };
                        if o >= end {
                            open.remove(&p);
                            reached.insert(p, end);
                            continue;
                        }
                        if o + 1 >= end {
                            open.remove(&p);
                        }
                        batch.push(msg.detach());
                    }
                }
            }
        }
        if batch.is_empty() {
            if s.progress && last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                report(done(&reached), total, started);
            }
            continue;
        }
        // A registry outage is waited out: the batch is tried again, never
        // skipped or committed past.
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let batch_counts = loop {
            match tagger.process(&model, &batch).await {
                Ok(c) => break c,
                Err(e) if !e.is_retryable() => {
                    anyhow::bail!("{e}; the replay stopped here and resumes from this batch")
                }
                Err(e) => {
                    eprintln!("replay: {e:#}; retrying in about {} ms", backoff.peek().as_millis());
                    if !backoff.wait(&mut shutdown).await {
                        return Ok(counts);
                    }
                }
            }
        };
        counts.add(&batch_counts);
        commit_after(&consumer, &batch)?;
        for msg in &batch {
            let r = reached.entry(msg.partition()).or_insert(0);
            *r = (*r).max(msg.offset() + 1);
        }
        for (p, (_, end)) in &plan.ranges {
            if !open.contains_key(p) {
                reached.insert(*p, *end);
            }
        }
        if s.progress && (last_report.elapsed() >= Duration::from_secs(1) || open.is_empty()) {
            last_report = Instant::now();
            report(done(&reached), total, started);
        }
    }
    if s.progress {
        report(done(&reached), total, started);
    }
    Ok(counts)
}

fn report(done: i64, total: i64, started: Instant) {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let eta = (total - done).max(0) as f64 / rate.max(1e-3);
    eprintln!(
        "replay: {done}/{total} offsets ({:.0}%), {rate:.0}/s, ETA {eta:.0} s",
        100.0 * done as f64 / total.max(1) as f64
    );
}

/// Closes the open partitions whose consumer position reached their end
/// (the records after the last one delivered were commit markers), and
/// commits that end so a later run of the same replay finds nothing left.
fn close_reached(
    consumer: &StreamConsumer,
    topic: &str,
    open: &mut BTreeMap<i32, i64>,
    reached: &mut BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let position = consumer.position()?;
    let mut finished = TopicPartitionList::new();
    for e in position.elements_for_topic(topic) {
        let (p, Offset::Offset(at)) = (e.partition(), e.offset()) else {
            continue;
        };
        let Some(&end) = open.get(&p) else { continue };
        let r = reached.entry(p).or_insert(0);
        *r = (*r).max(at.min(end));
        if at >= end {
            open.remove(&p);
            finished.add_partition_offset(topic, p, Offset::Offset(end))?;
        }
    }
    if finished.count() > 0 {
        consumer.commit(&finished, rdkafka::consumer::CommitMode::Sync)?;
    }
    Ok(())
}
