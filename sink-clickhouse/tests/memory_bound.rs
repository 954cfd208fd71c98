//! The sink's memory stays under `Config::memory_bound`, that is
//! 3 × (`batch.max_bytes` plus 32 MiB fetched ahead) plus 100 MiB, while it
//! drains a backlog of heavy events (rows dominated by their motion arrays)
//! and light ones (rows dominated by their ~190 columns), each of which
//! decodes to a row larger than its record: the batch counts rows and
//! records, not records alone.

mod common;

use std::time::Duration;

use common::{setup, spawn_sink};
use context_integration::measure::memory_mib;
use context_integration::{producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::AvroRecord;
use rdkafka::producer::FutureRecord;

#[tokio::test(flavor = "multi_thread")]
async fn draining_a_heavy_backlog_stays_under_the_documented_bound() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("sink_memory"));
    std::fs::create_dir_all(&dir).unwrap();
    // Heavy events (10 s of 100 Hz motion: about 26 KB of Avro each, the
    // rows' arrays dominate) and light ones (no motion: about 2 KB, the
    // rows' structs of ~190 columns dominate).
    let heavy = SampleOptions {
        motion_seconds: 10.0,
        rate_hz: 100.0,
        ..SampleOptions::default()
    };
    let light = SampleOptions {
        motion_seconds: 0.0,
        ..SampleOptions::default()
    };
    let p = producer().unwrap();
    let (mut pending, mut bytes) = (Vec::new(), 0);
    let n = 4000 + 30_000;
    for i in 0..n {
        let e = sample::event(7_000_000 + i, if i < 4000 { &heavy } else { &light });
        let payload = e.to_wire(s.event_schema_id).unwrap();
        bytes += payload.len();
        let key = e.install_id.to_string();
        pending.push(
            p.send_result(FutureRecord::to(&s.events_topic).key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
        if pending.len() == 5000 {
            for f in pending.drain(..) {
                f.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    // Batches of at most 8 MiB: the backlog is ten times that.
    let config = s.write_config(&dir);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("max_rows = 100\n", "max_rows = 100000\nmax_bytes = 8388608\n"),
    )
    .unwrap();
    let mut settings = s.config();
    settings.batch.max_bytes = 8 << 20;
    let bound_mib = settings.memory_bound() as f64 / (1 << 20) as f64;
    assert!(
        bytes as f64 / (1 << 20) as f64 > 8.0 * 8.0,
        "a backlog of {bytes} bytes is too small"
    );

    let mut sink = spawn_sink(&config, &dir.join("sink.log"));
    let got = s.wait_for_events(n, Duration::from_secs(300)).await;
    let (_, peak_mib) = memory_mib(sink.id()).expect("the sink's /proc/<pid>/status");
    sink.kill().unwrap();
    sink.wait().unwrap();
    assert_eq!(got, n, "events missing; see {}", dir.display());
    println!(
        "backlog {:.0} MiB, sink peak RSS {peak_mib:.0} MiB, bound {bound_mib:.0} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    assert!(
        peak_mib <= bound_mib,
        "the sink's peak RSS {peak_mib:.0} MiB is above its documented bound {bound_mib:.0} MiB"
    );
    s.drop_database().await;
}
