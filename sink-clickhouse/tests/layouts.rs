//! The tables' layouts against the stack's ClickHouse: duplicates of a tag
//! or a dead letter merge whatever attempt they came from, `migrate`
//! converts tables of the older layout without losing a row (and does
//! nothing the second time), and `dead-letters list` counts a retried
//! letter once.

use context_integration::{clickhouse_reader, clickhouse_settings, clickhouse_writer, unique};
use context_schemas::{ActivityTag, ClassProbability, DeadLetter};
use sink_clickhouse::redrive::Selection;
use sink_clickhouse::rows::{ActivityRow, DeadLetterRow};

/// The DDL of layout 1 (before duplicates of other attempts merged), as
/// `sink-clickhouse migrate` created it until then (with the columns added
/// since, `truncated` and `target_topic`, so that this build's rows can be
/// written into it).
const OLD_ACTIVITY_TAGS: &str = "CREATE TABLE `{db}`.`activity_tags` (
    `event_id` UUID,
    `model_version` String,
    `app_id` String,
    `session_id` UUID,
    `install_id` UUID,
    `timestamp_us` Int64,
    `event_time` DateTime,
    `activity` String,
    `confidence` Float32,
    `labels` Array(String),
    `probabilities` Array(Float32),
    `tagged_at_us` Int64,
    `tagged_time` DateTime,
    `unknown_reason` String
) ENGINE = ReplacingMergeTree(tagged_at_us) PARTITION BY toYYYYMM(event_time) ORDER BY (event_id, model_version)";

const OLD_DEAD_LETTERS: &str = "CREATE TABLE `{db}`.`dead_letters` (
    `source` String,
    `reason` String,
    `detail` String,
    `source_topic` Nullable(String),
    `source_partition` Nullable(Int32),
    `source_offset` Nullable(Int64),
    `app_id` Nullable(String),
    `event_id` Nullable(String),
    `failed_at_us` Int64,
    `failed_time` DateTime,
    `payload` String,
    `envelope` String DEFAULT '',
    `truncated` UInt64 DEFAULT 0,
    `target_topic` String DEFAULT ''
) ENGINE = MergeTree PARTITION BY toYYYYMM(failed_time) ORDER BY (failed_time, reason)";

const OLD_ACTIVITY_LATEST: &str = "CREATE VIEW `{db}`.`activity_latest` AS SELECT * FROM `{db}`.`activity_tags` \
     ORDER BY tagged_at_us DESC LIMIT 1 BY event_id, model_version";

/// 2025-01-31T23:59:59Z and, six seconds later, 2025-02-01: the corrected
/// times of one event brought by two gateway attempts across a month's end.
const JAN_31_LAST_SECOND_US: i64 = 1_738_367_999_000_000;
const FEB_1_US: i64 = 1_738_368_005_000_000;

const EVENT: &str = "0b6f3c1e-7d2a-4c59-9e1b-5a8f0c2d4e61";
const MODEL: &str = "act-layouts-test";

fn tag(app: &str, corrected_time: i64, tagged_at: i64, activity: &str) -> ActivityRow {
    ActivityRow::from_tag(&ActivityTag {
        event_id: uuid::Uuid::parse_str(EVENT).unwrap(),
        app_id: app.into(),
        session_id: uuid::Uuid::parse_str("6d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6").unwrap(),
        install_id: uuid::Uuid::parse_str("1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d").unwrap(),
        timestamp: corrected_time,
        model_version: MODEL.into(),
        activity: activity.into(),
        confidence: 0.9,
        probabilities: vec![ClassProbability {
            label: activity.into(),
            probability: 0.9,
        }],
        tagged_at,
        reason: None,
    })
}

/// A gateway reject (no topic, partition or offset) as the sink stores it.
fn gateway_letter(reason: &str, event_id: Option<&str>, payload: &str, failed_at: i64) -> DeadLetterRow {
    DeadLetterRow::from_dead_letter(DeadLetter {
        source: "ingest-gateway".into(),
        reason: reason.into(),
        detail: format!("attempt at {failed_at}"),
        source_topic: None,
        source_partition: None,
        source_offset: None,
        app_id: Some("app-layouts".into()),
        event_id: event_id.map(str::to_owned),
        failed_at,
        payload: payload.as_bytes().to_vec(),
    })
    .with_envelope("{\"batch_id\":\"b\"}".into())
}

/// A record read from Kafka and given up on, as the sink stores it.
fn kafka_letter(offset: i64, failed_at: i64) -> DeadLetterRow {
    DeadLetterRow::from_dead_letter(DeadLetter {
        source: "stream-router".into(),
        reason: "projection_failed".into(),
        detail: "a rule's projection failed".into(),
        source_topic: Some("context.events.v1".into()),
        source_partition: Some(0),
        source_offset: Some(offset),
        app_id: None,
        event_id: None,
        failed_at,
        payload: vec![0, 0, 0, 0, 1, 42],
    })
}

async fn execute(sql: &str) {
    clickhouse_reader()
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(sql: &str) -> u64 {
    clickhouse_reader()
        .query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Each row in its own insert, so each in its own part: only a merge can
/// bring them together.
async fn insert_tags(db: &str, rows: &[ActivityRow]) {
    for row in rows {
        let mut insert = clickhouse_writer()
            .with_database(db)
            .insert::<ActivityRow>("activity_tags")
            .await
            .unwrap();
        insert.write(row).await.unwrap();
        insert.end().await.unwrap();
    }
}

async fn insert_letters(db: &str, rows: &[DeadLetterRow]) {
    // The rows are of today's shape: the column the old layout lacks
    // (`install_id`, added later) is added first, as `migrate` adds a new
    // column to any table, so that the conversion is what is tested.
    let has = count(&format!(
        "SELECT count() FROM system.columns WHERE database = '{db}' AND table = 'dead_letters' AND name = 'install_id'"
    ))
    .await;
    if has == 0 {
        execute(&format!(
            "ALTER TABLE `{db}`.`dead_letters` ADD COLUMN `install_id` String DEFAULT ''"
        ))
        .await;
    }
    for row in rows {
        let mut insert = clickhouse_writer()
            .with_database(db)
            .insert::<DeadLetterRow>("dead_letters")
            .await
            .unwrap();
        insert.write(row).await.unwrap();
        insert.end().await.unwrap();
    }
}

async fn layout(db: &str, table: &str) -> (String, String, String) {
    clickhouse_reader()
        .query("SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_one()
        .await
        .unwrap()
}

async fn migrate(db: &str) -> sink_clickhouse::migrate::Report {
    let report = sink_clickhouse::migrate::migrate(&clickhouse_reader(), db)
        .await
        .unwrap();
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_of_the_old_layout_are_converted_without_losing_a_row_once() {
    let db = unique("ctx_layouts");
    execute(&format!("CREATE DATABASE `{db}`")).await;
    for ddl in [OLD_ACTIVITY_TAGS, OLD_DEAD_LETTERS, OLD_ACTIVITY_LATEST] {
        execute(&ddl.replace("{db}", &db)).await;
    }
    // The old layout would merge app-b's tag into app-a's (same event id)
    // in the background: no merges there, so that what it held is known.
    execute(&format!("SYSTEM STOP MERGES `{db}`.`activity_tags`")).await;
    execute(&format!("SYSTEM STOP MERGES `{db}`.`dead_letters`")).await;
    // Two attempts of one event across a month's end: in two partitions of
    // the old layout, so they never merged; and another app's event with
    // the same id, which the old key merged with them.
    insert_tags(
        &db,
        &[
            tag("app-a", JAN_31_LAST_SECOND_US, FEB_1_US + 1_000_000, "walking"),
            tag("app-a", FEB_1_US, FEB_1_US + 2_000_000, "walking"),
            tag("app-b", FEB_1_US, FEB_1_US + 3_000_000, "running"),
        ],
    )
    .await;
    // A gateway reject retried across the month's end, and a record the
    // router gave up on, read twice.
    insert_letters(
        &db,
        &[
            gateway_letter("invalid_motion", Some(EVENT), "{\"event_id\":1}", JAN_31_LAST_SECOND_US),
            gateway_letter("invalid_motion", Some(EVENT), "{\"event_id\":1}", FEB_1_US),
            kafka_letter(7, JAN_31_LAST_SECOND_US),
            kafka_letter(7, FEB_1_US),
        ],
    )
    .await;

    let report = migrate(&db).await;
    let mut kept = report.kept.clone();
    kept.sort();
    assert_eq!(
        kept,
        vec![
            (format!("{db}.activity_tags_before_2"), 3),
            (format!("{db}.dead_letters_before_2"), 4)
        ],
        "{:?}",
        report.applied
    );
    // The old tables are kept whole.
    assert_eq!(
        count(&format!("SELECT count() FROM `{db}`.activity_tags_before_2")).await,
        3
    );
    assert_eq!(
        count(&format!("SELECT count() FROM `{db}`.dead_letters_before_2")).await,
        4
    );
    // The new layouts.
    let (engine, partition, sorting) = layout(&db, "activity_tags").await;
    assert_eq!(engine, "ReplacingMergeTree");
    assert_eq!(partition, "model_version");
    assert_eq!(sorting.replace(' ', ""), "app_id,event_id,model_version");
    let (engine, partition, sorting) = layout(&db, "dead_letters").await;
    assert_eq!(engine, "ReplacingMergeTree");
    assert!(partition.is_empty() || partition == "tuple()", "{partition}");
    assert!(sorting.contains("ifNull(source_offset, -1)"), "{sorting}");

    // Every row is there; once merged, one per tag and per letter.
    execute(&format!("OPTIMIZE TABLE `{db}`.activity_tags FINAL")).await;
    execute(&format!("OPTIMIZE TABLE `{db}`.dead_letters FINAL")).await;
    let tags: Vec<(String, i64, String)> = clickhouse_reader()
        .query(&format!(
            "SELECT app_id, tagged_at_us, activity FROM `{db}`.activity_tags ORDER BY app_id"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        tags,
        vec![
            ("app-a".to_owned(), FEB_1_US + 2_000_000, "walking".to_owned()),
            ("app-b".to_owned(), FEB_1_US + 3_000_000, "running".to_owned()),
        ]
    );
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.dead_letters")).await, 2);
    // The newest retry is the one kept.
    assert_eq!(
        count(&format!(
            "SELECT count() FROM `{db}`.dead_letters WHERE failed_at_us = {FEB_1_US}"
        ))
        .await,
        2
    );
    // The view was replaced: it shows both apps' tags.
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.activity_latest")).await, 2);

    // A second run changes nothing.
    let again = migrate(&db).await;
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    assert!(again.kept.is_empty(), "{:?}", again.kept);
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.activity_tags")).await, 2);

    execute(&format!("DROP DATABASE IF EXISTS `{db}`")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_merge_whatever_their_corrected_time_and_apps_stay_apart() {
    let db = unique("ctx_tags");
    let created = migrate(&db).await;
    assert!(created.kept.is_empty());
    // The same window and model from two gateway attempts whose corrected
    // times lie in two months, and another app's event of the same id.
    execute(&format!("SYSTEM STOP MERGES `{db}`.`activity_tags`")).await;
    insert_tags(
        &db,
        &[
            tag("app-a", JAN_31_LAST_SECOND_US, FEB_1_US + 1_000_000, "walking"),
            tag("app-a", FEB_1_US, FEB_1_US + 2_000_000, "walking"),
            tag("app-b", FEB_1_US, FEB_1_US + 3_000_000, "running"),
        ],
    )
    .await;
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.activity_tags")).await, 3);
    execute(&format!("SYSTEM START MERGES `{db}`.`activity_tags`")).await;
    execute(&format!("OPTIMIZE TABLE `{db}`.activity_tags FINAL")).await;
    let tags: Vec<(String, i64)> = clickhouse_reader()
        .query(&format!(
            "SELECT app_id, tagged_at_us FROM `{db}`.activity_tags ORDER BY app_id"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        tags,
        vec![
            ("app-a".to_owned(), FEB_1_US + 2_000_000),
            ("app-b".to_owned(), FEB_1_US + 3_000_000)
        ],
        "the first pair merges (newest tag kept), the other app's tag stays"
    );
    let latest: Vec<(String, String)> = clickhouse_reader()
        .query(&format!(
            "SELECT app_id, activity FROM `{db}`.activity_latest WHERE model_version = '{MODEL}' ORDER BY app_id"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        latest,
        vec![
            ("app-a".to_owned(), "walking".to_owned()),
            ("app-b".to_owned(), "running".to_owned())
        ]
    );
    execute(&format!("DROP DATABASE IF EXISTS `{db}`")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_retried_twice_are_listed_once() {
    let db = unique("ctx_letters");
    migrate(&db).await;
    // Retries stay separate rows until a merge: none happens until the end.
    execute(&format!("SYSTEM STOP MERGES `{db}`.`dead_letters`")).await;
    let other_event = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    insert_letters(
        &db,
        &[
            // One reject, dead-lettered again by the client's retry.
            gateway_letter("invalid_motion", Some(EVENT), "{\"event_id\":1}", JAN_31_LAST_SECOND_US),
            gateway_letter("invalid_motion", Some(EVENT), "{\"event_id\":1}", FEB_1_US),
            // Another event of the same batch.
            gateway_letter("invalid_motion", Some(other_event), "{\"event_id\":2}", FEB_1_US),
            // Two events without an id: only their bytes tell them apart.
            gateway_letter("malformed_event", None, "{\"no id\":1}", FEB_1_US),
            gateway_letter("malformed_event", None, "{\"no id\":2}", FEB_1_US),
            // A record the router gave up on, read again after a restart,
            // and the next record.
            kafka_letter(7, JAN_31_LAST_SECOND_US),
            kafka_letter(7, FEB_1_US),
            kafka_letter(8, FEB_1_US),
        ],
    )
    .await;
    let config = sink_clickhouse::Config {
        database: db.clone(),
        ..clickhouse_settings()
    };
    let listed = |groups: Vec<sink_clickhouse::redrive::Group>| -> Vec<(String, String, u64)> {
        let mut out: Vec<(String, String, u64)> = groups.into_iter().map(|g| (g.source, g.reason, g.count)).collect();
        out.sort();
        out
    };
    let want = vec![
        ("ingest-gateway".to_owned(), "invalid_motion".to_owned(), 2),
        ("ingest-gateway".to_owned(), "malformed_event".to_owned(), 2),
        ("stream-router".to_owned(), "projection_failed".to_owned(), 2),
    ];
    // Before any merge: 8 rows, 6 letters.
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.dead_letters")).await, 8);
    let before = sink_clickhouse::redrive::list(&config, &Selection::default())
        .await
        .unwrap();
    assert_eq!(listed(before), want);
    // After the merge the table holds each letter once, and the list is the same.
    execute(&format!("SYSTEM START MERGES `{db}`.`dead_letters`")).await;
    execute(&format!("OPTIMIZE TABLE `{db}`.dead_letters FINAL")).await;
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.dead_letters")).await, 6);
    let after = sink_clickhouse::redrive::list(&config, &Selection::default())
        .await
        .unwrap();
    assert_eq!(listed(after), want);
    execute(&format!("DROP DATABASE IF EXISTS `{db}`")).await;
}

/// A conversion a crash or a slow insert left unfinished is finished by the
/// next run: rows that reached only the old table (the sink inserting while
/// the swap ran, a run killed before its reconciliation) are copied over,
/// a table missing after a rename cut in two (ClickHouse 18.16 renames one
/// table after the other) is taken back from the checked copy, and a
/// second migrate finds the first one's lock instead of racing it.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_conversion_is_finished_and_a_concurrent_one_refused() {
    let db = unique("ctx_resume");
    execute(&format!("CREATE DATABASE `{db}`")).await;
    for ddl in [OLD_ACTIVITY_TAGS, OLD_DEAD_LETTERS, OLD_ACTIVITY_LATEST] {
        execute(&ddl.replace("{db}", &db)).await;
    }
    insert_tags(&db, &[tag("app-a", FEB_1_US, FEB_1_US + 1_000_000, "walking")]).await;
    migrate(&db).await;
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.activity_tags")).await, 1);

    // A tag that reached only the old table after the swap.
    let late = tag("app-late", FEB_1_US, FEB_1_US + 5_000_000, "sitting");
    let mut insert = clickhouse_writer()
        .with_database(&db)
        .insert::<ActivityRow>("activity_tags_before_2")
        .await
        .unwrap();
    insert.write(&late).await.unwrap();
    insert.end().await.unwrap();
    let finished = migrate(&db).await;
    assert_eq!(
        count(&format!(
            "SELECT count() FROM `{db}`.activity_tags WHERE app_id = 'app-late'"
        ))
        .await,
        1,
        "{:?}",
        finished.applied
    );
    assert_eq!(
        finished.kept.len(),
        1,
        "the old table is reported again: {:?}",
        finished.kept
    );
    // Nothing more to copy the next time.
    let again = migrate(&db).await;
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.activity_tags")).await, 2);

    // A rename cut in two: the checked copy under its staging name, no table.
    execute(&format!(
        "RENAME TABLE `{db}`.activity_tags TO `{db}`.activity_tags_migrating_2"
    ))
    .await;
    let taken_back = migrate(&db).await;
    assert!(
        taken_back
            .applied
            .iter()
            .any(|s| s.contains("activity_tags_migrating_2")),
        "{:?}",
        taken_back.applied
    );
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.activity_tags")).await, 2);

    // A second migrate while one converts: a fresh lock stops it, a stale
    // one (its run gone for minutes) is taken over.
    execute(&format!("DROP TABLE `{db}`.dead_letters")).await;
    execute(&format!("DROP TABLE `{db}`.dead_letters_before_2")).await;
    execute(&OLD_DEAD_LETTERS.replace("{db}", &db)).await;
    insert_letters(&db, &[kafka_letter(3, FEB_1_US)]).await;
    execute(&format!(
        "CREATE TABLE `{db}`.dead_letters_migrate_lock (taken DateTime) ENGINE = Log"
    ))
    .await;
    execute(&format!("INSERT INTO `{db}`.dead_letters_migrate_lock SELECT now()")).await;
    let refused = sink_clickhouse::migrate::migrate(&clickhouse_reader(), &db)
        .await
        .unwrap();
    assert!(
        refused.conflicts.iter().any(|c| c.contains("another migrate")),
        "{:?}",
        refused.conflicts
    );
    let (engine, _, _) = layout(&db, "dead_letters").await;
    assert_eq!(engine, "MergeTree", "nothing converted under another run's lock");
    execute(&format!("TRUNCATE TABLE `{db}`.dead_letters_migrate_lock")).await;
    execute(&format!(
        "INSERT INTO `{db}`.dead_letters_migrate_lock SELECT now() - 600"
    ))
    .await;
    let converted = migrate(&db).await;
    assert!(
        converted.applied.iter().any(|s| s.contains("a lock left")),
        "{:?}",
        converted.applied
    );
    let (engine, _, _) = layout(&db, "dead_letters").await;
    assert_eq!(engine, "ReplacingMergeTree");
    assert_eq!(count(&format!("SELECT count() FROM `{db}`.dead_letters")).await, 1);
    assert_eq!(
        count(&format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'dead_letters_migrate_lock'"
        ))
        .await,
        0
    );

    execute(&format!("DROP DATABASE IF EXISTS `{db}`")).await;
}
