//! `serve`: tags every motion window of `context.motion.v1` with the model
//! and writes an `ActivityTag` to `context.activity.v1`.
//!
//! Records are read in small batches through the shared transactional
//! pipeline (`context_runtime::pipeline`); features and inference run off the
//! async reactor; a batch's tags (and the dead letters of windows that cannot
//! be decoded) are committed with its offsets in one Kafka transaction, so a
//! `read_committed` reader sees each tag exactly once (the tags table also
//! deduplicates by `(event_id, model_version)`). A changed model file is
//! picked up between batches without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use context_runtime::kafka::{Defaults, KafkaSettings};
use context_runtime::pipeline::{drive, DriveOptions, Output, Pipeline, PipelineSettings, Stage};
use context_runtime::registry::RegistrySettings;
use context_runtime::shutdown::Shutdown;
use context_schemas::{ActivityTag, AvroRecord, ClassProbability, MotionWindow};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry::RegistryClient;

use crate::config::Config;
use crate::features::FeatureSpec;
use crate::model::Model;
use context_runtime::clock::now_micros;

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The activity of a window the model cannot vouch for.
pub const UNKNOWN: &str = "unknown";

/// Below this probability a window is tagged [`UNKNOWN`] (the threshold
/// `train` stores in a model unless told otherwise).
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;

/// Sample rates a window may have (Hz); outside, it is not featurized.
pub const SAMPLE_RATE_HZ: std::ops::RangeInclusive<f64> = 1.0..=1000.0;
/// Fewest samples per sensor a window needs.
pub const MIN_SAMPLES: usize = 4;
/// Most values resampling may make per axis (10 Hz for 24 hours): a bound on
/// the memory a single window can take, whatever its rate and length claim.
pub const MAX_RESAMPLED: f64 = 864_000.0;

/// Why `w` cannot be turned into features, if it cannot: [`unfit`].
pub fn unfeaturizable(w: &MotionWindow, spec: &FeatureSpec) -> Option<&'static str> {
    unfit(&w.accelerometer, &w.gyroscope, w.sample_rate_hz, spec)
}

/// Why a window cannot be turned into features, if it cannot: a rate
/// outside [`SAMPLE_RATE_HZ`], axes of different lengths, fewer than
/// [`MIN_SAMPLES`] samples, no gyroscope (devices without one), shorter than
/// the model's `min_seconds` (too little of a gait cycle to tell),
/// non-finite values, or a resampled length over [`MAX_RESAMPLED`]. Such
/// windows are tagged `unknown`.
pub fn unfit(
    accelerometer: &context_schemas::Axes3,
    gyroscope: &context_schemas::Axes3,
    rate_hz: f64,
    spec: &FeatureSpec,
) -> Option<&'static str> {
    if !(rate_hz.is_finite() && SAMPLE_RATE_HZ.contains(&rate_hz)) {
        return Some("sample_rate_out_of_range");
    }
    let (Some(a), Some(g)) = (accelerometer.len(), gyroscope.len()) else {
        return Some("axes_of_different_lengths");
    };
    if g == 0 {
        return Some("no_gyroscope");
    }
    if a.min(g) < MIN_SAMPLES {
        return Some("too_few_samples");
    }
    // A window's length is its samples over its rate: 100 samples at 50 Hz
    // are the SDK's 2 s window.
    if a.min(g) as f64 / rate_hz < spec.min_seconds {
        return Some("too_short");
    }
    if (a.max(g) - 1) as f64 / rate_hz * spec.rate_hz > MAX_RESAMPLED {
        return Some("window_too_long");
    }
    if [accelerometer, gyroscope]
        .iter()
        .flat_map(|a| [&a.x, &a.y, &a.z])
        .any(|v| v.iter().any(|x| !x.is_finite()))
    {
        return Some("non_finite_samples");
    }
    None
}

/// The tag of one window. A window that cannot be featurized
/// ([`unfeaturizable`]), whose probabilities are not a valid distribution,
/// whose features are unlike the model's training windows (its gate), or
/// whose best class is below `min_confidence` (the model's own when
/// `None`) is tagged [`UNKNOWN`] with the reason: never a NaN, never a
/// fabricated class.
pub fn tag(model: &Model, spec: &FeatureSpec, w: &MotionWindow, min_confidence: Option<f32>) -> ActivityTag {
    let verdict = match unfeaturizable(w, spec) {
        None => model.verdict(
            &spec.extract(&w.accelerometer, &w.gyroscope, w.sample_rate_hz),
            min_confidence,
        ),
        Some(why) => {
            metrics::counter!("enrich_windows_unfeaturizable_total", "why" => why).increment(1);
            tracing::debug!(event_id = %w.event_id, why, "window cannot be featurized: unknown");
            crate::model::Verdict {
                class: None,
                confidence: 0.0,
                reason: Some(why),
                probabilities: vec![0.0; model.labels.len()],
            }
        }
    };
    if let Some(why) = verdict.reason {
        metrics::counter!("enrich_windows_unknown_total", "why" => why).increment(1);
    }
    ActivityTag {
        event_id: w.event_id,
        app_id: w.app_id.clone(),
        session_id: w.session_id,
        install_id: w.install_id,
        timestamp: w.timestamp,
        model_version: model.model_version.clone(),
        activity: verdict
            .class
            .map_or_else(|| UNKNOWN.to_owned(), |c| model.labels[c].clone()),
        confidence: verdict.confidence,
        probabilities: model
            .labels
            .iter()
            .zip(verdict.probabilities)
            .map(|(label, probability)| ClassProbability {
                label: label.clone(),
                probability,
            })
            .collect(),
        tagged_at: now_micros(),
        reason: verdict.reason.map(str::to_owned),
    }
}

/// What tagging a batch (or a whole replay) did with its windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Tags written, `unknown` ones included.
    pub tagged: usize,
    /// `unknown` tags by reason.
    pub unknown: std::collections::BTreeMap<String, usize>,
    /// Windows that could not be decoded (dead-lettered by `serve`, skipped
    /// by `replay`), by error.
    pub undecodable: std::collections::BTreeMap<String, usize>,
    /// Windows that made feature extraction or the model fail (a panic):
    /// dead-lettered by `serve`, counted and skipped by `replay`.
    pub tagging_failed: usize,
    /// Windows of forgotten installs, captured up to their request: not tagged.
    pub forgotten: usize,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.tagged += other.tagged;
        for (k, v) in &other.unknown {
            *self.unknown.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.undecodable {
            *self.undecodable.entry(k.clone()).or_default() += v;
        }
        self.tagging_failed += other.tagging_failed;
        self.forgotten += other.forgotten;
    }

    /// `tagged N windows (K unknown: reason n, ...); M undecodable (error n, ...)`.
    pub fn summary(&self) -> String {
        let list = |m: &std::collections::BTreeMap<String, usize>| {
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        let unknown: usize = self.unknown.values().sum();
        let undecodable: usize = self.undecodable.values().sum();
        let mut out = format!("tagged {} windows", self.tagged);
        if unknown > 0 {
            out.push_str(&format!(" ({unknown} unknown: {})", list(&self.unknown)));
        }
        if undecodable > 0 {
            out.push_str(&format!("; {undecodable} undecodable ({})", list(&self.undecodable)));
        }
        if self.tagging_failed > 0 {
            out.push_str(&format!(
                "; {} could not be tagged (the model or feature extraction failed on them)",
                self.tagging_failed
            ));
        }
        if self.forgotten > 0 {
            out.push_str(&format!(
                "; {} of forgotten installs dropped (the forget ledger)",
                self.forgotten
            ));
        }
        out
    }
}

/// Decodes motion windows, tags them and produces the tags, waiting for
/// every acknowledgement. Shared by `serve` and `replay`.
pub struct Tagger {
    registry: RegistryClient,
    producer: FutureProducer,
    tag_schema_id: u32,
    activity_topic: String,
    /// Below it a window is tagged `unknown`; `None`: the model's own.
    pub min_confidence: Option<f32>,
    /// Windows of installs forgotten here, up to their request, are dropped.
    pub forgotten: Arc<context_runtime::forget::Forgotten>,
}

/// Why a batch could not be tagged.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// The registry did not answer: the same batch will work later.
    #[error("the registry is unavailable: {0}")]
    RegistryUnavailable(String),
    /// Kafka did not take a tag: the same batch will work later.
    #[error("producing a tag failed: {0}")]
    Produce(rdkafka::error::KafkaError),
    /// Feature extraction or inference failed (a panic): retrying the same
    /// windows would fail the same way.
    #[error("tagging failed: {0}")]
    Inference(String),
    /// A tag could not be encoded: a bug, the same every time.
    #[error("encoding a tag failed: {0}")]
    Encode(#[from] context_schemas::SchemaError),
}

impl TagError {
    /// Whether trying the same batch again can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TagError::RegistryUnavailable(_) | TagError::Produce(_))
    }
}

impl Tagger {
    pub async fn new(kafka: &KafkaSettings, registry: &RegistrySettings, activity_topic: &str) -> anyhow::Result<Self> {
        let registry = RegistryClient::connect(registry)?;
        let tag_schema_id = registry
            .register(&format!("{activity_topic}-value"), ActivityTag::AVSC)
            .await?;
        let producer: FutureProducer = kafka
            .client()
            .set("acks", "all")
            .set_default("compression.type", "zstd")
            .create()?;
        Ok(Tagger {
            registry,
            producer,
            tag_schema_id,
            activity_topic: activity_topic.to_owned(),
            min_confidence: None,
            forgotten: context_runtime::forget::Forgotten::empty(),
        })
    }

    /// The tags of every decodable window of `batch` as records to produce,
    /// and dead letters (to `deadletter_topic`; skipped when it is empty) for
    /// the windows that cannot be decoded. A registry outage is an error: the
    /// batch is tried again.
    pub async fn outputs(
        &self,
        model: &Arc<Model>,
        batch: &[rdkafka::message::OwnedMessage],
        deadletter_topic: &str,
    ) -> Result<(Vec<Output>, Counts), TagError> {
        let registry = &self.registry;
        let mut counts = Counts::default();
        // Decode, then features and inference off the reactor.
        let mut windows = Vec::with_capacity(batch.len());
        let mut outputs = Vec::with_capacity(batch.len());
        for msg in batch {
            match registry.decode::<MotionWindow>(msg.payload().unwrap_or_default()).await {
                Ok((_, w)) if self.forgotten.drops(Some(&w.app_id), &w.install_id, Some(w.timestamp)) => {
                    metrics::counter!("enrich_forgotten_dropped_total").increment(1);
                    counts.forgotten += 1;
                    windows.push(None);
                }
                Ok((_, w)) => windows.push(Some(w)),
                Err(e) if e.is_retryable() => return Err(TagError::RegistryUnavailable(e.to_string())),
                Err(e) if deadletter_topic.is_empty() => {
                    metrics::counter!("enrich_undecodable_total").increment(1);
                    *counts.undecodable.entry(e.reason().into()).or_default() += 1;
                    tracing::warn!(error = %e, offset = msg.offset(), "undecodable motion window skipped");
                    windows.push(None);
                }
                Err(e) => {
                    metrics::counter!("enrich_undecodable_total").increment(1);
                    *counts.undecodable.entry(e.reason().into()).or_default() += 1;
                    outputs.push(context_runtime::deadletter::record(
                        msg,
                        deadletter_topic,
                        "enrich-activity",
                        "undecodable",
                        &e.to_string(),
                        None,
                    ));
                    windows.push(None);
                }
            }
        }
        let (m, started, n) = (model.clone(), std::time::Instant::now(), batch.len());
        let min_confidence = self.min_confidence;
        // One window that makes feature extraction or the model panic is
        // dead-lettered alone; the others of its batch are tagged.
        let results: Vec<Option<Result<ActivityTag, String>>> = tokio::task::spawn_blocking(move || {
            let spec = FeatureSpec::default();
            windows
                .iter()
                .map(|w| {
                    w.as_ref().map(|w| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tag(&m, &spec, w, min_confidence)))
                            .map_err(|panic| {
                                panic
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_else(|| "a panic".into())
                            })
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| TagError::Inference(e.to_string()))?;
        metrics::histogram!("enrich_inference_seconds").record(started.elapsed().as_secs_f64() / n as f64);
        let mut tags = 0;
        for (msg, result) in batch.iter().zip(results) {
            let t = match result {
                None => continue,
                Some(Ok(t)) => t,
                Some(Err(why)) if deadletter_topic.is_empty() => {
                    // A replay has nowhere to put it: counted, skipped, and
                    // the replay goes on (retrying would fail the same way).
                    tracing::error!(error = %why, partition = msg.partition(), offset = msg.offset(), "tagging this window failed; skipped");
                    metrics::counter!("enrich_tagging_failed_total").increment(1);
                    counts.tagging_failed += 1;
                    continue;
                }
                Some(Err(why)) => {
                    tracing::error!(error = %why, offset = msg.offset(), "tagging this window failed; dead-lettering it");
                    metrics::counter!("enrich_tagging_failed_total").increment(1);
                    outputs.push(context_runtime::deadletter::record(
                        msg,
                        deadletter_topic,
                        "enrich-activity",
                        "tagging_failed",
                        &why,
                        None,
                    ));
                    continue;
                }
            };
            outputs.push(Output {
                topic: self.activity_topic.clone(),
                key: Some(t.install_id.to_string().into_bytes()),
                payload: t.to_wire(self.tag_schema_id)?,
                headers: Vec::new(),
            });
            metrics::counter!("enrich_windows_tagged_total", "activity" => t.activity.clone(), "model_version" => t.model_version.clone()).increment(1);
            if let Some(why) = &t.reason {
                *counts.unknown.entry(why.clone()).or_default() += 1;
            }
            tags += 1;
        }
        counts.tagged = tags;
        Ok((outputs, counts))
    }

    /// Tags every decodable window of `batch` and produces the tags with the
    /// plain producer; returns once Kafka acknowledged all of them (`replay`).
    pub async fn process(
        &self,
        model: &Arc<Model>,
        batch: &[rdkafka::message::OwnedMessage],
    ) -> Result<Counts, TagError> {
        let (outputs, counts) = self.outputs(model, batch, "").await?;
        let mut pending = Vec::new();
        for o in outputs.iter().filter(|o| o.topic == self.activity_topic) {
            let mut record = FutureRecord::to(&o.topic).payload(&o.payload);
            if let Some(key) = &o.key {
                record = record.key(key);
            }
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| TagError::Produce(e))?;
            pending.push(delivery);
        }
        for p in pending {
            p.await
                .map_err(|_| TagError::Produce(rdkafka::error::KafkaError::Canceled))?
                .map_err(|(e, _)| TagError::Produce(e))?;
        }
        Ok(counts)
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

/// Runs until `shutdown` fires. `/readyz` is 200 once the model is
/// loaded and the tag schema registered, 503 while a batch is failing.
pub async fn run(
    s: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ready.clone();
    let stall = context_runtime::stall::Watch::new(&s.group_id, s.stall());
    let (ready_stall, healthy_stall) = (stall.clone(), stall.clone());
    let admin = context_runtime::start_admin_checked(
        s.admin_listen,
        metrics,
        move || {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                ready_stall.ready()
            } else {
                Err("starting, or the last batch failed".into())
            }
        },
        move || healthy_stall.healthy(),
    )?;
    tracing::info!(admin = %admin.addr, "admin endpoints");
    let result = serve_loop(s, &ready, stall, shutdown).await;
    admin.stop().await;
    result
}

pub(crate) fn load_model(path: &Path) -> anyhow::Result<Model> {
    let text = std::fs::read_to_string(path)?;
    Model::from_json(&text, &FeatureSpec::default()).map_err(anyhow::Error::msg)
}

/// The tagger's part of the loop: the model in force, re-read when its file
/// changes (one stat per batch, under load too; a whole batch is tagged by
/// one model).
struct Serving<'a> {
    s: &'a Config,
    tagger: Tagger,
    model: Arc<Model>,
    model_mtime: Option<SystemTime>,
}

impl Stage for Serving<'_> {
    async fn refresh(&mut self) {
        let path = self.s.model_path();
        if modified(path) == self.model_mtime {
            return;
        }
        self.model_mtime = modified(path);
        match load_model(path) {
            Ok(m) => {
                tracing::info!(model_version = %m.model_version, "loaded a new model");
                metrics::counter!("enrich_model_reloads_total", "outcome" => "ok").increment(1);
                self.model = Arc::new(m);
            }
            Err(e) => {
                metrics::counter!("enrich_model_reloads_total", "outcome" => "refused").increment(1);
                tracing::error!(error = %e, "the new model file is invalid; keeping the current model")
            }
        }
    }

    async fn transform(&mut self, batch: &[OwnedMessage]) -> Result<Vec<Output>, String> {
        match self.tagger.outputs(&self.model, batch, &self.s.deadletter_topic).await {
            Ok((outputs, _)) => Ok(outputs),
            // Retryable or not, the batch is kept and read again (the tagger
            // turns not ready): a window that panics is dead-lettered alone
            // above, so what is left here is the registry, Kafka or a bug.
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn serve_loop(
    s: Config,
    ready: &std::sync::atomic::AtomicBool,
    stall: Arc<context_runtime::stall::Watch>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let model = Arc::new(load_model(s.model_path())?);
    let model_mtime = modified(s.model_path());
    tracing::info!(model_version = %model.model_version, "serving");
    context_runtime::kafka::verify_at_start(&s.kafka, Duration::from_secs(10)).await?;
    let mut tagger = Tagger::new(&s.kafka, &s.registry, &s.activity_topic).await?;
    tagger.min_confidence = s.min_confidence;
    tagger.forgotten = context_runtime::forget::follow_configured(&s.kafka, &s.forget_topic).await?;
    let pipeline = Pipeline::start(&PipelineSettings {
        kafka: s.kafka.clone(),
        group_id: s.group_id.clone(),
        topics: vec![s.motion_topic.clone()],
        metrics_prefix: "enrich",
        delivery: s.delivery,
        allow_fallback: false,
        transactional_id: s.transactional_id.clone(),
        session_timeout: s.session_timeout,
        timeout: Duration::from_secs(30),
        deadletter_topic: s.deadletter_topic.clone(),
        service: "enrich-activity",
        max_record_bytes: s.max_record_bytes,
    })
    .map_err(anyhow::Error::msg)?;
    let _stall_watch = pipeline
        .watch_stalls(stall, &s.kafka, shutdown.clone())
        .map_err(anyhow::Error::msg)?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stage = Serving {
        s: &s,
        tagger,
        model,
        model_mtime,
    };
    // A batch: up to max_batch records or 200 ms after the first.
    let options = DriveOptions {
        max_batch: s.max_batch,
        linger: Duration::from_millis(200),
    };
    drive(&pipeline, &mut stage, options, ready, shutdown)
        .await
        .map_err(anyhow::Error::msg)
}
