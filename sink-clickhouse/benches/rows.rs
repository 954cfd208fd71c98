//! The sink's CPU path per record: Confluent-framed Avro of a full event
//! (every signal, 2 s of 50 Hz motion) decoded and turned into a ClickHouse
//! row. Reported as rows per second on one core.
//!
//! The writer schema is the current one, as the registry client passes it
//! once it has seen the id (a pointer, so no schema comparison per record).
//! Beside it, in the same group: the generic `apache-avro` decoder reading
//! the same bytes into a value tree, what a consumer without the contract's
//! own decoder would do.

use context_schemas::sample::{self, SampleOptions};
use context_schemas::{wire, AvroRecord, ContextEvent};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sink_clickhouse::rows::EventRow;

fn bench(c: &mut Criterion) {
    let records: Vec<Vec<u8>> = (0..1000)
        .map(|i| sample::event(i, &SampleOptions::default()).to_wire(1).unwrap())
        .collect();
    let writer = ContextEvent::schema();
    let mut group = c.benchmark_group("sink_rows");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_and_convert_1000_events", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| {
                    let (_, body) = wire::unframe(r).unwrap();
                    let e = ContextEvent::decode_resolving(body, writer).unwrap();
                    EventRow::from_event(e).accel_x.len()
                })
                .sum::<usize>()
        })
    });
    let generic = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .build()
        .unwrap();
    group.bench_function("generic_apache_avro_decode_1000_events", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| {
                    let (_, mut body) = wire::unframe(r).unwrap();
                    match generic.read_value(&mut body).unwrap() {
                        apache_avro::types::Value::Record(fields) => fields.len(),
                        _ => 0,
                    }
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
