//! `kill -9` of the sink mid-stream loses nothing: offsets are committed only
//! after ClickHouse confirmed, so the restarted sink re-reads what was not
//! confirmed, and duplicates merge away by event_id.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::setup;
use context_integration::unique;

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sink-clickhouse"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start sink-clickhouse")
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_minus_9_mid_stream_then_restart_loses_nothing() {
    let s = setup().await;
    let c = s.config();
    let dir = std::env::temp_dir().join(unique("sink_kill9"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "admin_listen = \"127.0.0.1:0\"\nkafka_bootstrap = \"{}\"\nregistry_url = \"{}\"\ndatabase = \"{}\"\n\
             events_topic = \"{}\"\nactivity_topic = \"{}\"\ndeadletter_topic = \"{}\"\ngroup_prefix = \"{}\"\n\
             session_timeout = \"6s\"\nmax_poll_interval = \"10s\"\nmax_backoff = \"2s\"\n\
             [batch]\nmax_rows = 100\nmax_age = \"300ms\"\n",
            c.kafka_bootstrap,
            c.registry_url,
            c.database,
            c.events_topic,
            c.activity_topic,
            c.deadletter_topic,
            c.group_prefix
        ),
    )
    .unwrap();

    let mut sink = spawn(&config, &dir.join("first.log"));
    let mut sent = s.produce_events(10, 1500).await;
    // Kill it while it is inserting: some rows are in, not all.
    let mut seen = 0;
    for _ in 0..240 {
        seen = s.distinct_events().await;
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sink.kill().unwrap(); // SIGKILL
    sink.wait().unwrap();
    assert!(
        seen > 0,
        "the sink never inserted; see {}",
        dir.join("first.log").display()
    );
    let at_kill = s.distinct_events().await;
    sent.extend(s.produce_events(11, 1500).await);
    assert!(
        at_kill < sent.len() as u64,
        "killed after everything was in: the test proves nothing"
    );

    let mut sink = spawn(&config, &dir.join("second.log"));
    let got = s.wait_for_events(sent.len() as u64, Duration::from_secs(120)).await;
    sink.kill().unwrap();
    sink.wait().unwrap();
    assert_eq!(
        got,
        sent.len() as u64,
        "events missing after the restart; see {}",
        dir.display()
    );
    println!("rows at kill: {at_kill} of {}", sent.len());
    s.drop_database().await;
}
