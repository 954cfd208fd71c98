//! Prints a realistic batch body, as the iOS SDK would send it, to stdout:
//!
//! ```text
//! cargo run -p ingest-gateway --example sample_batch -- [EVENTS] [SEED] > batch.json
//! curl -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
//!      --data-binary @batch.json http://127.0.0.1:8080/v1/batch
//! ```

use context_schemas::sample::{self, SampleOptions};
use ingest_gateway::sdk;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    let list = (0..events)
        .map(|i| {
            sample::event(
                seed * 1_000_000 + i,
                &SampleOptions {
                    timestamp: now,
                    ..SampleOptions::default()
                },
            )
        })
        .collect();
    println!("{}", sdk::batch_json(&sdk::as_session(list, now), now));
}
