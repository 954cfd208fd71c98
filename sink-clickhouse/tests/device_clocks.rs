//! Device clocks decide the partition (`toYYYYMM(client_time)`): one batch
//! whose events claim 150 different months is inserted whole, in inserts
//! that each span at most `MAX_PARTITIONS_PER_INSERT` partitions (current
//! ClickHouse refuses more than 100 per insert with code 252, for good).

use context_runtime::config::ServiceConfig;
mod common;

use std::time::Duration;

use common::setup;
use context_integration::clickhouse_reader;
use context_schemas::sample::{self, SampleOptions};
use context_schemas::AvroRecord;

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spanning_150_device_clock_months_is_inserted_whole() {
    let s = setup().await;
    let month = 31 * 86_400 * 1_000_000i64;
    let base = 946_684_800_000_000i64; // 2000-01-01
    for i in 0..150i64 {
        let mut e = sample::event(70_000 + i as u64, &SampleOptions::default());
        e.client_timestamp = base + i * month;
        e.timestamp = e.client_timestamp;
        s.produce_raw(&s.events_topic, &e.to_wire(s.event_schema_id).unwrap(), &[])
            .await;
    }
    let mut config = s.config();
    config.batch.max_rows = 1000; // all 150 in one batch
    config.batch.max_age = Duration::from_secs(2);
    let running = sink_clickhouse::start(config.checked().unwrap(), None).await.unwrap();
    assert_eq!(s.wait_for_events(150, Duration::from_secs(120)).await, 150);
    let months: u64 = clickhouse_reader()
        .query(&format!(
            "SELECT uniqExact(toYYYYMM(client_time)) FROM `{}`.events",
            s.database
        ))
        .fetch_one()
        .await
        .unwrap();
    assert!(months >= 140, "the events span {months} months");
    running.shutdown().await.unwrap();
    s.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_device_clocks_share_one_sentinel_partition_and_keep_their_times() {
    let s = setup().await;
    let absurd = [
        -86_400_000_000i64,      // 1969-12-31
        0,                       // a reset clock
        315_532_800_000_000,     // 1980
        5_000_000_000_000_000,   // 2128
        253_402_300_799_000_000, // 9999-12-31
    ];
    for (i, t) in absurd.iter().enumerate() {
        let mut e = sample::event(71_000 + i as u64, &SampleOptions::default());
        e.client_timestamp = *t;
        e.time_suspect = true;
        s.produce_raw(&s.events_topic, &e.to_wire(s.event_schema_id).unwrap(), &[])
            .await;
    }
    let running = sink_clickhouse::start(s.config().checked().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        s.wait_for_events(absurd.len() as u64, Duration::from_secs(120)).await,
        absurd.len() as u64
    );
    let rows: Vec<(u32, i64, u8)> = clickhouse_reader()
        .query(&format!(
            "SELECT toYYYYMM(client_time), client_timestamp_us, time_suspect FROM `{}`.events ORDER BY client_timestamp_us",
            s.database
        ))
        .fetch_all()
        .await
        .unwrap();
    let mut want = absurd.to_vec();
    want.sort();
    assert_eq!(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        want,
        "raw device times kept"
    );
    assert!(rows.iter().all(|r| r.0 == 197001 && r.2 == 1), "{rows:?}");
    running.shutdown().await.unwrap();
    s.drop_database().await;
}
