//! The rows the sink inserts, one type per table.

use context_schemas::{ActivityTag, DeadLetter, SignalValue};
use serde::{Deserialize, Serialize};

fn seconds(micros: i64) -> u32 {
    u32::try_from(micros.div_euclid(1_000_000)).unwrap_or(if micros < 0 { 0 } else { u32::MAX })
}

/// First second of 2000 and of 2100: device times outside are absurd.
const PLAUSIBLE_SECONDS: std::ops::Range<u32> = 946_684_800..4_102_444_800;

/// The `DateTime` a device time is partitioned by: itself, or the sentinel
/// 1970-01-01 (partition `197001`) when it is before 2000 or after 2099, so
/// wild device clocks fill one partition instead of a hundred. A function of
/// the time alone, so every retry of an event lands in the same partition
/// and its duplicates merge away; the exact time stays in the `_us` column.
pub fn partition_seconds(micros: i64) -> u32 {
    let s = seconds(micros);
    if PLAUSIBLE_SECONDS.contains(&s) {
        s
    } else {
        0
    }
}

fn double(v: Option<SignalValue>) -> Option<f64> {
    match v {
        Some(SignalValue::Double(d)) => Some(d),
        _ => None,
    }
}

fn long(v: Option<SignalValue>) -> Option<i64> {
    match v {
        Some(SignalValue::Long(l)) => Some(l),
        _ => None,
    }
}

fn boolean(v: Option<SignalValue>) -> Option<bool> {
    match v {
        Some(SignalValue::Boolean(b)) => Some(b),
        _ => None,
    }
}

fn string(v: Option<SignalValue>) -> Option<String> {
    match v {
        Some(SignalValue::String(s)) => Some(s),
        _ => None,
    }
}

include!(concat!(env!("OUT_DIR"), "/event_row.rs"));

/// A row's partition: the `DateTime` (seconds) of its table's
/// `PARTITION BY toYYYYMM(..)` column, or 0 for every row of a table that is
/// not partitioned by month (a batch of its rows is then one insert).
pub trait Partitioned {
    fn partition_time(&self) -> u32;

    /// The month the row's partition is: `year * 12 + month - 1` (UTC).
    fn partition_month(&self) -> u32 {
        time::OffsetDateTime::from_unix_timestamp(i64::from(self.partition_time()))
            .map(|t| u32::try_from(t.year() * 12 + i32::from(u8::from(t.month())) - 1).unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Bytes a row holds in memory, counted against `batch.max_bytes` together
/// with its record, so that a batch's memory is bounded by that setting
/// whatever the rows hold.
pub trait InMemory {
    /// The row's own heap (texts, arrays) and its struct.
    fn memory_bytes(&self) -> usize;

    /// What a row costs a batch at its peak: its heap, and its struct (with
    /// its record's) three times: once in the batch, up to once more as the
    /// batch's vector's spare capacity, and once in the copy sorted by
    /// partition for the insert.
    fn batch_bytes(&self) -> usize
    where
        Self: Sized,
    {
        let structs = std::mem::size_of::<Self>()
            + std::mem::size_of::<(i32, std::sync::Arc<rdkafka::message::OwnedMessage>)>()
            + std::mem::size_of::<rdkafka::message::OwnedMessage>();
        self.memory_bytes() + 2 * structs
    }
}

fn texts(v: &Vec<String>) -> usize {
    v.capacity() * std::mem::size_of::<String>() + v.iter().map(String::capacity).sum::<usize>()
}

impl InMemory for ActivityRow {
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.model_version.capacity()
            + self.app_id.capacity()
            + self.activity.capacity()
            + texts(&self.labels)
            + 4 * self.probabilities.capacity()
            + self.unknown_reason.capacity()
    }
}

impl InMemory for DeadLetterRow {
    fn memory_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        std::mem::size_of::<Self>()
            + self.source.capacity()
            + self.reason.capacity()
            + self.detail.capacity()
            + opt(&self.source_topic)
            + opt(&self.app_id)
            + opt(&self.event_id)
            + self.payload.0.capacity()
            + self.envelope.capacity()
            + self.target_topic.capacity()
    }
}

impl Partitioned for EventRow {
    fn partition_time(&self) -> u32 {
        self.client_time
    }
}

/// One row of `context.activity_tags`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct ActivityRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: uuid::Uuid,
    pub model_version: String,
    pub app_id: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: uuid::Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub install_id: uuid::Uuid,
    pub timestamp_us: i64,
    pub event_time: u32,
    pub activity: String,
    pub confidence: f32,
    pub labels: Vec<String>,
    pub probabilities: Vec<f32>,
    pub tagged_at_us: i64,
    pub tagged_time: u32,
    /// Why the activity is `unknown`; empty for a tag with a class.
    pub unknown_reason: String,
}

impl Partitioned for ActivityRow {
    /// `activity_tags` is partitioned by `model_version` (`ddl::tables`):
    /// `event_time`, the corrected time, differs between the duplicates of
    /// a tag. A batch holds the tags of a few model versions at most.
    fn partition_time(&self) -> u32 {
        0
    }
}

impl ActivityRow {
    pub fn from_tag(t: &ActivityTag) -> Self {
        ActivityRow {
            event_id: t.event_id,
            model_version: t.model_version.clone(),
            app_id: t.app_id.clone(),
            session_id: t.session_id,
            install_id: t.install_id,
            timestamp_us: t.timestamp,
            event_time: partition_seconds(t.timestamp),
            activity: t.activity.clone(),
            confidence: t.confidence,
            labels: t.probabilities.iter().map(|p| p.label.clone()).collect(),
            probabilities: t.probabilities.iter().map(|p| p.probability).collect(),
            tagged_at_us: t.tagged_at,
            tagged_time: seconds(t.tagged_at),
            unknown_reason: t.reason.clone().unwrap_or_default(),
        }
    }
}

/// Bytes stored in a `String` column as they are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes(v.as_bytes().to_vec()))
            }
            fn visit_string<E>(self, v: String) -> Result<Bytes, E> {
                Ok(Bytes(v.into_bytes()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// One row of `context.dead_letters`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct DeadLetterRow {
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub app_id: Option<String>,
    pub event_id: Option<String>,
    pub failed_at_us: i64,
    pub failed_time: u32,
    pub payload: Bytes,
    /// A gateway reject's batch envelope (JSON, `dl.envelope`); empty otherwise.
    pub envelope: String,
    /// `dl.truncated`: the original length of a stub; 0 for a whole letter.
    pub truncated: u64,
    /// `dl.target_topic`: the topic an output Kafka refused was going to.
    pub target_topic: String,
    /// The install the letter's record belongs to: its Kafka key (every
    /// record of the platform is keyed by install id); empty when unkeyed.
    pub install_id: String,
}

impl Partitioned for DeadLetterRow {
    /// `dead_letters` has one partition: a retry of a letter fails at
    /// another time, and its copies must meet to merge.
    fn partition_time(&self) -> u32 {
        0
    }
}

impl DeadLetterRow {
    pub fn with_envelope(mut self, envelope: String) -> Self {
        self.envelope = envelope;
        self
    }

    /// The letter's `dl.truncated` (original length) and `dl.target_topic`.
    pub fn with_stub_and_target(mut self, truncated: u64, target_topic: String) -> Self {
        self.truncated = truncated;
        self.target_topic = target_topic;
        self
    }

    pub fn from_dead_letter(d: DeadLetter) -> Self {
        DeadLetterRow {
            failed_time: seconds(d.failed_at),
            source: d.source,
            reason: d.reason,
            detail: d.detail,
            source_topic: d.source_topic,
            source_partition: d.source_partition,
            source_offset: d.source_offset,
            app_id: d.app_id,
            event_id: d.event_id,
            failed_at_us: d.failed_at,
            payload: Bytes(d.payload),
            envelope: String::new(),
            truncated: 0,
            target_topic: String::new(),
            install_id: String::new(),
        }
    }

    /// The install of the letter's record, from its Kafka key.
    pub fn with_install(mut self, key: Option<&[u8]>) -> Self {
        self.install_id = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(|k| k.trim().to_owned())
            .unwrap_or_default();
        self
    }
}

/// Whose data a row is, for the forget ledger
/// ([`context_runtime::forget::Forgotten::drops`]): its app (when known),
/// its install, and its capture time (µs; none for a dead letter).
pub trait Subject {
    fn subject(&self) -> (Option<&str>, Option<uuid::Uuid>, Option<i64>);

    fn forgotten(&self, ledger: &context_runtime::forget::Forgotten) -> bool {
        match self.subject() {
            (app, Some(install), at) => ledger.drops(app, &install, at),
            _ => false,
        }
    }
}

impl Subject for EventRow {
    fn subject(&self) -> (Option<&str>, Option<uuid::Uuid>, Option<i64>) {
        (Some(&self.app_id), Some(self.install_id), Some(self.timestamp_us))
    }
}

impl Subject for ActivityRow {
    fn subject(&self) -> (Option<&str>, Option<uuid::Uuid>, Option<i64>) {
        (Some(&self.app_id), Some(self.install_id), Some(self.timestamp_us))
    }
}

impl Subject for DeadLetterRow {
    /// A letter has no trustworthy capture time: every letter of a
    /// forgotten install is dropped, also one given up on after the request.
    fn subject(&self) -> (Option<&str>, Option<uuid::Uuid>, Option<i64>) {
        (
            self.app_id.as_deref(),
            uuid::Uuid::parse_str(&self.install_id).ok(),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use context_schemas::sample::{self, SampleOptions};

    #[test]
    fn a_rows_memory_counts_its_arrays_and_texts() {
        let e = sample::event(1, &SampleOptions::default());
        let samples = e.motion.as_ref().unwrap().accelerometer.x.len();
        let encoded = context_schemas::AvroRecord::to_wire(&e, 1).unwrap().len();
        let row = EventRow::from_event(e);
        let bytes = InMemory::memory_bytes(&row);
        // Six f32 axes, the struct itself, and the texts.
        assert!(bytes >= std::mem::size_of::<EventRow>() + 6 * 4 * samples + row.app_id.len());
        // The decoded row is larger than its record: counting the record
        // alone (as before) would let a batch hold more than its limit.
        assert!(bytes > encoded, "{bytes} vs {encoded}");
        let mut bigger = row.clone();
        let before = InMemory::memory_bytes(&bigger);
        bigger.accel_x.extend(vec![0.0; 1000]);
        assert!(InMemory::memory_bytes(&bigger) >= before + 4000);
    }

    #[test]
    fn absurd_device_times_share_one_sentinel_partition() {
        assert_eq!(partition_seconds(1_760_000_000_000_000), 1_760_000_000);
        for absurd in [
            0,
            -5_000_000,
            900_000_000_000_000,
            4_200_000_000_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(partition_seconds(absurd), 0, "{absurd}");
        }
    }

    #[test]
    fn partition_months_follow_the_calendar() {
        struct At(u32);
        impl Partitioned for At {
            fn partition_time(&self) -> u32 {
                self.0
            }
        }
        assert_eq!(At(0).partition_month(), 1970 * 12);
        assert_eq!(At(1_760_000_100).partition_month(), 2025 * 12 + 9); // 2025-10-09
        assert_eq!(At(951_782_400).partition_month(), 2000 * 12 + 1); // 2000-02-29
        assert_eq!(At(951_868_799).partition_month(), 2000 * 12 + 1); // 2000-02-29 23:59:59
        assert_eq!(At(951_868_800).partition_month(), 2000 * 12 + 2); // 2000-03-01
    }

    #[test]
    fn event_rows_carry_every_signal() {
        let e = sample::event(3, &SampleOptions::default());
        let row = EventRow::from_event(e.clone());
        assert_eq!(row.event_id, e.event_id);
        assert_eq!(row.battery_level, double(e.signals.get("battery_level").cloned()));
        assert_eq!(row.network_type, string(e.signals.get("network_type").cloned()));
        assert_eq!(row.accel_y, e.motion.as_ref().unwrap().accelerometer.y);
        assert_eq!(row.event_time as i64, e.timestamp / 1_000_000);
    }
}

/// One row of `context.sink_ledger`: the offsets `[first_offset,
/// next_offset)` of one partition that one flush covered, written after
/// its rows and dead letters were stored and before its offsets are
/// committed. `sink-clickhouse reconcile` reads it against the topic.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct LedgerRow {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub next_offset: i64,
    pub rows_inserted: u64,
    pub rows_dead_lettered: u64,
    pub inserted_at_us: i64,
    pub inserted_time: u32,
}

impl crate::cluster::ShardKey for EventRow {
    fn shard_key(&self) -> String {
        self.install_id.hyphenated().to_string()
    }
}

impl crate::cluster::ShardKey for ActivityRow {
    fn shard_key(&self) -> String {
        self.install_id.hyphenated().to_string()
    }
}

impl crate::cluster::ShardKey for DeadLetterRow {
    fn shard_key(&self) -> String {
        self.install_id.clone()
    }
}

/// The ledger has a replica on every server: no shard.
impl crate::cluster::ShardKey for LedgerRow {
    fn shard_key(&self) -> String {
        String::new()
    }
}
