//! The headers of a record in `context.deadletter.v1`: why and where it was
//! given up on. Its value is the original record's bytes, unchanged.

/// The service that gave up on the record (`ingest-gateway`, `stream-router`…).
pub const SOURCE: &str = "dl.source";
/// A short machine-readable reason (`unknown_schema_id`, `projection_failed`…).
pub const REASON: &str = "dl.reason";
/// A human-readable explanation.
pub const DETAIL: &str = "dl.detail";
/// When it was given up on, RFC 3339.
pub const TIME: &str = "dl.time";
/// Where the record was read from, when it came from Kafka.
pub const SOURCE_TOPIC: &str = "dl.source_topic";
pub const SOURCE_PARTITION: &str = "dl.source_partition";
pub const SOURCE_OFFSET: &str = "dl.source_offset";
pub const APP_ID: &str = "dl.app_id";
pub const EVENT_ID: &str = "dl.event_id";
pub const BATCH_ID: &str = "dl.batch_id";
/// The batch envelope of a gateway reject as JSON (`batch_id`, `sent_at`,
/// `session_id`, `sdk`, `device`): with the event's JSON it rebuilds a
/// one-event batch, which is how `sink-clickhouse dead-letters redrive`
/// submits it again.
pub const ENVELOPE: &str = "dl.envelope";
/// Set on a dead letter whose value was cut to fit its topic: the original
/// value's length in bytes. The value then holds only its first bytes.
pub const TRUNCATED: &str = "dl.truncated";
/// The topic a refused output was meant for (a pipeline's dead letter of a
/// record the broker refused for good).
pub const TARGET_TOPIC: &str = "dl.target_topic";

/// What a record costs the broker besides its value: the key, the headers,
/// and librdkafka's per-record and per-batch framing (generous).
pub fn overhead(o: &crate::pipeline::Output) -> usize {
    512 + o.key.as_ref().map_or(0, Vec::len) + o.headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>()
}

/// `o` cut to fit a topic that takes records of at most `max_bytes`: its
/// value truncated to what is left after the key and headers (possibly
/// nothing), with [`TRUNCATED`] naming the original length. A record that
/// fits is returned unchanged.
pub fn fit(mut o: crate::pipeline::Output, max_bytes: usize) -> crate::pipeline::Output {
    let extra = overhead(&o) + TRUNCATED.len() + 40;
    if o.payload.len() + overhead(&o) <= max_bytes {
        return o;
    }
    let original = o.payload.len();
    o.payload.truncate(max_bytes.saturating_sub(extra));
    o.headers.retain(|(k, _)| k != TRUNCATED);
    o.headers
        .push((TRUNCATED.to_owned(), original.to_string().into_bytes()));
    o
}

use crate::clock::{now_micros, rfc3339};

/// A Kafka record given up on, as it came, for the dead-letter topic `topic`:
/// its key and bytes unchanged, its own headers (but earlier `dl.*` ones), then
/// ours naming `source`, `reason`, `detail`, the time and where it was read.
pub fn record(
    msg: &rdkafka::message::OwnedMessage,
    topic: &str,
    source: &str,
    reason: &str,
    detail: &str,
    ids: Option<(&str, &str)>,
) -> crate::pipeline::Output {
    use rdkafka::message::{Headers, Message};
    metrics::counter!("deadletters_total", "source" => source.to_owned(), "reason" => reason.to_owned()).increment(1);
    tracing::warn!(
        source,
        reason,
        detail,
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        "dead-lettered"
    );
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(h) = msg.headers() {
        for i in 0..h.count() {
            let header = h.get(i);
            if !header.key.starts_with("dl.") {
                headers.push((header.key.to_owned(), header.value.unwrap_or_default().to_vec()));
            }
        }
    }
    let mut add = |k: &str, v: String| headers.push((k.to_owned(), v.into_bytes()));
    add(SOURCE, source.into());
    add(REASON, reason.into());
    add(DETAIL, detail.into());
    add(TIME, rfc3339(now_micros()));
    add(SOURCE_TOPIC, msg.topic().into());
    add(SOURCE_PARTITION, msg.partition().to_string());
    add(SOURCE_OFFSET, msg.offset().to_string());
    if let Some((app_id, event_id)) = ids {
        add(APP_ID, app_id.into());
        add(EVENT_ID, event_id.into());
    }
    crate::pipeline::Output {
        topic: topic.to_owned(),
        key: msg.key().map(<[u8]>::to_vec),
        payload: msg.payload().unwrap_or_default().to_vec(),
        headers,
    }
}
