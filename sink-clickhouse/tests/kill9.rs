//! `kill -9` of the sink mid-stream loses nothing: offsets are committed only
//! after ClickHouse confirmed, so the restarted sink re-reads what was not
//! confirmed, and duplicates merge away by event_id.

mod common;

use std::time::Duration;

use common::{setup, spawn_sink};
use context_integration::unique;

#[tokio::test(flavor = "multi_thread")]
async fn kill_minus_9_mid_stream_then_restart_loses_nothing() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("sink_kill9"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = s.write_config(&dir);

    let mut sink = spawn_sink(&config, &dir.join("first.log"));
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

    let mut sink = spawn_sink(&config, &dir.join("second.log"));
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
