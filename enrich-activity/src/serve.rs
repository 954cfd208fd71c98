//! `serve`: tags every motion window of `context.motion.v1` with the model
//! and writes an `ActivityTag` to `context.activity.v1`.
//!
//! Records are read in small batches; features and inference run off the
//! async reactor; the batch's tags are produced and every delivery report
//! awaited before the batch's offsets are committed (at least once; the
//! tags table deduplicates by `(event_id, model_version)`). A changed model
//! file is picked up between batches without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use context_schemas::{ActivityTag, AvroRecord, ClassProbability, MotionWindow};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schema_registry::RegistryClient;
use tokio::sync::watch;

use crate::features::FeatureSpec;
use crate::model::Model;

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub kafka_bootstrap: String,
    pub registry_url: String,
    pub motion_topic: String,
    pub activity_topic: String,
    pub group_id: String,
    pub model_path: PathBuf,
    pub max_batch: usize,
    pub session_timeout_ms: u64,
    /// /healthz, /readyz, /metrics.
    pub admin_listen: std::net::SocketAddr,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The tag of one window.
pub fn tag(model: &Model, spec: &FeatureSpec, w: &MotionWindow) -> ActivityTag {
    let features = spec.extract(&w.accelerometer, &w.gyroscope, w.sample_rate_hz);
    let p = model.probabilities(&features);
    let (activity, confidence) = model.predict(&features);
    ActivityTag {
        event_id: w.event_id,
        app_id: w.app_id.clone(),
        session_id: w.session_id,
        install_id: w.install_id,
        timestamp: w.timestamp,
        model_version: model.model_version.clone(),
        activity: activity.to_owned(),
        confidence,
        probabilities: model
            .labels
            .iter()
            .zip(p)
            .map(|(label, probability)| ClassProbability {
                label: label.clone(),
                probability,
            })
            .collect(),
        tagged_at: now_micros(),
    }
}

/// Decodes motion windows, tags them and produces the tags, waiting for
/// every acknowledgement. Shared by `serve` and `replay`.
pub struct Tagger {
    registry: RegistryClient,
    producer: FutureProducer,
    tag_schema_id: u32,
    activity_topic: String,
}

impl Tagger {
    pub async fn new(kafka_bootstrap: &str, registry_url: &str, activity_topic: &str) -> anyhow::Result<Self> {
        let registry = RegistryClient::new(registry_url)?;
        let tag_schema_id = registry
            .register(&format!("{activity_topic}-value"), ActivityTag::AVSC)
            .await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap)
            .set("acks", "all")
            .set("compression.type", "zstd")
            .create()?;
        Ok(Tagger {
            registry,
            producer,
            tag_schema_id,
            activity_topic: activity_topic.to_owned(),
        })
    }

    /// Tags every decodable window of `batch`; returns once Kafka acknowledged all tags.
    pub async fn process(&self, model: &Arc<Model>, batch: &[rdkafka::message::OwnedMessage]) -> anyhow::Result<usize> {
        let (registry, producer, tag_schema_id) = (&self.registry, &self.producer, self.tag_schema_id);
        // Decode, then features and inference off the reactor.
        let mut windows = Vec::with_capacity(batch.len());
        for msg in batch {
            match registry.decode::<MotionWindow>(msg.payload().unwrap_or_default()).await {
                Ok((_, w)) => windows.push(Some(w)),
                Err(e) => {
                    tracing::warn!(error = %e, offset = msg.offset(), "undecodable motion window skipped");
                    metrics::counter!("enrich_undecodable_total").increment(1);
                    windows.push(None);
                }
            }
        }
        let (m, started) = (model.clone(), std::time::Instant::now());
        let tags: Vec<Option<ActivityTag>> = tokio::task::spawn_blocking(move || {
            let spec = FeatureSpec::default();
            windows.iter().map(|w| w.as_ref().map(|w| tag(&m, &spec, w))).collect()
        })
        .await?;
        metrics::histogram!("enrich_inference_seconds").record(started.elapsed().as_secs_f64() / batch.len() as f64);
        let mut pending = Vec::new();
        for t in tags.iter().flatten() {
            let payload = t.to_wire(tag_schema_id)?;
            let key = t.install_id.to_string();
            let delivery = producer
                .send_result(FutureRecord::to(&self.activity_topic).key(&key).payload(&payload))
                .map_err(|(e, _)| anyhow::anyhow!("queueing a tag failed: {e}"))?;
            pending.push(delivery);
            metrics::counter!("enrich_windows_tagged_total", "activity" => t.activity.clone(), "model_version" => t.model_version.clone()).increment(1);
        }
        for p in pending {
            p.await?
                .map_err(|(e, _)| anyhow::anyhow!("producing a tag failed: {e}"))?;
        }
        Ok(tags.iter().flatten().count())
    }
}

/// Commits the offsets after the records of `batch`.
pub fn commit_after<C: Consumer>(consumer: &C, batch: &[rdkafka::message::OwnedMessage]) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for msg in batch {
        tpl.add_partition_offset(msg.topic(), msg.partition(), Offset::Offset(msg.offset() + 1))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// Runs until `shutdown` turns true. `/readyz` is 200 once the model is
/// loaded and the tag schema registered, 503 while a batch is failing.
pub async fn run(
    s: ServeSettings,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ready.clone();
    let admin = context_runtime::start_admin(s.admin_listen, metrics, move || {
        if flag.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(())
        } else {
            Err("starting, or the last batch failed".into())
        }
    })?;
    tracing::info!(admin = %admin.addr, "admin endpoints");
    let result = serve_loop(s, &ready, &mut shutdown).await;
    admin.stop().await;
    result
}

async fn serve_loop(
    s: ServeSettings,
    ready: &std::sync::atomic::AtomicBool,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let spec = FeatureSpec::default();
    let load = |path: &PathBuf| -> anyhow::Result<Model> {
        let text = std::fs::read_to_string(path)?;
        Model::from_json(&text, &spec).map_err(anyhow::Error::msg)
    };
    let mut model = Arc::new(load(&s.model_path)?);
    let mut model_mtime = modified(&s.model_path);
    tracing::info!(model_version = %model.model_version, "serving");
    let tagger = Tagger::new(&s.kafka_bootstrap, &s.registry_url, &s.activity_topic).await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka_bootstrap)
        .set("group.id", &s.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", s.session_timeout_ms.to_string())
        .create()?;
    consumer.subscribe(&[&s.motion_topic])?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        // Collect a batch: up to max_batch records or 200 ms after the first.
        let mut batch = Vec::new();
        let mut deadline = None;
        while batch.len() < s.max_batch {
            let wait = deadline.map_or(Duration::from_millis(500), |d: tokio::time::Instant| {
                d.saturating_duration_since(tokio::time::Instant::now())
            });
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                r = tokio::time::timeout(wait, consumer.recv()) => match r {
                    Err(_) => break,
                    Ok(Err(e)) => { tracing::warn!(error = %e, "consumer error"); break }
                    Ok(Ok(msg)) => {
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(200));
                        batch.push(msg.detach());
                    }
                }
            }
        }
        if batch.is_empty() {
            if modified(&s.model_path) != model_mtime {
                model_mtime = modified(&s.model_path);
                match load(&s.model_path) {
                    Ok(m) => {
                        tracing::info!(model_version = %m.model_version, "loaded a new model");
                        model = Arc::new(m);
                    }
                    Err(e) => tracing::error!(error = %e, "the new model file is invalid; keeping the current model"),
                }
            }
            continue;
        }
        let processed = tagger.process(&model, &batch).await;
        ready.store(processed.is_ok(), std::sync::atomic::Ordering::Relaxed);
        processed?;
        commit_after(&consumer, &batch)?;
    }
}
