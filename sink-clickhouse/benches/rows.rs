//! The sink's CPU path per record: Confluent-framed Avro of a full event
//! (every signal, 2 s of 50 Hz motion) decoded against its writer schema and
//! turned into a ClickHouse row. Reported as rows per second on one core.

use context_schemas::sample::{self, SampleOptions};
use context_schemas::{wire, AvroRecord, ContextEvent};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sink_clickhouse::rows::EventRow;

fn bench(c: &mut Criterion) {
    let records: Vec<Vec<u8>> = (0..1000)
        .map(|i| sample::event(i, &SampleOptions::default()).to_wire(1).unwrap())
        .collect();
    let writer = ContextEvent::schema().clone();
    let mut group = c.benchmark_group("sink_rows");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_and_convert_1000_events", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| {
                    let (_, body) = wire::unframe(r).unwrap();
                    let e = ContextEvent::decode_resolving(body, &writer).unwrap();
                    EventRow::from_event(e).accel_x.len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
