//! The ClickHouse DDL, generated from the signal catalogue. Valid on the
//! ClickHouse of the local stack (18.16) and on current releases: no
//! LowCardinality, Map, DateTime64, JSON, TTL or `IF NOT EXISTS` on columns.
//!
//! Query patterns (ReplacingMergeTree removes duplicates at merge time, so
//! reads that must see each event once use one of these):
//! - `SELECT … FROM context.events FINAL WHERE …` (or the view `events_latest`);
//! - `SELECT event_id, argMax(battery_level, received_at_us) FROM context.events GROUP BY event_id`;
//! - `SELECT … FROM context.activity_latest WHERE model_version = '…'`.

use context_schemas::catalog::{catalog, SignalKind};

/// One table: its columns in order and the engine clause.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub columns: Vec<(String, String)>,
    pub engine: &'static str,
}

fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect()
}

/// The columns of `context.events`: envelope, one per signal, motion.
pub fn event_columns() -> Vec<(String, String)> {
    let mut c = cols(&[
        ("event_id", "UUID"),
        ("batch_id", "UUID"),
        ("app_id", "String"),
        ("session_id", "UUID"),
        ("install_id", "UUID"),
        ("sdk_name", "String"),
        ("sdk_version", "String"),
        ("device_model", "String"),
        ("device_os_name", "String"),
        ("device_os_version", "String"),
        ("device_extra_keys", "Array(String)"),
        ("device_extra_values", "Array(String)"),
        ("client_time", "DateTime"),
        ("event_time", "DateTime"),
        ("client_timestamp_us", "Int64"),
        ("sent_at_us", "Int64"),
        ("received_at_us", "Int64"),
        ("timestamp_us", "Int64"),
        ("time_suspect", "UInt8 DEFAULT 0"),
    ]);
    for s in &catalog().signals {
        let ty = match s.kind {
            SignalKind::Double => "Nullable(Float64)",
            SignalKind::Long => "Nullable(Int64)",
            SignalKind::Boolean => "Nullable(UInt8)",
            SignalKind::String => "Nullable(String)",
        };
        c.push((s.name.clone(), ty.to_owned()));
    }
    c.extend(cols(&[
        ("motion_sample_rate_hz", "Nullable(Float64)"),
        ("accel_x", "Array(Float32)"),
        ("accel_y", "Array(Float32)"),
        ("accel_z", "Array(Float32)"),
        ("gyro_x", "Array(Float32)"),
        ("gyro_y", "Array(Float32)"),
        ("gyro_z", "Array(Float32)"),
        // Set by ClickHouse: end-to-end lag is inserted_at - received_at_us.
        ("inserted_at", "DateTime DEFAULT now()"),
    ]));
    c
}

/// The column type without its `DEFAULT` clause, as `system.columns` shows it.
pub fn bare_type(spec: &str) -> &str {
    spec.split(" DEFAULT ").next().unwrap_or(spec)
}

/// Every table of the sink. Duplicates of one event share `client_time`
/// (device time, the same in every retry), so they land in one partition
/// and merge away.
pub fn tables() -> Vec<Table> {
    vec![
        Table {
            name: "events",
            columns: event_columns(),
            engine: "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(client_time) ORDER BY (app_id, event_id)",
        },
        Table {
            name: "activity_tags",
            columns: cols(&[
                ("event_id", "UUID"),
                ("model_version", "String"),
                ("app_id", "String"),
                ("session_id", "UUID"),
                ("install_id", "UUID"),
                ("timestamp_us", "Int64"),
                ("event_time", "DateTime"),
                ("activity", "String"),
                ("confidence", "Float32"),
                ("labels", "Array(String)"),
                ("probabilities", "Array(Float32)"),
                ("tagged_at_us", "Int64"),
                ("tagged_time", "DateTime"),
                ("unknown_reason", "String"),
            ]),
            engine: "ENGINE = ReplacingMergeTree(tagged_at_us) PARTITION BY toYYYYMM(event_time) ORDER BY (event_id, model_version)",
        },
        Table {
            name: "dead_letters",
            columns: cols(&[
                ("source", "String"),
                ("reason", "String"),
                ("detail", "String"),
                ("source_topic", "Nullable(String)"),
                ("source_partition", "Nullable(Int32)"),
                ("source_offset", "Nullable(Int64)"),
                ("app_id", "Nullable(String)"),
                ("event_id", "Nullable(String)"),
                ("failed_at_us", "Int64"),
                ("failed_time", "DateTime"),
                ("payload", "String"),
                ("envelope", "String DEFAULT ''"),
            ]),
            engine: "ENGINE = MergeTree PARTITION BY toYYYYMM(failed_time) ORDER BY (failed_time, reason)",
        },
    ]
}

/// `CREATE TABLE IF NOT EXISTS` for `table` in `db`.
pub fn create_table(db: &str, table: &Table) -> String {
    let columns: Vec<String> = table.columns.iter().map(|(n, t)| format!("    `{n}` {t}")).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{}` (\n{}\n) {}",
        table.name,
        columns.join(",\n"),
        table.engine
    )
}

/// The views for the common "latest" reads.
pub fn views(db: &str) -> Vec<String> {
    vec![
        format!("CREATE VIEW IF NOT EXISTS `{db}`.`events_latest` AS SELECT * FROM `{db}`.`events` FINAL"),
        format!(
            "CREATE VIEW IF NOT EXISTS `{db}`.`activity_latest` AS SELECT * FROM `{db}`.`activity_tags` \
             ORDER BY tagged_at_us DESC LIMIT 1 BY event_id, model_version"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_column_per_signal_and_no_new_types() {
        let c = event_columns();
        assert_eq!(c.len(), catalog().len() + 27);
        assert_eq!(bare_type("DateTime DEFAULT now()"), "DateTime");
        assert!(c.iter().any(|(n, t)| n == "battery_level" && t == "Nullable(Float64)"));
        let sql: String = tables().iter().map(|t| create_table("context", t)).collect();
        for banned in ["LowCardinality", "Map(", "DateTime64", "JSON", "TTL"] {
            assert!(!sql.contains(banned), "{banned}");
        }
    }
}
