//! The HTTP service: `POST /v1/batch` and the operational endpoints.
//!
//! One request goes: content checks (415) → API key (401/403) → body read
//! with a size limit (413) → decompress, parse, validate, encode off the
//! reactor (400/413) → batch-id dedup → per-app rate limit (429) → in-flight
//! byte budget (503) → produce every event and dead letter, wait for every
//! acknowledgement (503 on failure) → 200.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use context_schemas::{AvroRecord, ContextEvent};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use uuid::Uuid;

use crate::api_error::ApiError;
use crate::auth::Auth;
use crate::batch::Encoding;
use crate::config::Config;
use crate::error::BatchError;
use crate::keys::Keys;
use crate::pipeline;
use crate::produce::{Kafka, Outgoing};
use crate::validate::Validator;

/// One entry of the `rejected` list.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub event_id: Option<String>,
    pub reason: &'static str,
    pub detail: String,
}

/// The 200 answer.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// Recently answered batches, by app and batch id.
struct Dedup {
    window: Duration,
    capacity: usize,
    answers: HashMap<(String, Uuid), Arc<Accepted>>,
    order: VecDeque<(Instant, (String, Uuid))>,
}

impl Dedup {
    fn get(&mut self, key: &(String, Uuid)) -> Option<Arc<Accepted>> {
        self.expire();
        self.answers.get(key).cloned()
    }

    fn put(&mut self, key: (String, Uuid), answer: Arc<Accepted>) {
        self.expire();
        while self.order.len() >= self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
        if self.answers.insert(key.clone(), answer).is_none() {
            self.order.push_back((Instant::now(), key));
        }
    }

    fn expire(&mut self) {
        while let Some((t, _)) = self.order.front() {
            if t.elapsed() < self.window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.answers.remove(&key);
            }
        }
    }
}

/// A token bucket per app, in events.
#[derive(Default)]
struct RateLimits {
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimits {
    /// Takes `n` events from the app's bucket, or returns the seconds to wait.
    fn take(&mut self, app: &str, n: f64, rate: f64, burst: f64) -> Result<(), u64> {
        let now = Instant::now();
        let (tokens, last) = self.buckets.entry(app.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        let need = n.min(burst);
        if *tokens >= need {
            *tokens -= n;
            Ok(())
        } else {
            Err(((need - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// Gives back `n` events taken for a batch that was not accepted.
    fn refund(&mut self, app: &str, n: f64, burst: f64) {
        if let Some((tokens, _)) = self.buckets.get_mut(app) {
            *tokens = (*tokens + n).min(burst);
        }
    }
}

/// Everything the handlers share.
pub struct Gateway {
    settings: Config,
    keys: Keys,
    kafka: Kafka,
    validator: Validator,
    schema_id: u32,
    events_topic: Arc<str>,
    deadletter_topic: Arc<str>,
    in_flight: Arc<Semaphore>,
    dedup: Mutex<Dedup>,
    limits: Mutex<RateLimits>,
    draining: AtomicBool,
}

use context_runtime::clock::now_micros;
use context_runtime::deadletter as dl;

/// The records of a validated batch and its answer.
struct Prepared {
    records: Vec<Outgoing>,
    answer: Accepted,
    batch_id: Uuid,
    events: usize,
    unknown_signals: usize,
    unknown_fields: usize,
}

impl Gateway {
    /// The CPU part of a request ([`pipeline::prepare_within`]) and the
    /// records it makes; `grow` charges the decompressed body's buffer.
    fn prepare(
        &self,
        body: &[u8],
        encoding: Encoding,
        app_id: &str,
        sent_at: Option<i64>,
        grow: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Prepared, BatchError> {
        let request = pipeline::Request {
            app_id,
            received_at: now_micros(),
            sent_at,
            schema_id: self.schema_id,
        };
        let batch = pipeline::prepare_within(body, encoding, &request, &self.validator, grow)?;
        if batch.time_suspect > 0 {
            metrics::counter!("gateway_time_suspect_total").increment(batch.time_suspect as u64);
        }
        let mut records = Vec::with_capacity(batch.events);
        for value in batch.accepted {
            records.push(Outgoing {
                topic: self.events_topic.clone(),
                key: batch.key.clone(),
                value,
                headers: Vec::new(),
            });
        }
        let mut rejected = Vec::with_capacity(batch.rejected.len());
        for r in batch.rejected {
            let mut headers = vec![
                (dl::SOURCE, "ingest-gateway".to_owned()),
                (dl::REASON, r.rejection.reason.to_owned()),
                (dl::DETAIL, r.rejection.detail.clone()),
                (dl::TIME, crate::sdk::rfc3339(batch.received_at)),
                (dl::APP_ID, app_id.to_owned()),
                (dl::BATCH_ID, batch.batch_id.to_string()),
                (dl::ENVELOPE, batch.envelope.clone()),
            ];
            if let Some(id) = &r.event_id {
                headers.push((dl::EVENT_ID, id.clone()));
            }
            records.push(Outgoing {
                topic: self.deadletter_topic.clone(),
                key: batch.key.clone(),
                value: r.raw,
                headers,
            });
            metrics::counter!("gateway_events_rejected_total", "reason" => r.rejection.reason).increment(1);
            rejected.push(Rejected {
                index: r.index,
                event_id: r.event_id,
                reason: r.rejection.reason,
                detail: r.rejection.detail,
            });
        }
        Ok(Prepared {
            answer: Accepted {
                accepted: batch.events - rejected.len(),
                rejected,
            },
            records,
            batch_id: batch.batch_id,
            events: batch.events,
            unknown_signals: batch.unknown_signals,
            unknown_fields: batch.unknown_fields,
        })
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn post_batch(
    gw: web::Data<Arc<Gateway>>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if gw.draining.load(Ordering::Relaxed) {
        return Err(ApiError::ShuttingDown);
    }
    let content_type = header(&req, "content-type").unwrap_or("");
    if !content_type.trim().to_ascii_lowercase().starts_with("application/json") {
        return Err(BatchError::UnsupportedContentType(content_type.to_owned()).into());
    }
    let encoding = Encoding::from_header(header(&req, "content-encoding"))?;
    // The time of this attempt, set by the client on every send (SPEC's
    // client contract): a body stored and resent hours later keeps its
    // capture times instead of having the delay added as clock skew.
    // A malformed header falls back to the body's `sent_at`: a 400 would
    // make the client delete a batch whose events are fine.
    let sent_at = header(&req, "x-sent-at").and_then(|v| match crate::validate::parse_time(v.trim()) {
        Ok(t) => Some(t),
        Err(e) => {
            metrics::counter!("gateway_sent_at_header_malformed_total").increment(1);
            tracing::debug!(header = v, error = %e, "malformed X-Sent-At; using the body's sent_at");
            None
        }
    });
    let ring = gw.keys.current();
    let app = match ring.check(header(&req, "authorization")) {
        Auth::Missing => return Err(ApiError::MissingKey),
        Auth::Unknown => return Err(ApiError::UnknownKey),
        Auth::Disabled(k) => return Err(ApiError::DisabledKey(k.app_id.clone())),
        Auth::Allowed(k) => k.clone(),
    };

    // The body, with its size limit; no more than the limit is ever buffered.
    let max_body = gw.settings.limits.max_body_bytes;
    if header(&req, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > max_body)
    {
        return Err(BatchError::TooLarge(format!("the body is over {max_body} bytes")).into());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        // A body cut off or garbled on the way (a dropped connection, an
        // HTTP/2 reset) says nothing about the batch: retry, never 400.
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => {
                ApiError::from(BatchError::TooLarge(format!("the body is over {max_body} bytes")))
            }
            other => ApiError::Unavailable {
                reason: format!("the body could not be read to its end ({other})"),
                retry_after: 1,
            },
        })?;
        if body.len() + chunk.len() > max_body {
            return Err(BatchError::TooLarge(format!("the body is over {max_body} bytes")).into());
        }
        body.extend_from_slice(&chunk);
    }

    // Backpressure: a budget of decompressed bytes in flight, taken before
    // the work (a compressed body's guess: 8 times its size), and topped up
    // while the body inflates past that guess (503 when the budget has no
    // more: a gzip bomb costs what it inflates to, not what it weighs).
    let budget = u32::try_from(gw.settings.limits.max_decompressed_bytes).unwrap_or(u32::MAX);
    let cost = ((body.len() as u64).saturating_mul(if encoding == Encoding::Identity { 1 } else { 8 }))
        .clamp(1, u64::from(budget)) as u32;
    let Some(mut charge) = Charge::take(&gw.in_flight, cost) else {
        return Err(ApiError::Busy);
    };

    let (prepared, _charge) = {
        let (gw, app_id) = (gw.clone(), app.app_id.clone());
        let body = body.freeze();
        web::block(move || {
            let prepared = gw.prepare(&body, encoding, &app_id, sent_at, &mut |size| charge.grow(size));
            prepared.map(|p| (p, charge))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
    };
    let span = tracing::info_span!("batch", batch_id = %prepared.batch_id, app_id = %app.app_id);
    let _enter = span.enter();

    let dedup_key = (app.app_id.clone(), prepared.batch_id);
    if let Some(answer) = gw.dedup.lock().expect("dedup lock").get(&dedup_key) {
        tracing::debug!("repeated batch answered from memory");
        metrics::counter!("gateway_requests_total", "status" => "200").increment(1);
        metrics::counter!("gateway_batches_deduplicated_total").increment(1);
        return Ok(HttpResponse::Ok().json(&*answer));
    }
    if let Err(wait) =
        gw.limits
            .lock()
            .expect("rate lock")
            .take(&app.app_id, prepared.events as f64, app.rate_limit_per_s, app.burst)
    {
        return Err(ApiError::RateLimited {
            app: app.app_id.clone(),
            rate: app.rate_limit_per_s,
            retry_after: wait,
        });
    }
    if prepared.unknown_signals > 0 {
        metrics::counter!("gateway_unknown_signals_total").increment(prepared.unknown_signals as u64);
    }
    if prepared.unknown_fields > 0 {
        metrics::counter!("gateway_unknown_fields_total").increment(prepared.unknown_fields as u64);
    }
    match gw.kafka.send_all(prepared.records).await {
        Ok(()) => {
            let answer = Arc::new(prepared.answer);
            metrics::counter!("gateway_events_accepted_total").increment(answer.accepted as u64);
            metrics::counter!("gateway_requests_total", "status" => "200").increment(1);
            metrics::histogram!("gateway_batch_events").record(prepared.events as f64);
            // Debug: at info, a line per request is gigabytes of logs a day
            // at the seed's load; the counters above say the same.
            tracing::debug!(
                accepted = answer.accepted,
                rejected = answer.rejected.len(),
                "batch acknowledged"
            );
            gw.dedup.lock().expect("dedup lock").put(dedup_key, answer.clone());
            Ok(HttpResponse::Ok().json(&*answer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "batch not acknowledged");
            metrics::counter!("gateway_errors_total", "stage" => "produce").increment(1);
            // The batch was not taken: its retry must not find the app's
            // rate budget spent on it.
            gw.limits
                .lock()
                .expect("rate lock")
                .refund(&app.app_id, prepared.events as f64, app.burst);
            if e.is_permanent() {
                tracing::error!(
                    error = %e,
                    "Kafka refuses records for good: check the topics exist, their max.message.bytes \
                     against limits.max_record_bytes, and the gateway's ACLs"
                );
                metrics::counter!("gateway_kafka_refusals_total").increment(1);
                return Err(ApiError::KafkaRefused(e.to_string()));
            }
            Err(ApiError::Unavailable {
                reason: e.to_string(),
                retry_after: gw.kafka.health.retry_after(),
            })
        }
    }
}

/// A request's share of the budget of bytes in flight: taken before the
/// work, grown while its body inflates past that first charge, and given
/// back with the gauge when the request ends, however it ends.
struct Charge {
    budget: Arc<Semaphore>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Charge {
    /// Takes `bytes` of `budget`; `None` when it has not that many left.
    fn take(budget: &Arc<Semaphore>, bytes: u32) -> Option<Self> {
        let permit = Self::acquire(budget, bytes)?;
        Some(Charge {
            budget: budget.clone(),
            permit,
        })
    }

    /// Grows the charge to `size` bytes; false when the budget has no more.
    fn grow(&mut self, size: usize) -> bool {
        let held = self.permit.num_permits();
        if size <= held {
            return true;
        }
        match u32::try_from(size - held)
            .ok()
            .and_then(|more| Self::acquire(&self.budget, more))
        {
            Some(extra) => {
                self.permit.merge(extra);
                true
            }
            None => false,
        }
    }

    fn acquire(budget: &Arc<Semaphore>, bytes: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match budget.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => {
                metrics::gauge!("gateway_in_flight_bytes").increment(f64::from(bytes));
                Some(permit)
            }
            Err(_) => {
                metrics::counter!("gateway_dropped_total", "reason" => "in_flight_full").increment(1);
                None
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        metrics::gauge!("gateway_in_flight_bytes").decrement(self.permit.num_permits() as f64);
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

async fn readyz(gw: web::Data<Arc<Gateway>>) -> HttpResponse {
    if gw.draining.load(Ordering::Relaxed) {
        HttpResponse::ServiceUnavailable().body("shutting down")
    } else if !gw.kafka.health.healthy() {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", gw.kafka.health.retry_after().to_string()))
            .body("the broker did not acknowledge the last batch")
    } else {
        HttpResponse::Ok().body("ready")
    }
}

async fn openapi(gw: web::Data<Arc<Gateway>>) -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document(&gw.settings.limits))
}

async fn metrics_text(handle: web::Data<Option<metrics_exporter_prometheus::PrometheusHandle>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.as_ref().as_ref().map(|h| h.render()).unwrap_or_default())
}

/// A running gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    server: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Graceful shutdown: readiness turns 503, new batches get 503, batches
    /// in flight are answered, queued records are flushed to Kafka.
    pub async fn shutdown(self, drain: Duration) -> std::io::Result<()> {
        self.gateway.draining.store(true, Ordering::Relaxed);
        tokio::time::sleep(drain).await;
        self.server.stop(true).await;
        let result = self.task.await.map_err(std::io::Error::other)?;
        for task in self.background {
            task.abort();
        }
        let gw = self.gateway.clone();
        let _ = tokio::task::spawn_blocking(move || gw.kafka.flush(Duration::from_secs(10))).await;
        result
    }
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))
    .with_context(|| format!("reading the private key from {}", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(config)
}

/// How long a start waits for an unreachable broker before it goes on
/// without (refused credentials stop it at once).
const KAFKA_PATIENCE: Duration = Duration::from_secs(10);

/// Starts the gateway: loads the keys, registers (or finds) the event schema,
/// connects the producer and serves HTTP(S).
pub async fn start(
    settings: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<Running> {
    let keys = Keys::load(&settings.keys_file).map_err(anyhow::Error::msg)?;
    context_runtime::kafka::verify_at_start(&settings.kafka, KAFKA_PATIENCE).await?;
    let registry = schema_registry::RegistryClient::connect(&settings.registry)?;
    let subject = format!("{}-value", settings.events_topic);
    let mut attempt = 0;
    let schema_id = loop {
        match registry.register(&subject, ContextEvent::AVSC).await {
            Ok(id) => break id,
            Err(e) if e.is_retryable() && attempt < 30 => {
                attempt += 1;
                tracing::warn!(error = %e, "schema registry not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!("cannot register the event schema under {subject}: {e}"),
        }
    };
    let kafka = Kafka::new(&settings)?;
    let gateway = Arc::new(Gateway {
        validator: Validator::new(settings.limits.clone(), settings.max_future, settings.max_age),
        events_topic: settings.events_topic.as_str().into(),
        deadletter_topic: settings.deadletter_topic.as_str().into(),
        in_flight: Arc::new(Semaphore::new(settings.max_in_flight_bytes.min(u32::MAX as usize))),
        dedup: Mutex::new(Dedup {
            window: settings.dedup_window,
            capacity: settings.dedup_capacity.max(1),
            answers: HashMap::new(),
            order: VecDeque::new(),
        }),
        limits: Mutex::new(RateLimits::default()),
        draining: AtomicBool::new(false),
        schema_id,
        keys: keys.clone(),
        kafka: kafka.clone(),
        settings: settings.clone(),
    });
    let background = vec![
        keys.watch(settings.keys_file.clone(), Duration::from_secs(2)),
        kafka.probe(),
    ];
    let data = web::Data::new(gateway.clone());
    let metrics = web::Data::new(metrics);
    let max_body = settings.limits.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(metrics.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .route("/v1/batch", web::post().to(post_batch))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
            .route("/openapi.json", web::get().to(openapi))
    })
    .workers(settings.workers)
    .disable_signals()
    .shutdown_timeout(30);
    let server = match &settings.tls() {
        Some((cert, key)) => server.bind_rustls_0_23(settings.listen, tls_config(cert, key)?)?,
        None => server.bind(settings.listen)?,
    };
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("the server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(%addr, tls = settings.tls().is_some(), schema_id, topic = %settings.events_topic, "ingest gateway listening");
    Ok(Running {
        addr,
        gateway,
        server: handle,
        task,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_limits_events_per_app() {
        let mut rl = RateLimits::default();
        assert!(rl.take("a", 10.0, 5.0, 10.0).is_ok());
        let wait = rl.take("a", 5.0, 5.0, 10.0).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        assert!(rl.take("b", 10.0, 5.0, 10.0).is_ok(), "apps have their own buckets");
        // A batch larger than the burst passes on a full bucket.
        assert!(RateLimits::default().take("c", 50.0, 5.0, 10.0).is_ok());
        // A batch refused with 503 gives its events back: the retry passes.
        let mut rl = RateLimits::default();
        assert!(rl.take("d", 10.0, 0.001, 10.0).is_ok());
        assert!(rl.take("d", 10.0, 0.001, 10.0).is_err());
        rl.refund("d", 10.0, 10.0);
        assert!(rl.take("d", 10.0, 0.001, 10.0).is_ok(), "the retry is not rate-limited");
    }

    #[test]
    fn dedup_forgets_after_capacity() {
        let mut d = Dedup {
            window: Duration::from_secs(60),
            capacity: 2,
            answers: HashMap::new(),
            order: VecDeque::new(),
        };
        let answer = Arc::new(Accepted {
            accepted: 1,
            rejected: vec![],
        });
        let key = |n: u128| ("app".to_owned(), Uuid::from_u128(n));
        d.put(key(1), answer.clone());
        d.put(key(2), answer.clone());
        d.put(key(3), answer);
        assert!(d.get(&key(1)).is_none());
        assert!(d.get(&key(3)).is_some());
    }
}
