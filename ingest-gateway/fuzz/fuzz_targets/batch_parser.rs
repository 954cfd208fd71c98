//! Everything the gateway does with client bytes before Kafka: decompression
//! (the first byte picks identity, gzip or zstd), the envelope, every event's
//! validation and the Avro encoding. It must never panic, whatever the bytes,
//! and whenever the one-pass reader accepts a body the generic path must
//! give the very same batch.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use ingest_gateway::batch::{decompress, Encoding};
use ingest_gateway::pipeline::{prepare, prepare_generic, prepare_onepass, Request};
use ingest_gateway::validate::Validator;
use ingest_gateway::Limits;
use libfuzzer_sys::fuzz_target;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 4 << 20,
            max_events: 100,
            max_samples: 2000,
            max_record_bytes: 1 << 20,
        };
        Validator::new(limits, Duration::from_secs(3600), Duration::from_secs(86400 * 3650))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let encoding = match selector % 3 {
        0 => Encoding::Identity,
        1 => Encoding::Gzip,
        _ => Encoding::Zstd,
    };
    let now = 1_760_000_000_000_000;
    if let Ok(batch) = prepare(body, encoding, "fuzz-app", now, None, validator(), 1) {
        assert_eq!(batch.accepted.len() + batch.rejected.len(), batch.events);
    }
    let Ok(json) = decompress(body, encoding, validator().limits.max_decompressed_bytes) else { return };
    let request = Request {
        app_id: "fuzz-app",
        received_at: now,
        sent_at: None,
        schema_id: 1,
    };
    if let Some(fast) = prepare_onepass(&json, &request, validator()) {
        let generic = prepare_generic(&json, &request, validator())
            .expect("the generic path accepts what the one-pass reader accepts");
        assert_eq!(format!("{fast:?}"), format!("{generic:?}"));
    }
});
