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

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// `micros` since the epoch as RFC 3339 (UTC).
pub fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}
