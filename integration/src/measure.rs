//! What the load tools measure besides time: a process's CPU and memory
//! (from `/proc`), and the plain rdkafka producer loop that is the ceiling
//! the gateway is compared with.

use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; getconf says
    // otherwise if not.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory now and at its peak, in MiB, from `/proc/<pid>/status`.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets a process's peak resident memory (`VmHWM`) to its current size,
/// so that [`memory_mib`]'s peak covers what follows (Linux `clear_refs`;
/// nothing happens without the right to write it).
pub fn reset_peak_memory(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Produces every `(key, payload)` to `topic` and waits for every delivery;
/// returns the time from the first send to the last acknowledgement. A full
/// local queue waits for the oldest delivery, as a producer under load must.
pub async fn produce_all(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) -> Result<Duration> {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(records.len());
    for (key, payload) in records {
        loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    // The oldest delivery frees room; waiting for all of
                    // them would empty the pipeline.
                    match pending.pop_front() {
                        Some(d) => {
                            d.await?.map_err(|(e, _)| e)?;
                        }
                        None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(started.elapsed())
}
