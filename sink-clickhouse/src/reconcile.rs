//! `sink-clickhouse reconcile`: the operator's proof that nothing was lost.
//!
//! Every flush writes to `sink_ledger` which offsets of which partition it
//! covered, after their rows and dead letters were stored and before the
//! offsets were committed. Reconcile reads the ledger against the topic: its
//! retained offsets, its end, and the group's committed offsets. Per
//! partition, from the first offset the ledger knows (or `--since`):
//!
//! - **covered**: offsets the ledger vouches for (stored);
//! - **gap**: offsets below the committed one that no ledger range covers.
//!   A gap still in Kafka is read (read_committed): if it holds records, they
//!   were committed past without being stored, **a loss**; offsets that are
//!   only transaction markers or aborted records are no gap. A gap below the
//!   earliest retained offset cannot be checked any more: **past retention**;
//! - **pending**: from the committed offset to the end, still to be read.
//!
//! `--repair` reads the records of a loss gap, inserts them (rows merge by
//! `event_id`, so repairing twice stores nothing twice) and writes the
//! ledger range, so the next reconcile finds it covered.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::config::Config;
use crate::rows::LedgerRow;

/// How long one broker call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Records read and inserted at once by `--repair`.
const REPAIR_CHUNK: usize = 5_000;

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Request {
    pub topic: String,
    pub group: String,
    /// Only offsets at or after this time (Kafka record time, ms).
    pub since_ms: Option<i64>,
    pub repair: bool,
}

/// What a gap is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapKind {
    /// Records committed past and never stored.
    Loss { records: u64 },
    /// Deleted by retention before it could be checked.
    PastRetention,
    /// Repaired now: this many records stored.
    Repaired { records: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub start: i64,
    pub end: i64,
    pub kind: GapKind,
}

/// One partition's account.
#[derive(Debug, Clone, Default)]
pub struct PartitionReport {
    pub partition: i32,
    pub low: i64,
    pub end: i64,
    pub committed: Option<i64>,
    /// Where the account starts: the ledger's first offset, or `--since`.
    pub from: Option<i64>,
    pub covered: u64,
    pub rows_inserted: u64,
    pub rows_dead_lettered: u64,
    pub gaps: Vec<Gap>,
}

impl PartitionReport {
    pub fn pending(&self) -> i64 {
        (self.end - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }

    pub fn losses(&self) -> u64 {
        self.gaps
            .iter()
            .map(|g| match g.kind {
                GapKind::Loss { records } => records,
                _ => 0,
            })
            .sum()
    }
}

/// The whole account.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub topic: String,
    pub group: String,
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// Records lost: committed past and not stored (not repaired).
    pub fn losses(&self) -> u64 {
        self.partitions.iter().map(PartitionReport::losses).sum()
    }

    pub fn past_retention(&self) -> usize {
        self.partitions
            .iter()
            .flat_map(|p| &p.gaps)
            .filter(|g| g.kind == GapKind::PastRetention)
            .count()
    }

    /// What `reconcile` prints.
    pub fn text(&self) -> String {
        let mut out = format!("topic {}, group {}\n", self.topic, self.group);
        for p in &self.partitions {
            let show = |o: Option<i64>| o.map_or_else(|| "none".to_owned(), |o| o.to_string());
            out += &format!(
                "partition {}: retained {}..{}, committed {}, ledger from {}: covered {} offsets ({} rows stored, {} dead-lettered), pending {}\n",
                p.partition,
                p.low,
                p.end,
                show(p.committed),
                show(p.from),
                p.covered,
                p.rows_inserted,
                p.rows_dead_lettered,
                p.pending()
            );
            for g in &p.gaps {
                let what = match &g.kind {
                    GapKind::Loss { records } => format!("GAP: {records} records committed past and never stored"),
                    GapKind::PastRetention => {
                        "gap below the earliest retained offset: deleted by retention, cannot be checked".to_owned()
                    }
                    GapKind::Repaired { records } => format!("gap repaired: {records} records stored now"),
                };
                out += &format!("  offsets {}..{}: {what}\n", g.start, g.end);
            }
        }
        let losses = self.losses();
        out += &if losses == 0 {
            format!(
                "no gap: every committed offset is stored or dead-lettered{}\n",
                if self.past_retention() > 0 {
                    " (except ranges past retention, listed above)"
                } else {
                    ""
                }
            )
        } else {
            format!("{losses} records lost; `sink-clickhouse reconcile --repair` stores those still in Kafka\n")
        };
        out
    }
}

/// A partition's (id, earliest retained, end, committed, `--since` offset).
type Marks = (i32, i64, i64, Option<i64>, Option<i64>);

#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
struct Range {
    partition: i32,
    first_offset: i64,
    next_offset: i64,
    rows_inserted: u64,
    rows_dead_lettered: u64,
}

/// Merges `[start, end)` ranges (sorted by start) into disjoint ones.
pub fn merge(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The offsets of `[from, to)` that `covered` (merged) does not cover.
pub fn holes(covered: &[(i64, i64)], from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = from;
    for &(s, e) in covered {
        if e <= at {
            continue;
        }
        if s >= to {
            break;
        }
        if s > at {
            out.push((at, s.min(to)));
        }
        at = at.max(e);
        if at >= to {
            break;
        }
    }
    if at < to {
        out.push((at, to));
    }
    out
}

fn reader(c: &Config) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    c.kafka
        .client()
        .set("group.id", "sink-clickhouse-reconcile")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
}

/// The records of `[start, end)` of `partition` (read_committed), given to
/// `each` in chunks; the number of records. Markers and aborted records are
/// skipped by the consumer.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    mut each: impl FnMut(Vec<OwnedMessage>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let (mut n, mut chunk) = (0u64, Vec::new());
    let mut idle = std::time::Instant::now();
    loop {
        let position = consumer
            .position()?
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        if position.is_some_and(|p| p >= end) {
            break;
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle = std::time::Instant::now();
                if m.offset() >= end {
                    break;
                }
                n += 1;
                chunk.push(m.detach());
                if chunk.len() >= REPAIR_CHUNK {
                    each(std::mem::take(&mut chunk))?;
                }
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}[{partition}] at {start}: {e}"),
            None if idle.elapsed() > Duration::from_secs(15) => {
                anyhow::bail!("reading {topic}[{partition}] {start}..{end}: nothing arrived for 15 s")
            }
            None => {}
        }
    }
    if !chunk.is_empty() {
        each(chunk)?;
    }
    consumer.unassign()?;
    Ok(n)
}

/// Reads the ledger against the topic; with `repair`, stores what is lost.
pub async fn reconcile(c: &Config, req: &Request) -> anyhow::Result<Report> {
    let ch = c.clickhouse(false).with_database(&c.database);
    let ranges: Vec<Range> = ch
        .query(
            "SELECT partition, first_offset, next_offset, rows_inserted, rows_dead_lettered \
             FROM sink_ledger WHERE topic = ? AND group_id = ? ORDER BY partition, first_offset",
        )
        .bind(&req.topic)
        .bind(&req.group)
        .fetch_all()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading {}.sink_ledger (run `sink-clickhouse migrate`?): {e}",
                c.database
            )
        })?;
    let (c2, req2) = (c.clone(), req.clone());
    // (partition, low, end, committed, since offset)
    let marks = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Marks>> {
        let consumer: BaseConsumer = c2
            .kafka
            .client()
            .set("group.id", &req2.group)
            .set("enable.auto.commit", "false")
            .create()?;
        let md = consumer.fetch_metadata(Some(&req2.topic), CALL_TIMEOUT)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == req2.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(
            !partitions.is_empty(),
            "topic {} has no partitions (does it exist?)",
            req2.topic
        );
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&req2.topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, CALL_TIMEOUT)?;
        let since = match req2.since_ms {
            Some(ms) => {
                let mut t = TopicPartitionList::new();
                for p in &partitions {
                    t.add_partition_offset(&req2.topic, *p, Offset::Offset(ms))?;
                }
                Some(consumer.offsets_for_times(t, CALL_TIMEOUT)?)
            }
            None => None,
        };
        let mut out = Vec::new();
        for p in partitions {
            let (low, end) = consumer.fetch_watermarks(&req2.topic, p, CALL_TIMEOUT)?;
            let offset_of = |l: &TopicPartitionList| {
                l.find_partition(&req2.topic, p).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    Offset::End => Some(end),
                    _ => None,
                })
            };
            out.push((
                p,
                low,
                end,
                offset_of(&committed),
                since.as_ref().map(|s| offset_of(s).unwrap_or(end)),
            ));
        }
        Ok(out)
    })
    .await??;

    let mut report = Report {
        topic: req.topic.clone(),
        group: req.group.clone(),
        partitions: Vec::new(),
    };
    for (partition, low, end, committed, since) in marks {
        let mine: Vec<&Range> = ranges.iter().filter(|r| r.partition == partition).collect();
        let covered = merge(mine.iter().map(|r| (r.first_offset, r.next_offset)).collect());
        let first = covered.first().map(|r| r.0);
        let from = match (since, first) {
            (Some(s), _) => Some(s),
            (None, f) => f,
        };
        let mut p = PartitionReport {
            partition,
            low,
            end,
            committed,
            from,
            covered: covered.iter().map(|(s, e)| (e - s) as u64).sum(),
            rows_inserted: mine.iter().map(|r| r.rows_inserted).sum(),
            rows_dead_lettered: mine.iter().map(|r| r.rows_dead_lettered).sum(),
            gaps: Vec::new(),
        };
        if let (Some(from), Some(upto)) = (from, committed) {
            let mut in_kafka = Vec::new();
            for (s, e) in holes(&covered, from, upto) {
                if s < low {
                    p.gaps.push(Gap {
                        start: s,
                        end: e.min(low),
                        kind: GapKind::PastRetention,
                    });
                }
                if e > low {
                    in_kafka.push((s.max(low), e));
                }
            }
            for (s, e, n, repaired) in check_holes(c, req, partition, in_kafka).await? {
                // No records: transaction markers or aborted records only.
                if n > 0 {
                    p.gaps.push(Gap {
                        start: s,
                        end: e,
                        kind: if repaired {
                            GapKind::Repaired { records: n }
                        } else {
                            GapKind::Loss { records: n }
                        },
                    });
                }
            }
        }
        report.partitions.push(p);
    }
    Ok(report)
}

/// Reads every hole of `partition` with one consumer: per hole, how many
/// records it holds, and whether they were stored now (`--repair`). Holes
/// of markers only also get a ledger range when repairing, so that the next
/// reconcile does not read them again.
async fn check_holes(
    c: &Config,
    req: &Request,
    partition: i32,
    holes: Vec<(i64, i64)>,
) -> anyhow::Result<Vec<(i64, i64, u64, bool)>> {
    let (c2, topic) = (c.clone(), req.topic.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<OwnedMessage>>(2);
    let repair = req.repair;
    let wanted = holes.clone();
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u64>> {
        let consumer = reader(&c2)?;
        let mut counts = Vec::with_capacity(wanted.len());
        for (start, end) in wanted {
            counts.push(read_range(&consumer, &topic, partition, start, end, |chunk| {
                if repair {
                    tx.blocking_send(chunk)
                        .map_err(|_| anyhow::anyhow!("the repair stopped"))?;
                }
                Ok(())
            })?);
        }
        Ok(counts)
    });
    // Per hole: rows stored and records dead-lettered by the repair.
    let mut stored: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    if repair {
        let mut store = crate::service::Repairer::new(c, &req.topic)?;
        store.forgotten = context_runtime::forget::follow_configured(&c.kafka, &c.forget_topic).await?;
        while let Some(chunk) = rx.recv().await {
            let Some(first) = chunk.first().map(|m| m.offset()) else {
                continue;
            };
            let hole = holes.iter().position(|(s, e)| (*s..*e).contains(&first)).unwrap_or(0);
            let (rows, dead) = store.store(&chunk).await?;
            let e = stored.entry(hole).or_default();
            e.0 += rows;
            e.1 += dead;
        }
    }
    let counts = reading.await??;
    if repair && !holes.is_empty() {
        let now = context_runtime::clock::now_micros();
        let mut insert = c
            .clickhouse(false)
            .with_database(&c.database)
            .insert::<LedgerRow>("sink_ledger")
            .await?;
        for (i, (start, end)) in holes.iter().enumerate() {
            let (rows_inserted, rows_dead_lettered) = stored.get(&i).copied().unwrap_or_default();
            insert
                .write(&LedgerRow {
                    group_id: req.group.clone(),
                    topic: req.topic.clone(),
                    partition,
                    first_offset: *start,
                    next_offset: *end,
                    rows_inserted,
                    rows_dead_lettered,
                    inserted_at_us: now,
                    inserted_time: u32::try_from(now / 1_000_000).unwrap_or(0),
                })
                .await?;
        }
        insert.end().await?;
    }
    Ok(holes
        .into_iter()
        .zip(counts)
        .map(|((s, e), n)| (s, e, n, repair && n > 0))
        .collect())
}

/// The default group of a topic: the sink's source that reads it.
pub fn default_group(c: &Config, topic: &str) -> Option<String> {
    let source = if topic == c.events_topic {
        "events"
    } else if topic == c.activity_topic {
        "activity"
    } else if topic == c.deadletter_topic {
        "deadletter"
    } else {
        return None;
    };
    Some(format!("{}-{source}", c.group_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_holes_are_what_no_range_covers() {
        let covered = merge(vec![(10, 20), (0, 5), (5, 10), (30, 40), (35, 38)]);
        assert_eq!(covered, vec![(0, 20), (30, 40)]);
        assert_eq!(holes(&covered, 0, 40), vec![(20, 30)]);
        assert_eq!(holes(&covered, 0, 50), vec![(20, 30), (40, 50)]);
        assert_eq!(holes(&covered, 25, 35), vec![(25, 30)]);
        assert!(holes(&covered, 0, 20).is_empty());
        assert_eq!(holes(&[], 3, 9), vec![(3, 9)]);
        assert!(holes(&covered, 40, 40).is_empty());
    }

    #[test]
    fn the_report_says_gaps_and_exits_on_losses() {
        let mut r = Report {
            topic: "t".into(),
            group: "g".into(),
            partitions: vec![PartitionReport {
                partition: 0,
                low: 0,
                end: 100,
                committed: Some(90),
                from: Some(0),
                covered: 80,
                gaps: vec![Gap {
                    start: 40,
                    end: 50,
                    kind: GapKind::Loss { records: 10 },
                }],
                ..Default::default()
            }],
        };
        assert_eq!(r.losses(), 10);
        assert_eq!(r.partitions[0].pending(), 10);
        assert!(r.text().contains("offsets 40..50: GAP: 10 records"), "{}", r.text());
        r.partitions[0].gaps[0].kind = GapKind::Repaired { records: 10 };
        assert_eq!(r.losses(), 0);
        assert!(r.text().contains("no gap"));
    }
}
