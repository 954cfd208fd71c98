//! Features and inference per motion window (2 s at 50 Hz, low-passed and
//! resampled to the model's 25 Hz), reported as windows per second on one core.

use context_schemas::sample::{self, SampleOptions};
use context_schemas::MotionWindow;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enrich_activity::dataset::parse_ts;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::train;
use enrich_activity::serve::tag;

fn bench(c: &mut Criterion) {
    let spec = FeatureSpec::default();
    let (model, _) = train(
        &parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap(),
        &spec,
        1,
        5,
    )
    .unwrap();
    let windows: Vec<MotionWindow> = (0..200)
        .map(|i| MotionWindow::from_event(&sample::event(i, &SampleOptions::default())).unwrap())
        .collect();
    let mut g = c.benchmark_group("enrich");
    g.throughput(Throughput::Elements(windows.len() as u64));
    g.bench_function("features_only_200_windows", |b| {
        b.iter(|| {
            windows
                .iter()
                .map(|w| spec.extract(&w.accelerometer, &w.gyroscope, w.sample_rate_hz).len())
                .sum::<usize>()
        })
    });
    g.bench_function("features_and_inference_200_windows", |b| {
        b.iter(|| {
            windows
                .iter()
                .map(|w| tag(&model, &spec, w, Some(0.0)).confidence)
                .sum::<f32>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
