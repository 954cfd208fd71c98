//! The sink on the cluster stack (`scripts/stack up --cluster`: ClickHouse
//! cluster `context` of two shards × two replicas on 8123–8126, ZooKeeper,
//! three brokers). Ignored in a plain run; scripts/test runs them with
//! `--ignored` once it has switched the stack to the cluster.
//!
//! - `migrate --cluster` twice changes nothing; a column the schema has and
//!   the cluster lacks appears on all four servers, local and Distributed.
//! - Each row lands on its install's shard (the one ClickHouse's own
//!   `halfMD5` key picks), a retried batch's duplicates with it, where they
//!   merge; with one replica of each shard killed, inserts go to the other
//!   replica, and the killed ones catch up once restarted.

mod common;

use std::time::Duration;

use context_integration::{create_topic_with, repo_root, unique};
use context_runtime::config::ServiceConfig;
use context_schemas::{AvroRecord, ContextEvent};
use schema_registry::RegistryClient;

const SHARDS: &str = "http://127.0.0.1:8123,http://127.0.0.1:8124;http://127.0.0.1:8125,http://127.0.0.1:8126";
const SERVERS: [&str; 4] = [
    "http://127.0.0.1:8123",
    "http://127.0.0.1:8124",
    "http://127.0.0.1:8125",
    "http://127.0.0.1:8126",
];

/// One test at a time: one of them stops servers the other needs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn at(url: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
        // ClickHouse 18.16 and the crate's LZ4 responses: no rows.
        .with_compression(clickhouse::Compression::None)
}

async fn scalar(url: &str, sql: &str) -> u64 {
    at(url)
        .query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{url}: {sql}: {e}"))
}

async fn cluster_setup() -> common::Setup {
    let s = common::Setup {
        database: unique("ctx_cl"),
        events_topic: unique("it_cl_events"),
        activity_topic: unique("it_cl_activity"),
        deadletter_topic: unique("it_cl_dead"),
        group_prefix: unique("it_cl"),
        event_schema_id: 0,
        registry: RegistryClient::new(&common::registry_url()).unwrap(),
    };
    // One replica for these test topics: min.insync.replicas must match.
    for t in [&s.events_topic, &s.activity_topic, &s.deadletter_topic] {
        create_topic_with(t, 2, &[("min.insync.replicas", "1")]).await.unwrap();
    }
    let id = s
        .registry
        .register(&format!("{}-value", s.events_topic), ContextEvent::AVSC)
        .await
        .unwrap();
    common::Setup {
        event_schema_id: id,
        ..s
    }
}

fn cluster_config(s: &common::Setup) -> sink_clickhouse::Config {
    let mut c = s.config();
    c.clickhouse_shards = SHARDS.into();
    c
}

async fn migrate(c: &sink_clickhouse::Config) -> sink_clickhouse::migrate::Report {
    let each: Vec<clickhouse::Client> = c.shards().iter().flatten().map(|u| c.clickhouse_at(u, false)).collect();
    sink_clickhouse::cluster::migrate(&c.clickhouse(false), &each, &c.database, "context", "default", "")
        .await
        .unwrap()
}

async fn drop_everywhere(db: &str) {
    let _ = at(SERVERS[0])
        .query(&format!("DROP DATABASE IF EXISTS `{db}` ON CLUSTER context"))
        .execute()
        .await;
}

fn stack(args: &[&str]) {
    let status = std::process::Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .env("STACK_NO_BUILD", "1")
        .status()
        .unwrap();
    assert!(status.success(), "scripts/stack {args:?}");
}

fn kill9(component: &str) {
    let pid = std::fs::read_to_string(repo_root().join(format!(".stack/cluster/{component}/pid"))).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the cluster stack (scripts/stack up --cluster); scripts/test runs it"]
async fn migrate_on_the_cluster_is_idempotent_and_adds_columns_on_every_server() {
    let _serial = SERIAL.lock().await;
    let s = cluster_setup().await;
    let c = cluster_config(&s).checked().unwrap();
    let db = &c.database;
    let first = migrate(&c).await;
    assert!(first.conflicts.is_empty(), "{:?}", first.conflicts);
    assert!(first.applied.iter().any(|sql| sql.contains("ON CLUSTER")));
    let second = migrate(&c).await;
    assert!(second.applied.is_empty(), "a second run changed: {:?}", second.applied);
    for url in SERVERS {
        let engines = at(url)
            .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
            .bind(db.as_str())
            .fetch_all::<(String, String)>()
            .await
            .unwrap();
        let engine = |n: &str| engines.iter().find(|(t, _)| t == n).map(|(_, e)| e.clone());
        assert_eq!(engine("events").as_deref(), Some("Distributed"), "{url}: {engines:?}");
        assert_eq!(
            engine("events_local").as_deref(),
            Some("ReplicatedReplacingMergeTree"),
            "{url}"
        );
        assert_eq!(
            engine("activity_tags_local").as_deref(),
            Some("ReplicatedReplacingMergeTree"),
            "{url}"
        );
        assert_eq!(
            engine("dead_letters_local").as_deref(),
            Some("ReplicatedReplacingMergeTree"),
            "{url}"
        );
        assert_eq!(
            engine("sink_ledger").as_deref(),
            Some("ReplicatedReplacingMergeTree"),
            "{url}"
        );
        assert_eq!(engine("events_latest").as_deref(), Some("View"), "{url}");
    }
    // A signal the cluster does not have yet (as after a contract change).
    at(SERVERS[0])
        .query(&format!(
            "ALTER TABLE `{db}`.events_local ON CLUSTER context DROP COLUMN battery_level"
        ))
        .execute()
        .await
        .unwrap();
    for url in SERVERS {
        at(url)
            .query(&format!("ALTER TABLE `{db}`.events DROP COLUMN battery_level"))
            .execute()
            .await
            .unwrap();
    }
    let has = |url: &'static str, table: &'static str| {
        let db = db.clone();
        async move {
            scalar(
                url,
                &format!(
                    "SELECT count() FROM system.columns WHERE database = '{db}' AND table = '{table}' AND name = 'battery_level'"
                ),
            )
            .await
        }
    };
    // The replicas of a shard apply the drop through ZooKeeper.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for url in SERVERS {
        assert_eq!(has(url, "events_local").await, 0, "{url}");
    }
    let third = migrate(&c).await;
    assert!(
        third
            .applied
            .iter()
            .any(|sql| sql.contains("ADD COLUMN `battery_level`")),
        "{:?}",
        third.applied
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for url in SERVERS {
        assert_eq!(has(url, "events_local").await, 1, "{url}: local");
        assert_eq!(has(url, "events").await, 1, "{url}: Distributed");
        assert_eq!(has(url, "events_latest").await, 1, "{url}: view");
    }
    assert!(migrate(&c).await.applied.is_empty());
    drop_everywhere(db).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the cluster stack (scripts/stack up --cluster); scripts/test runs it"]
async fn rows_land_on_their_install_shard_duplicates_merge_and_a_replica_down_is_skipped() {
    let _serial = SERIAL.lock().await;
    let s = cluster_setup().await;
    let c = cluster_config(&s).checked().unwrap();
    let db = c.database.clone();
    assert!(migrate(&c).await.conflicts.is_empty());
    // No background merge until the duplicates are counted.
    let merges = |verb: &'static str| {
        let db = db.clone();
        async move {
            for url in SERVERS {
                at(url)
                    .query(&format!("SYSTEM {verb} MERGES `{db}`.events_local"))
                    .execute()
                    .await
                    .unwrap();
            }
        }
    };
    merges("STOP").await;
    let running = sink_clickhouse::start(c.clone(), None).await.unwrap();
    let sent = s.produce_events(1, 300).await;
    // A retried batch: the same 100 events again.
    let p = context_integration::producer().unwrap();
    for e in &sent[..100] {
        let payload = e.to_wire(s.event_schema_id).unwrap();
        let key = e.install_id.to_string();
        p.send(
            rdkafka::producer::FutureRecord::to(&s.events_topic)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let distinct = format!("SELECT uniqExact(event_id) FROM `{db}`.events");
    let rows = format!("SELECT count() FROM `{db}`.events");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while scalar(SERVERS[3], &rows).await < 400 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(scalar(SERVERS[3], &distinct).await, 300);
    assert_eq!(
        scalar(SERVERS[3], &rows).await,
        400,
        "the duplicates are stored, not merged yet"
    );
    // Each shard holds only the installs ClickHouse's own key gives it.
    for (shard, url) in [(0, SERVERS[0]), (1, SERVERS[2])] {
        let elsewhere = scalar(
            url,
            &format!("SELECT count() FROM `{db}`.events_local WHERE halfMD5(toString(install_id)) % 2 != {shard}"),
        )
        .await;
        assert_eq!(elsewhere, 0, "shard {}: rows of another shard's installs", shard + 1);
        assert!(scalar(url, &format!("SELECT count() FROM `{db}`.events_local")).await > 0);
    }
    // The duplicates sit beside their originals, so they merge.
    merges("START").await;
    for url in [SERVERS[0], SERVERS[2]] {
        at(url)
            .query(&format!("OPTIMIZE TABLE `{db}`.events_local FINAL"))
            .execute()
            .await
            .unwrap();
    }
    let merged = scalar(SERVERS[0], &format!("SELECT count() FROM `{db}`.events_local")).await
        + scalar(SERVERS[2], &format!("SELECT count() FROM `{db}`.events_local")).await;
    assert_eq!(merged, 300, "after OPTIMIZE FINAL each event is one row");

    // One replica of each shard killed: inserts go to the other one.
    kill9("clickhouse-1");
    kill9("clickhouse-3");
    let more = s.produce_events(2, 200).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while scalar(SERVERS[3], &distinct).await < 500 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stored = scalar(SERVERS[3], &distinct).await;
    stack(&["up", "--cluster", "clickhouse"]);
    assert_eq!(stored, 500, "events sent while a replica of each shard was down");
    // The restarted replicas fetch what their shard took meanwhile.
    let count_on = |url: &'static str| {
        let db = db.clone();
        async move { scalar(url, &format!("SELECT uniqExact(event_id) FROM `{db}`.events_local")).await }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b, c3, d) = (
            count_on(SERVERS[0]).await,
            count_on(SERVERS[1]).await,
            count_on(SERVERS[2]).await,
            count_on(SERVERS[3]).await,
        );
        if (a == b && c3 == d && a + c3 == 500) || tokio::time::Instant::now() > deadline {
            assert_eq!((a, c3), (b, d), "the restarted replicas caught up");
            assert_eq!(a + c3, 500);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(more.len(), 200);
    running.shutdown().await.unwrap();
    drop_everywhere(&db).await;
}
