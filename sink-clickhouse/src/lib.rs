//! `sink-clickhouse`: consumer groups that batch records into large ClickHouse
//! inserts and commit offsets only after ClickHouse confirmed them.
//!
//! Not built yet: an empty member of the workspace that the sink issue fills.
