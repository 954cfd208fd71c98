//! The ClickHouse DDL, generated from the signal catalogue. Valid on the
//! ClickHouse of the local stack (18.16) and on current releases: no
//! LowCardinality, Map, DateTime64, JSON, TTL or `IF NOT EXISTS` on columns.
//!
//! Query patterns (ReplacingMergeTree removes duplicates at merge time, so
//! reads that must see each event once use one of these):
//! - `SELECT … FROM context.events FINAL WHERE …` (or the view `events_latest`);
//! - `SELECT event_id, argMax(battery_level, received_at_us) FROM context.events GROUP BY event_id`;
//! - `SELECT … FROM context.activity_latest WHERE model_version = '…'`;
//! - `SELECT source, reason, uniqExact(<DEAD_LETTER_IDENTITY>) FROM context.dead_letters GROUP BY source, reason`
//!   (what `sink-clickhouse dead-letters list` counts).
//!
//! A table's layout (engine, partition key, sorting key) has a version. When
//! it changes, `migrate` converts an existing table of the older layout
//! (see [`crate::migrate`]).

use context_schemas::catalog::{catalog, SignalKind};

/// One table: its columns in order and its layout.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub columns: Vec<(String, String)>,
    pub layout: Layout,
}

/// How a table stores and merges its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// 1 for the first layout of a table; raised with every change of the
    /// engine or a key, and part of the name the older table is kept under
    /// when `migrate` converts it (`<name>_before_<version>`).
    pub version: u32,
    /// The engine with its parameters, such as `ReplacingMergeTree(tagged_at_us)`.
    pub engine: &'static str,
    /// The `PARTITION BY` expression; empty for none (one partition).
    pub partition_key: String,
    /// The `ORDER BY` expressions, as `system.tables.sorting_key` lists them:
    /// for a ReplacingMergeTree, what duplicates share.
    pub sorting_key: String,
}

impl Layout {
    /// The engine's name without its parameters, as `system.tables.engine` shows it.
    pub fn engine_name(&self) -> &str {
        self.engine.split('(').next().unwrap_or(self.engine).trim()
    }

    /// The `ENGINE = … [PARTITION BY …] ORDER BY (…)` clause.
    pub fn clause(&self) -> String {
        let partition = if self.partition_key.is_empty() {
            String::new()
        } else {
            format!(" PARTITION BY {}", self.partition_key)
        };
        format!("ENGINE = {}{partition} ORDER BY ({})", self.engine, self.sorting_key)
    }

    /// Whether a table that `system.tables` describes with `engine`,
    /// `partition_key` and `sorting_key` has this layout. Spaces, backticks
    /// and the spelling of "no partition key" (empty or `tuple()`) do not count.
    pub fn matches(&self, engine: &str, partition_key: &str, sorting_key: &str) -> bool {
        engine.trim() == self.engine_name()
            && normalized(partition_key) == normalized(&self.partition_key)
            && normalized(sorting_key) == normalized(&self.sorting_key)
    }
}

/// A key expression without spaces and backticks; `tuple()` (no key) as empty.
fn normalized(key: &str) -> String {
    let s: String = key.chars().filter(|c| !c.is_whitespace() && *c != '`').collect();
    if s == "tuple()" {
        String::new()
    } else {
        s
    }
}

/// What identifies one dead letter, the same in every retry of it: who gave
/// up, why, on which record (topic, partition, offset for a record read from
/// Kafka; app and event id for a gateway reject, which has no offset), and
/// its bytes (two events of one batch without an id differ only there).
/// Nullable columns cannot be in a sorting key on ClickHouse 18.16, so they
/// are given as `ifNull(…)`: a letter's identity never is NULL. The sorting
/// key of `dead_letters`, and what `dead-letters list` counts distinct.
pub const DEAD_LETTER_IDENTITY: &str = "source, reason, ifNull(source_topic, ''), ifNull(source_partition, -1), \
     ifNull(source_offset, -1), ifNull(app_id, ''), ifNull(event_id, ''), cityHash64(payload)";

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

/// Every table of the sink. A ReplacingMergeTree removes duplicates only
/// within one partition, so each table is partitioned by something every
/// duplicate of a row shares:
/// - `events` by `client_time` (device time, the same in every retry);
/// - `activity_tags` by `model_version`: a tag carries no device time, and
///   its `timestamp` is the skew-corrected time, which differs between the
///   gateway attempts that brought its event (so does `tagged_at`). The
///   model version is the same for every duplicate, there are few of them,
///   and a retired model's tags go with `DROP PARTITION '<version>'`;
/// - `dead_letters` not at all: a retry is dead-lettered again at another
///   time, and nothing else in a letter is a time.
pub fn tables() -> Vec<Table> {
    vec![
        Table {
            name: "events",
            columns: event_columns(),
            layout: Layout {
                version: 1,
                engine: "ReplacingMergeTree",
                partition_key: "toYYYYMM(client_time)".into(),
                sorting_key: "app_id, event_id".into(),
            },
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
            // Version 1: PARTITION BY toYYYYMM(event_time) ORDER BY (event_id,
            // model_version): duplicates whose corrected times fell in two
            // months never met, and two apps' events of one id merged.
            layout: Layout {
                version: 2,
                engine: "ReplacingMergeTree(tagged_at_us)",
                partition_key: "model_version".into(),
                sorting_key: "app_id, event_id, model_version".into(),
            },
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
                // `dl.truncated`: the original length of a letter kept as a
                // stub of its first bytes (0: whole); never sent again.
                ("truncated", "UInt64 DEFAULT 0"),
                // `dl.target_topic`: where an output Kafka refused was going
                // (redrive sends it there); empty otherwise.
                ("target_topic", "String DEFAULT ''"),
                // The record's Kafka key: the install it belongs to, what
                // `forget` erases by (empty for letters stored before it).
                ("install_id", "String DEFAULT ''"),
            ]),
            // Version 1: MergeTree PARTITION BY toYYYYMM(failed_time) ORDER BY
            // (failed_time, reason): every retry of a letter was another row.
            // The newest retry of a letter is the one kept.
            layout: Layout {
                version: 2,
                engine: "ReplacingMergeTree(failed_at_us)",
                partition_key: String::new(),
                sorting_key: DEAD_LETTER_IDENTITY.into(),
            },
        },
        // What every flush covered: the offsets of one partition whose rows
        // and dead letters are stored (`sink-clickhouse reconcile`). A range
        // stored again after a crash before its commit merges away.
        Table {
            name: "sink_ledger",
            columns: cols(&[
                ("group_id", "String"),
                ("topic", "String"),
                ("partition", "Int32"),
                ("first_offset", "Int64"),
                ("next_offset", "Int64"),
                ("rows_inserted", "UInt64"),
                ("rows_dead_lettered", "UInt64"),
                ("inserted_at_us", "Int64"),
                ("inserted_time", "DateTime"),
            ]),
            layout: Layout {
                version: 1,
                engine: "ReplacingMergeTree(inserted_at_us)",
                partition_key: "toYYYYMM(inserted_time)".into(),
                sorting_key: "topic, partition, first_offset, next_offset".into(),
            },
        },
        // What `forget` erased: one row per request once its mutations were
        // done (`sink-clickhouse forget status`). A request erased again
        // (another sink replica, a restart) merges away.
        Table {
            name: "forget_log",
            columns: cols(&[
                ("request_id", "String"),
                ("app_id", "String"),
                ("install_id", "String"),
                ("requested_at_us", "Int64"),
                ("requested_by", "String"),
                ("events_rows", "UInt64"),
                ("activity_rows", "UInt64"),
                ("dead_letter_rows", "UInt64"),
                ("done_at_us", "Int64"),
                ("done_time", "DateTime"),
            ]),
            layout: Layout {
                version: 1,
                engine: "ReplacingMergeTree(done_at_us)",
                partition_key: String::new(),
                sorting_key: "app_id, install_id, request_id".into(),
            },
        },
    ]
}

/// `CREATE TABLE IF NOT EXISTS` for `table` in `db`.
pub fn create_table(db: &str, table: &Table) -> String {
    create_table_as(db, table.name, &table.columns, &table.layout)
}

/// `CREATE TABLE IF NOT EXISTS` of `columns` with `layout`, named `name`
/// (a table's DDL under another name, with more columns: a migration's copy).
pub fn create_table_as(db: &str, name: &str, columns: &[(String, String)], layout: &Layout) -> String {
    let columns: Vec<String> = columns.iter().map(|(n, t)| format!("    `{n}` {t}")).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{name}` (\n{}\n) {}",
        columns.join(",\n"),
        layout.clause()
    )
}

/// One view: its name, its `CREATE VIEW`, and a piece of its query that
/// only the current definition has (an older view without it is replaced).
#[derive(Debug, Clone)]
pub struct View {
    pub name: &'static str,
    pub create: String,
    pub marker: &'static str,
}

impl View {
    /// Whether `create_table_query` (as `system.tables` shows the view) is
    /// the current definition. Spaces and backticks do not count.
    pub fn is_current(&self, create_table_query: &str) -> bool {
        let squeeze = |s: &str| -> String { s.chars().filter(|c| !c.is_whitespace() && *c != '`').collect() };
        squeeze(create_table_query).contains(&squeeze(self.marker))
    }
}

/// The views for the common "latest" reads.
pub fn views(db: &str) -> Vec<View> {
    vec![
        View {
            name: "events_latest",
            create: format!("CREATE VIEW IF NOT EXISTS `{db}`.`events_latest` AS SELECT * FROM `{db}`.`events` FINAL"),
            marker: "FINAL",
        },
        // Until activity_tags layout 2: LIMIT 1 BY event_id, model_version,
        // which hid one of two apps' events of the same id.
        View {
            name: "activity_latest",
            create: format!(
                "CREATE VIEW IF NOT EXISTS `{db}`.`activity_latest` AS SELECT * FROM `{db}`.`activity_tags` \
                 ORDER BY tagged_at_us DESC LIMIT 1 BY app_id, event_id, model_version"
            ),
            marker: "LIMIT 1 BY app_id, event_id, model_version",
        },
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

    #[test]
    fn layouts_are_recognised_as_system_tables_shows_them() {
        let t = tables();
        let tags = &t.iter().find(|t| t.name == "activity_tags").unwrap().layout;
        // ClickHouse 18.16's system.tables for a table of this DDL.
        assert!(tags.matches("ReplacingMergeTree", "model_version", "app_id, event_id, model_version"));
        assert!(tags
            .clause()
            .contains("PARTITION BY model_version ORDER BY (app_id, event_id, model_version)"));
        // The layout before version 2.
        assert!(!tags.matches("ReplacingMergeTree", "toYYYYMM(event_time)", "event_id, model_version"));
        let dead = &t.iter().find(|t| t.name == "dead_letters").unwrap().layout;
        assert!(dead.matches("ReplacingMergeTree", "", DEAD_LETTER_IDENTITY));
        assert!(dead.matches(
            "ReplacingMergeTree",
            "tuple()",
            &DEAD_LETTER_IDENTITY.replace(", ", ",")
        ));
        assert!(!dead.matches("MergeTree", "toYYYYMM(failed_time)", "failed_time, reason"));
        assert!(!dead.clause().contains("PARTITION BY"));
        // No Nullable column is in a sorting key (18.16 refuses them).
        for table in &t {
            for (name, ty) in &table.columns {
                if ty.starts_with("Nullable") {
                    let bare = table
                        .layout
                        .sorting_key
                        .split(',')
                        .map(str::trim)
                        .any(|k| k == name.as_str());
                    assert!(!bare, "{}.{name} is Nullable and in the sorting key", table.name);
                }
            }
        }
    }

    #[test]
    fn views_recognise_their_current_definition() {
        let v = views("context");
        let latest = v.iter().find(|v| v.name == "activity_latest").unwrap();
        // As ClickHouse 18.16 shows the views in system.tables.create_table_query.
        assert!(latest.is_current(
            "CREATE VIEW context.activity_latest ( event_id UUID) AS SELECT * FROM context.activity_tags  \
             ORDER BY tagged_at_us DESC LIMIT 1 BY app_id, event_id, model_version"
        ));
        assert!(!latest.is_current(
            "CREATE VIEW context.activity_latest ( event_id UUID) AS SELECT * FROM context.activity_tags  \
             ORDER BY tagged_at_us DESC LIMIT 1 BY event_id, model_version"
        ));
    }
}
