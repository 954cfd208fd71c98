//! The registry-client decision, measured: decoding the same Confluent-framed
//! `ContextEvent`s with `schema_registry_converter`'s `AvroDecoder` (a
//! generic value tree per record) and with `RegistryClient::decode` (the
//! converter for the registry calls, our typed reader for the bytes). Both
//! cache the schema by id; the first call of each is outside the timing.
//!
//! Needs a registry (`scripts/stack up`):
//!   cargo run --release -p schema-registry --example decoder_speed [-- N]

use std::time::Instant;

use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use schema_registry::RegistryClient;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let url = std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let ours = RegistryClient::new(&url).expect("registry client");
    let subject = format!("bench-decoder-{}-value", std::process::id());
    let id = ours
        .register(&subject, ContextEvent::AVSC)
        .await
        .expect("register (is the stack up?)");
    let records: Vec<Vec<u8>> = (0..200)
        .map(|i| sample::event(i, &SampleOptions::default()).to_wire(id).unwrap())
        .collect();
    let bytes: usize = records.iter().map(Vec::len).sum::<usize>() / records.len();

    let converter = AvroDecoder::new(SrSettings::new(url.clone()));
    converter.decode(Some(&records[0])).await.expect("converter decode");
    let started = Instant::now();
    for i in 0..n {
        let decoded = converter.decode(Some(&records[i % records.len()])).await.unwrap();
        std::hint::black_box(ContextEvent::from_value(decoded.value).unwrap());
    }
    let theirs = n as f64 / started.elapsed().as_secs_f64();

    ours.decode::<ContextEvent>(&records[0]).await.expect("our decode");
    let started = Instant::now();
    for i in 0..n {
        std::hint::black_box(ours.decode::<ContextEvent>(&records[i % records.len()]).await.unwrap());
    }
    let typed = n as f64 / started.elapsed().as_secs_f64();
    println!("{n} ContextEvent records of {bytes} bytes, one core:");
    println!("  schema_registry_converter AvroDecoder + from_value: {theirs:>9.0} records/s");
    println!("  RegistryClient::decode (typed fast reader):         {typed:>9.0} records/s");
    println!("  ratio: {:.1}x", typed / theirs);
}
