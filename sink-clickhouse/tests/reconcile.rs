//! `sink-clickhouse reconcile` against the real broker and ClickHouse: a sink
//! that stored everything leaves no gap; offsets committed past without an
//! insert (made on purpose, as a bug or an operator's reset would) are a gap
//! that the command reports, exits 1 on, and `--repair` stores.

mod common;

use std::time::Duration;

use common::setup;
use context_runtime::config::ServiceConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sink_clickhouse::reconcile::{reconcile, GapKind, Request};

/// Commits the group's offsets at the end of every partition of `topic`, as
/// `kafka-consumer-groups --reset-offsets --to-latest` would.
fn commit_to_end(s: &common::Setup, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = context_integration::kafka_settings()
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut skipped = 0;
    for p in 0..2 {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        let committed = c
            .committed_offsets(
                {
                    let mut t = TopicPartitionList::new();
                    t.add_partition(topic, p);
                    t
                },
                Duration::from_secs(10),
            )
            .unwrap()
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0);
        skipped += high - committed;
        tpl.add_partition_offset(topic, p, Offset::Offset(high)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
    let _ = s;
    skipped
}

fn run_cli(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sink-clickhouse"))
        .arg("reconcile")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_no_gap_after_a_clean_run_and_repairs_one_made_on_purpose() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(context_integration::unique("reconcile"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = s.write_config(&dir);
    let group = format!("{}-events", s.group_prefix);

    // A clean run: every committed offset is in the ledger.
    let sink = sink_clickhouse::start(s.config().checked().unwrap(), None)
        .await
        .unwrap();
    s.produce_events(70, 300).await;
    assert_eq!(s.wait_for_events(300, Duration::from_secs(60)).await, 300);
    sink.shutdown().await.unwrap();
    let (code, text) = run_cli(&config, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no gap"), "{text}");
    let c = s.config().checked().unwrap();
    let req = Request {
        topic: s.events_topic.clone(),
        group: group.clone(),
        since_ms: None,
        repair: false,
    };
    let clean = reconcile(&c, &req).await.unwrap();
    assert_eq!(
        clean.partitions.iter().map(|p| p.rows_inserted).sum::<u64>(),
        300,
        "{}",
        clean.text()
    );
    assert!(
        clean.partitions.iter().all(|p| p.gaps.is_empty() && p.pending() == 0),
        "{}",
        clean.text()
    );

    // 120 more events, and the group's offsets moved past them without an
    // insert: what a lost batch looks like.
    s.produce_events(71, 120).await;
    let skipped = commit_to_end(&s, &group, &s.events_topic);
    assert_eq!(skipped, 120);
    let report = reconcile(&c, &req).await.unwrap();
    assert_eq!(report.losses(), 120, "{}", report.text());
    assert!(report
        .partitions
        .iter()
        .flat_map(|p| &p.gaps)
        .all(|g| matches!(g.kind, GapKind::Loss { .. })));
    let (code, text) = run_cli(&config, &[]);
    assert_eq!(code, 1, "a gap exits 1: {text}");
    assert!(text.contains("GAP: ") && text.contains("records lost"), "{text}");

    // --repair stores them; reconcile then finds no gap.
    let (code, text) = run_cli(&config, &["--repair"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("gap repaired"), "{text}");
    assert_eq!(s.wait_for_events(420, Duration::from_secs(30)).await, 420);
    let (code, text) = run_cli(&config, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no gap"), "{text}");
    // Repairing again stores nothing twice.
    let (code, _) = run_cli(&config, &["--repair"]);
    assert_eq!(code, 0);
    assert_eq!(s.distinct_events().await, 420);
    s.drop_database().await;
}
