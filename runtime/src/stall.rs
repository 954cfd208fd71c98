//! Stall detection for the consumers (the sink's groups, the router, the
//! tagger): a consumer that has work but makes no progress for
//! `stall_after` turns unready with what is stuck, and unhealthy after a
//! further `stall_grace`, so that Kubernetes restarts it. It catches what no
//! retry loop foresaw: a paused partition never resumed, a task that died, a
//! socket that hangs.
//!
//! A watch runs beside the service's loop, on its own clients, so a loop
//! that hangs cannot hide its own stall. Every check, for each partition
//! assigned to this replica (the consumer's own assignment, a local call):
//! - the consumer's position (local), the group's committed offset and the
//!   partition's end (broker calls, each bounded);
//! - **work** is there when the position is below the end (records not yet
//!   fetched) or a record the service received is not committed yet (the
//!   service says which it received through [`Progress`]). Offsets that are
//!   only transaction markers are past the position and carry no record, so
//!   they are no work;
//! - **progress** is any change of position or committed offset.
//!
//! A partition with work and no progress for `stall_after` is stuck. A check
//! that cannot read the broker keeps the last answer: a broker outage is not
//! a stall the consumer could heal by restarting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::KafkaSettings;

/// `stall_after` and `stall_grace` of a consumer's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallSettings {
    /// Work without progress for this long is a stall (unready); zero turns
    /// the watch off.
    pub after: Duration,
    /// A stall that lasts this much longer makes `/healthz` fail.
    pub grace: Duration,
}

/// The defaults: longer than any retry backoff (10 s) and than a
/// transaction's timeout (60 s).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(300);
pub const DEFAULT_STALL_GRACE: Duration = Duration::from_secs(300);

impl Default for StallSettings {
    fn default() -> Self {
        StallSettings {
            after: DEFAULT_STALL_AFTER,
            grace: DEFAULT_STALL_GRACE,
        }
    }
}

impl StallSettings {
    /// Problems of `stall_after` and `stall_grace` in a configuration.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.after.is_zero() && self.after < Duration::from_secs(1) {
            problems.push(format!(
                "stall_after {:?} is below 1s (0 turns the stall watch off)",
                self.after
            ));
        }
        problems
    }

    /// How often the watch looks: a fifth of `after`, 1 s to 30 s.
    pub fn check_interval(&self) -> Duration {
        (self.after / 5).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// What the service tells its watch as it works.
#[derive(Debug, Default)]
pub struct Progress {
    /// The highest offset received per (topic, partition).
    delivered: Mutex<HashMap<(String, i32), i64>>,
    last_error: Mutex<Option<String>>,
}

impl Progress {
    /// The service received the record at `offset`.
    pub fn delivered(&self, topic: &str, partition: i32, offset: i64) {
        let mut d = self.delivered.lock().expect("progress lock");
        match d.get_mut(&(topic.to_owned(), partition)) {
            Some(o) if *o >= offset => {}
            Some(o) => *o = offset,
            None => {
                d.insert((topic.to_owned(), partition), offset);
            }
        }
    }

    /// A partition left this replica: what it received there is no longer its work.
    pub fn forget(&self, topic: &str, partition: i32) {
        self.delivered
            .lock()
            .expect("progress lock")
            .remove(&(topic.to_owned(), partition));
    }

    /// The last error the service met (said with a stall).
    pub fn error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().expect("progress lock") = Some(e.to_string());
    }

    fn delivered_at(&self, topic: &str, partition: i32) -> Option<i64> {
        self.delivered
            .lock()
            .expect("progress lock")
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("progress lock").clone()
    }
}

/// The consumer's assignment with its positions: (topic, partition,
/// position, `None` before the first fetch).
pub type Positions = Box<dyn Fn() -> Vec<(String, i32, Option<i64>)> + Send + Sync>;

/// What one check read of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub topic: String,
    pub partition: i32,
    pub position: Option<i64>,
    pub committed: Option<i64>,
    /// The earliest retained offset and the end (high watermark).
    pub low: i64,
    pub end: i64,
    /// The highest offset the service received.
    pub delivered: Option<i64>,
}

impl Reading {
    /// Whether the consumer has something to do on this partition.
    pub fn has_work(&self) -> bool {
        let at = self.position.or(self.committed).unwrap_or(self.low).max(self.low);
        let unfetched = at < self.end;
        let uncommitted = self.delivered.is_some_and(|d| self.committed.is_none_or(|c| c <= d));
        unfetched || uncommitted
    }
}

/// (position, committed) last seen, and since when without progress.
type Seen = ((Option<i64>, Option<i64>), Instant);

/// Decides from successive readings which partitions are stuck. Pure, so
/// that the rule is tested without a broker.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Per partition: the (position, committed) last seen and since when it
    /// has had work without progress.
    seen: HashMap<(String, i32), Seen>,
}

impl Tracker {
    /// The stuck partitions, described, after this reading at `now`.
    pub fn observe(&mut self, now: Instant, after: Duration, readings: &[Reading]) -> Vec<String> {
        self.seen.retain(|k, _| {
            readings
                .iter()
                .any(|r| (r.topic.as_str(), r.partition) == (k.0.as_str(), k.1))
        });
        let mut stuck = Vec::new();
        for r in readings {
            let key = (r.position, r.committed);
            let entry = self.seen.entry((r.topic.clone(), r.partition)).or_insert((key, now));
            if !r.has_work() || entry.0 != key {
                *entry = (key, now);
                continue;
            }
            let still = now.saturating_duration_since(entry.1);
            if still >= after {
                let show = |o: Option<i64>| o.map_or_else(|| "none".to_owned(), |o| o.to_string());
                stuck.push(format!(
                    "{}[{}] at position {}, committed {}, end {} ({} behind), no progress for {}s",
                    r.topic,
                    r.partition,
                    show(r.position),
                    show(r.committed),
                    r.end,
                    r.end - r.committed.unwrap_or(r.low).max(r.low),
                    still.as_secs()
                ));
            }
        }
        stuck
    }
}

/// The answer of a watch, read by `/readyz` and `/healthz`.
#[derive(Debug)]
pub struct Watch {
    pub settings: StallSettings,
    group: String,
    /// Since when, and what is stuck.
    stalled: Mutex<Option<(Instant, String)>>,
}

impl Watch {
    pub fn new(group: &str, settings: StallSettings) -> Arc<Watch> {
        Arc::new(Watch {
            settings,
            group: group.to_owned(),
            stalled: Mutex::new(None),
        })
    }

    /// `Err` with what is stuck while a stall lasts.
    pub fn ready(&self) -> Result<(), String> {
        match &*self.stalled.lock().expect("stall lock") {
            Some((_, what)) => Err(format!("stalled: group {}: {what}", self.group)),
            None => Ok(()),
        }
    }

    /// `Err` once a stall has lasted `grace` beyond `after`.
    pub fn healthy(&self) -> Result<(), String> {
        match &*self.stalled.lock().expect("stall lock") {
            Some((since, what)) if since.elapsed() >= self.settings.grace => Err(format!(
                "stalled for {}s past stall_after: group {}: {what}",
                since.elapsed().as_secs(),
                self.group
            )),
            _ => Ok(()),
        }
    }

    /// Records a check's answer, logging a change.
    fn set(&self, stuck: Vec<String>, last_error: Option<String>) {
        let mut stalled = self.stalled.lock().expect("stall lock");
        if stuck.is_empty() {
            if stalled.take().is_some() {
                tracing::info!(group = %self.group, "stall over: the consumer makes progress again");
            }
            metrics::gauge!("consumer_stalled", "group" => self.group.clone()).set(0.0);
            return;
        }
        let what = stuck.join("; ");
        if stalled.is_none() {
            tracing::error!(
                group = %self.group,
                stuck = %what,
                last_error = last_error.as_deref().unwrap_or("none"),
                unhealthy_in = ?self.settings.grace,
                "stalled: work without progress for stall_after; /readyz is 503, /healthz fails after stall_grace"
            );
            *stalled = Some((Instant::now(), what));
        } else if let Some((_, w)) = stalled.as_mut() {
            *w = what;
        }
        metrics::gauge!("consumer_stalled", "group" => self.group.clone()).set(1.0);
    }
}

/// Combines several watches (the sink's groups) for the admin endpoints.
pub fn all_ready(watches: &[Arc<Watch>]) -> Result<(), String> {
    watches.iter().try_for_each(|w| w.ready())
}

/// See [`all_ready`].
pub fn all_healthy(watches: &[Arc<Watch>]) -> Result<(), String> {
    watches.iter().try_for_each(|w| w.healthy())
}

/// How long one broker call of a check may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads every assigned partition (blocking: broker calls).
fn read(client: &BaseConsumer, positions: &Positions, progress: &Progress) -> Result<Vec<Reading>, KafkaError> {
    let assigned = positions();
    if assigned.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p, _) in &assigned {
        tpl.add_partition(t, *p);
    }
    let committed = client.committed_offsets(tpl, CALL_TIMEOUT)?;
    let mut out = Vec::with_capacity(assigned.len());
    for (topic, partition, position) in assigned {
        let (low, end) = client.fetch_watermarks(&topic, partition, CALL_TIMEOUT)?;
        let committed = committed
            .find_partition(&topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        out.push(Reading {
            delivered: progress.delivered_at(&topic, partition),
            topic,
            partition,
            position,
            committed,
            low,
            end,
        });
    }
    Ok(out)
}

/// Starts the watch of `group` (nothing when `after` is zero): a task that
/// checks every [`StallSettings::check_interval`] until `shutdown`.
pub fn spawn(
    watch: Arc<Watch>,
    kafka: &KafkaSettings,
    progress: Arc<Progress>,
    positions: Positions,
    mut shutdown: crate::shutdown::Shutdown,
) -> Result<Option<tokio::task::JoinHandle<()>>, KafkaError> {
    if watch.settings.after.is_zero() {
        return Ok(None);
    }
    // Same group id, never joins the group: committed offsets only.
    let client: BaseConsumer = kafka
        .client()
        .set("group.id", &watch.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let shared = Arc::new((client, positions, progress));
    Ok(Some(tokio::spawn(async move {
        let mut tracker = Tracker::default();
        let mut ticker = tokio::time::interval(watch.settings.check_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = ticker.tick() => {}
            }
            let s = shared.clone();
            let readings = tokio::task::spawn_blocking(move || read(&s.0, &s.1, &s.2)).await;
            match readings {
                Ok(Ok(r)) => {
                    let stuck = tracker.observe(Instant::now(), watch.settings.after, &r);
                    watch.set(stuck, shared.2.last_error());
                }
                Ok(Err(e)) => {
                    tracing::debug!(group = %watch.group, error = %e, "stall check: reading the broker failed; the last answer stands")
                }
                Err(e) => {
                    tracing::warn!(group = %watch.group, error = %e, "stall check panicked; the last answer stands")
                }
            }
        }
    })))
}

/// The positions of a consumer's assignment, for [`spawn`].
pub fn positions_of<C: Consumer<X> + Send + Sync + 'static, X: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: Arc<C>,
) -> Positions {
    Box::new(move || {
        let Ok(tpl) = consumer.position() else {
            return Vec::new();
        };
        tpl.elements()
            .iter()
            .map(|e| {
                let position = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_owned(), e.partition(), position)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(position: Option<i64>, committed: Option<i64>, end: i64, delivered: Option<i64>) -> Reading {
        Reading {
            topic: "t".into(),
            partition: 0,
            position,
            committed,
            low: 0,
            end,
            delivered,
        }
    }

    #[test]
    fn work_is_records_to_fetch_or_received_and_not_committed() {
        assert!(!reading(Some(10), Some(10), 10, Some(9)).has_work(), "caught up");
        // A commit marker after the last record: the position passed it.
        assert!(
            !reading(Some(12), Some(11), 12, Some(10)).has_work(),
            "only markers left"
        );
        assert!(reading(Some(5), Some(5), 10, Some(4)).has_work(), "records not fetched");
        assert!(
            reading(Some(10), Some(5), 10, Some(9)).has_work(),
            "received, not committed"
        );
        assert!(reading(None, None, 10, None).has_work(), "a group that never fetched");
        assert!(!reading(None, None, 0, None).has_work(), "an empty partition");
    }

    #[test]
    fn work_without_progress_for_stall_after_is_stuck_and_progress_clears_it() {
        let after = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let stuck = reading(Some(10), Some(5), 20, Some(9));
        assert!(t.observe(t0, after, std::slice::from_ref(&stuck)).is_empty());
        assert!(t
            .observe(t0 + Duration::from_secs(59), after, std::slice::from_ref(&stuck))
            .is_empty());
        let out = t.observe(t0 + Duration::from_secs(61), after, std::slice::from_ref(&stuck));
        assert_eq!(out.len(), 1);
        assert!(
            out[0].contains("t[0] at position 10, committed 5, end 20 (15 behind)"),
            "{}",
            out[0]
        );
        // A commit is progress: the clock starts again.
        let moved = reading(Some(10), Some(8), 20, Some(9));
        assert!(t
            .observe(t0 + Duration::from_secs(62), after, std::slice::from_ref(&moved))
            .is_empty());
        assert!(t
            .observe(t0 + Duration::from_secs(121), after, std::slice::from_ref(&moved))
            .is_empty());
        assert_eq!(t.observe(t0 + Duration::from_secs(123), after, &[moved]).len(), 1);
        // Idle without work is never a stall, however long.
        let idle = reading(Some(20), Some(20), 20, Some(19));
        let mut t = Tracker::default();
        assert!(t.observe(t0, after, std::slice::from_ref(&idle)).is_empty());
        assert!(t.observe(t0 + Duration::from_secs(3600), after, &[idle]).is_empty());
    }

    #[test]
    fn a_partition_that_leaves_is_forgotten() {
        let after = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let stuck = reading(Some(1), Some(1), 20, None);
        t.observe(t0, after, std::slice::from_ref(&stuck));
        assert!(t.observe(t0 + Duration::from_secs(1), after, &[]).is_empty());
        // Back later: its clock starts again.
        assert!(t.observe(t0 + Duration::from_secs(5), after, &[stuck]).is_empty());
    }

    #[test]
    fn the_watch_turns_unready_then_unhealthy_and_heals() {
        let w = Watch::new(
            "g",
            StallSettings {
                after: Duration::from_secs(1),
                grace: Duration::from_millis(50),
            },
        );
        assert!(w.ready().is_ok() && w.healthy().is_ok());
        w.set(vec!["t[0] stuck".into()], Some("insert timed out".into()));
        assert!(w.ready().unwrap_err().contains("stalled: group g: t[0] stuck"));
        assert!(w.healthy().is_ok(), "within the grace");
        std::thread::sleep(Duration::from_millis(60));
        assert!(w.healthy().unwrap_err().contains("past stall_after"));
        w.set(Vec::new(), None);
        assert!(w.ready().is_ok() && w.healthy().is_ok());
    }
}
