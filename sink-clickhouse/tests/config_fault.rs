//! A configuration fault in ClickHouse (a dropped column, a dropped table) is
//! not a bad row: the sink stops inserting, reports not-ready, commits
//! nothing and dead-letters nothing until the fault is gone, then inserts
//! everything. Rows ClickHouse refuses one by one are dead-lettered with the
//! record's bytes and origin.

use context_runtime::config::ServiceConfig;
mod common;

use std::time::Duration;

use common::setup;
use context_integration::clickhouse_reader;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

async fn ready(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The events group's committed offsets, summed over the topic's partitions.
fn committed(group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = context_integration::base_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

async fn count(sql: &str) -> u64 {
    clickhouse_reader().query(sql).fetch_one::<u64>().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_column_or_table_pauses_the_sink_until_it_is_restored() {
    let s = setup().await;
    let db = s.database.clone();
    let settings = s.config().checked().unwrap();
    let running = sink_clickhouse::start(settings.clone(), None).await.unwrap();
    let group = format!("{}-events", s.group_prefix);
    let mut sent = s.produce_events(300, 100).await;
    assert_eq!(s.wait_for_events(100, Duration::from_secs(60)).await, 100);
    // The offsets of the first 100 are committed shortly after their insert.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while committed(&group, &s.events_topic) < 100 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed(&group, &s.events_topic), 100);

    for (fault, restore_by_migrate) in [
        (format!("ALTER TABLE `{db}`.events DROP COLUMN battery_level"), true),
        (format!("RENAME TABLE `{db}`.events TO `{db}`.events_away"), false),
    ] {
        clickhouse_reader().query(&fault).execute().await.unwrap();
        let before = committed(&group, &s.events_topic);
        sent.extend(s.produce_events(400 + sent.len() as u64, 200).await);
        // The sink sees the fault: not ready, nothing committed, nothing dead.
        let mut not_ready = false;
        for _ in 0..16 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            not_ready |= ready(running.admin_addr).await == 503;
        }
        assert!(not_ready, "/readyz stayed 200 during `{fault}`");
        assert_eq!(committed(&group, &s.events_topic), before, "committed during `{fault}`");
        assert_eq!(count(&format!("SELECT count() FROM `{db}`.dead_letters")).await, 0);

        if restore_by_migrate {
            sink_clickhouse::migrate::migrate(&settings.clickhouse(false), &db)
                .await
                .unwrap();
        } else {
            clickhouse_reader()
                .query(&format!("RENAME TABLE `{db}`.events_away TO `{db}`.events"))
                .execute()
                .await
                .unwrap();
        }
        let got = s.wait_for_events(sent.len() as u64, Duration::from_secs(120)).await;
        assert_eq!(
            got,
            sent.len() as u64,
            "everything is inserted once `{fault}` is undone"
        );
        assert_eq!(count(&format!("SELECT count() FROM `{db}`.dead_letters")).await, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ready(running.admin_addr).await != 200 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(ready(running.admin_addr).await, 200);
    }
    running.shutdown().await.unwrap();
    s.drop_database().await;
}
