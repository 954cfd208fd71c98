//! The official clickhouse crate against the ClickHouse of the local stack:
//! create a table, insert, read back.

use clickhouse::Row;
use context_integration::{clickhouse_reader, clickhouse_writer, unique};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Sample {
    event_id: String,
    app_id: String,
    battery_level: Option<f64>,
    steps: u64,
    accel_x: Vec<f32>,
    captured_at: u32,
}

#[tokio::test]
async fn insert_and_read_back() -> anyhow::Result<()> {
    let client = clickhouse_reader();
    client
        .query("CREATE DATABASE IF NOT EXISTS context_it")
        .execute()
        .await?;
    let client = client.with_database("context_it");
    let writer = clickhouse_writer().with_database("context_it");
    let table = unique("samples");
    client
        .query(&format!(
            "CREATE TABLE {table} (event_id String, app_id String, battery_level Nullable(Float64), \
             steps UInt64, accel_x Array(Float32), captured_at DateTime) ENGINE = MergeTree ORDER BY event_id"
        ))
        .execute()
        .await?;

    let rows: Vec<Sample> = (0..1000u32)
        .map(|i| Sample {
            event_id: format!("{i:06}"),
            app_id: format!("app-{}", i % 3),
            battery_level: (i % 5 != 0).then(|| f64::from(i) / 1000.0),
            steps: u64::from(i) * 7,
            accel_x: (0..(i % 9)).map(|k| k as f32 * 0.5 - 1.0).collect(),
            captured_at: 1_760_000_000 + i,
        })
        .collect();
    let mut insert = writer.insert::<Sample>(&table).await?;
    for r in &rows {
        insert.write(r).await?;
    }
    insert.end().await?;

    let back = client
        .query(&format!("SELECT ?fields FROM {table} ORDER BY event_id"))
        .fetch_all::<Sample>()
        .await?;
    assert_eq!(back, rows);
    let (count, apps) = client
        .query(&format!("SELECT count(), uniqExact(app_id) FROM {table}"))
        .fetch_one::<(u64, u64)>()
        .await?;
    assert_eq!((count, apps), (1000, 3));
    client.query(&format!("DROP TABLE {table}")).execute().await?;
    Ok(())
}
