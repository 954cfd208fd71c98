//! The HTTP service: `POST /v1/batch` and the operational endpoints.
//!
//! One request goes: content checks (415) → API key (401/403) → body read
//! with a size limit (413), a deadline (503) and its bytes charged to the
//! in-flight budget as they arrive (503) → decompress, parse, validate,
//! encode off the reactor (400/413; the budget grows with the inflating
//! body) → batch-id dedup (the same body: the first answer; another body:
//! 409) → per-app rate limits in events and bytes (429) → produce every
//! event and dead letter, wait for every acknowledgement (503 on failure) →
//! 200.

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

type DedupKey = (String, Uuid);

/// One remembered answer: the digest of the body it answered, when, and
/// what it takes in memory.
struct Remembered {
    answer: Arc<Accepted>,
    digest: [u8; 32],
    at: Instant,
    bytes: usize,
}

/// What the dedup memory knows of a batch.
enum Seen {
    /// Not answered within the window.
    New,
    /// Answered for the same body: the answer.
    Same(Arc<Accepted>),
    /// Answered for another body; forgotten in this many seconds.
    Reused { retry_after: u64 },
}

/// Recently answered batches, by app and batch id, with the digest of the
/// body each answered: at most `capacity` answers of at most
/// `capacity_bytes` together (each counted at its size in memory), for
/// `window`, the oldest forgotten first.
struct Dedup {
    window: Duration,
    capacity: usize,
    capacity_bytes: usize,
    bytes: usize,
    answers: HashMap<DedupKey, Remembered>,
    order: VecDeque<(Instant, DedupKey)>,
}

/// What one remembered answer takes besides its strings: the map's and the
/// queue's slots (the key is in both), the answer behind its `Arc`.
const DEDUP_SLOT_BYTES: usize = 2 * std::mem::size_of::<(Instant, DedupKey)>()
    + std::mem::size_of::<Remembered>()
    + std::mem::size_of::<Accepted>()
    + 32;

/// The bytes an answer takes in the dedup memory: its slots, the app id
/// twice (map and queue), and every rejection with its strings.
fn remembered_bytes(key: &DedupKey, answer: &Accepted) -> usize {
    let rejected: usize = answer
        .rejected
        .iter()
        .map(|r| r.detail.capacity() + r.event_id.as_ref().map_or(0, String::capacity))
        .sum();
    DEDUP_SLOT_BYTES + 2 * key.0.capacity() + answer.rejected.capacity() * std::mem::size_of::<Rejected>() + rejected
}

impl Dedup {
    fn new(window: Duration, capacity: usize, capacity_bytes: usize) -> Self {
        Dedup {
            window,
            capacity: capacity.max(1),
            capacity_bytes,
            bytes: 0,
            answers: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// What is known of `key`, whose body has `digest`.
    fn get(&mut self, key: &DedupKey, digest: &[u8; 32]) -> Seen {
        self.expire();
        let seen = match self.answers.get(key) {
            None => Seen::New,
            Some(r) if r.digest == *digest => Seen::Same(r.answer.clone()),
            Some(r) => {
                let left = self.window.saturating_sub(r.at.elapsed());
                Seen::Reused {
                    retry_after: (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1),
                }
            }
        };
        self.publish();
        seen
    }

    /// Remembers `answer` for the body with `digest`, forgetting the oldest
    /// answers until it fits; false when it is larger than the whole memory
    /// (then it is not kept).
    fn put(&mut self, key: DedupKey, answer: Arc<Accepted>, digest: [u8; 32]) -> bool {
        self.expire();
        // Two requests of one batch_id answered at once: the later answer
        // replaces the earlier one.
        if self.answers.contains_key(&key) {
            self.forget(&key);
            self.order.retain(|(_, k)| *k != key);
        }
        let bytes = remembered_bytes(&key, &answer);
        if bytes > self.capacity_bytes {
            self.publish();
            return false;
        }
        while self.answers.len() >= self.capacity || self.bytes + bytes > self.capacity_bytes {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.forget(&oldest);
        }
        let at = Instant::now();
        self.order.push_back((at, key.clone()));
        self.answers.insert(
            key,
            Remembered {
                answer,
                digest,
                at,
                bytes,
            },
        );
        self.bytes += bytes;
        self.publish();
        true
    }

    fn forget(&mut self, key: &DedupKey) {
        if let Some(r) = self.answers.remove(key) {
            self.bytes = self.bytes.saturating_sub(r.bytes);
        }
    }

    fn expire(&mut self) {
        while let Some((t, _)) = self.order.front() {
            if t.elapsed() < self.window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.forget(&key);
            }
        }
    }

    /// The memory's size on `/metrics`.
    fn publish(&self) {
        metrics::gauge!("gateway_dedup_cache_bytes").set(self.bytes as f64);
        metrics::gauge!("gateway_dedup_cache_entries").set(self.answers.len() as f64);
    }
}

/// A token bucket per app, in events or in bytes.
#[derive(Default)]
struct RateLimits {
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimits {
    /// Takes `n` (events or bytes) from the app's bucket, or returns the
    /// seconds to wait.
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

    /// Gives back `n` taken for a batch that was not accepted.
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
    /// Per app, in decompressed bytes (`rate_limit_bytes_per_s`).
    byte_limits: Mutex<RateLimits>,
    draining: AtomicBool,
    /// Lag-aware backpressure: the answer of the background check.
    backpressure: Arc<crate::lag::Flag>,
    forget_topic: Arc<str>,
    /// The forget ledger once read (for `max_forgotten_installs`).
    forgotten: Arc<std::sync::OnceLock<Arc<context_runtime::forget::Forgotten>>>,
}

use context_runtime::clock::now_micros;
use context_runtime::deadletter as dl;

/// The records of a validated batch and its answer.
struct Prepared {
    records: Vec<Outgoing>,
    answer: Accepted,
    batch_id: Uuid,
    digest: [u8; 32],
    json_bytes: usize,
    events: usize,
    unknown_signals: usize,
    unknown_fields: usize,
}

impl Gateway {
    /// Why batches are answered 503 `backpressure` now, if they are.
    pub fn backpressure(&self) -> Option<String> {
        self.backpressure.refusing()
    }

    /// Bytes of requests charged to `max_in_flight_bytes` now (bodies being
    /// read, inflating or waiting for Kafka): what `gateway_in_flight_bytes`
    /// shows.
    pub fn bytes_in_flight(&self) -> usize {
        self.settings
            .max_in_flight_bytes
            .min(u32::MAX as usize)
            .saturating_sub(self.in_flight.available_permits())
    }

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
        // A dead letter over what its topic takes is cut to a stub here
        // (its headers, its first bytes, `dl.truncated`), so that it never
        // fails its batch.
        let deadletter_max = self.kafka.deadletter_max_bytes();
        for r in batch.rejected {
            let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(8);
            let mut add = |k: &str, v: String| headers.push((k.to_owned(), v.into_bytes()));
            add(dl::SOURCE, "ingest-gateway".to_owned());
            add(dl::REASON, r.rejection.reason.to_owned());
            add(dl::DETAIL, r.rejection.detail.clone());
            add(dl::TIME, crate::sdk::rfc3339(batch.received_at));
            add(dl::APP_ID, app_id.to_owned());
            add(dl::BATCH_ID, batch.batch_id.to_string());
            add(dl::ENVELOPE, batch.envelope.clone());
            if let Some(id) = &r.event_id {
                add(dl::EVENT_ID, id.clone());
            }
            let letter = Outgoing {
                topic: self.deadletter_topic.clone(),
                key: batch.key.clone(),
                value: r.raw,
                headers,
            }
            .fit(deadletter_max);
            if letter.is_stub() {
                metrics::counter!("gateway_deadletters_truncated_total", "when" => "over_limit").increment(1);
                tracing::debug!(
                    limit = deadletter_max,
                    "a dead letter over the topic's limit is sent as a stub"
                );
            }
            records.push(letter);
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
            digest: batch.digest,
            json_bytes: batch.json_bytes,
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
    // The consumers are too far behind: refused before the body is read.
    if let Some(reason) = gw.backpressure.refusing() {
        metrics::counter!("gateway_dropped_total", "reason" => "backpressure").increment(1);
        return Err(ApiError::Backpressure {
            reason,
            retry_after: gw.settings.backpressure.retry_after.as_secs().max(1),
        });
    }

    // The body, with its size limit (no more than the limit is ever
    // buffered), its deadline, and its share of the in-flight budget charged
    // before it is buffered: the declared length up front, then the bytes as
    // they arrive; over the budget, 503 before the rest is read.
    let max_body = gw.settings.limits.max_body_bytes;
    let declared = header(&req, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(BatchError::TooLarge(format!("the body is over {max_body} bytes")).into());
    }
    let declared = declared.unwrap_or(0);
    let Some(mut charge) = Charge::take(&gw.in_flight, u32::try_from(declared).unwrap_or(u32::MAX)) else {
        return Err(ApiError::Busy);
    };
    // The body may pause for at most `body_read_timeout`, and must arrive
    // whole within BODY_DEADLINE_FACTOR times that: a slow network, or a
    // client holding its share of the budget by trickling.
    let idle = gw.settings.body_read_timeout;
    let whole = idle.saturating_mul(BODY_DEADLINE_FACTOR);
    let body = match tokio::time::timeout(whole, read_body(&mut payload, &mut charge, declared, max_body, idle)).await {
        Ok(read) => read?,
        Err(_elapsed) => {
            // The batch itself may be fine, so the phone retries it.
            metrics::counter!("gateway_dropped_total", "reason" => "body_read_timeout").increment(1);
            return Err(ApiError::Unavailable {
                reason: format!(
                    "the body did not arrive within {whole:?} ({BODY_DEADLINE_FACTOR} x body_read_timeout)"
                ),
                retry_after: 1,
            });
        }
    };

    // Backpressure: a budget of decompressed bytes in flight, grown before
    // the work to a compressed body's guess (8 times its size), and topped
    // up while the body inflates past that guess (503 when the budget has no
    // more: a gzip bomb costs what it inflates to, not what it weighs).
    let budget = u32::try_from(gw.settings.limits.max_decompressed_bytes).unwrap_or(u32::MAX);
    let cost = ((body.len() as u64).saturating_mul(if encoding == Encoding::Identity { 1 } else { 8 }))
        .clamp(1, u64::from(budget));
    if !charge.grow(cost as usize) {
        return Err(ApiError::Busy);
    }

    let (prepared, _charge) = {
        let (gw, app_id) = (gw.clone(), app.app_id.clone());
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
    let seen = gw.dedup.lock().expect("dedup lock").get(&dedup_key, &prepared.digest);
    match seen {
        Seen::New => {}
        Seen::Same(answer) => {
            tracing::debug!("repeated batch answered from memory");
            metrics::counter!("gateway_requests_total", "status" => "200").increment(1);
            metrics::counter!("gateway_batches_deduplicated_total").increment(1);
            return Ok(HttpResponse::Ok().json(&*answer));
        }
        Seen::Reused { retry_after } => {
            // Answering the first body's counts would make the phone delete
            // events that were never produced.
            tracing::debug!("batch_id reused for a different body");
            metrics::counter!("gateway_batch_id_reused_total").increment(1);
            return Err(ApiError::BatchIdReused {
                batch_id: prepared.batch_id,
                retry_after,
            });
        }
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
    let (bytes_rate, bytes_burst) = (gw.settings.rate_limit_bytes_per_s, gw.settings.rate_limit_burst_bytes);
    if bytes_rate > 0 {
        let taken = gw.byte_limits.lock().expect("rate lock").take(
            &app.app_id,
            prepared.json_bytes as f64,
            bytes_rate as f64,
            bytes_burst as f64,
        );
        if let Err(wait) = taken {
            // The events taken for this batch go back: it was not accepted.
            gw.limits
                .lock()
                .expect("rate lock")
                .refund(&app.app_id, prepared.events as f64, app.burst);
            return Err(ApiError::BytesRateLimited {
                app: app.app_id.clone(),
                rate: bytes_rate,
                retry_after: wait,
            });
        }
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
            if !gw
                .dedup
                .lock()
                .expect("dedup lock")
                .put(dedup_key, answer.clone(), prepared.digest)
            {
                metrics::counter!("gateway_dedup_not_kept_total").increment(1);
            }
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
            if bytes_rate > 0 {
                gw.byte_limits.lock().expect("rate lock").refund(
                    &app.app_id,
                    prepared.json_bytes as f64,
                    bytes_burst as f64,
                );
            }
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

/// What `POST /v1/forget` takes.
#[derive(serde::Deserialize)]
struct ForgetBody {
    install_id: String,
}

/// What `POST /v1/forget` answers (202).
#[derive(Serialize)]
struct ForgetAccepted {
    request_id: Uuid,
    install_id: Uuid,
    requested_at: String,
}

/// The largest `POST /v1/forget` body.
pub const MAX_FORGET_BODY: usize = 4096;

/// `POST /v1/forget`: the device asks that its install's data be erased.
/// Knowing the (random) install id and the app's key is the proof. Answered
/// 202 only once the request is in the forget ledger on every in-sync
/// replica; every other answer is safe to retry.
async fn post_forget(
    gw: web::Data<Arc<Gateway>>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if gw.draining.load(Ordering::Relaxed) {
        return Err(ApiError::ShuttingDown);
    }
    let ring = gw.keys.current();
    let app = match ring.check(header(&req, "authorization")) {
        Auth::Missing => return Err(ApiError::MissingKey),
        Auth::Unknown => return Err(ApiError::UnknownKey),
        Auth::Disabled(k) => return Err(ApiError::DisabledKey(k.app_id.clone())),
        Auth::Allowed(k) => k.clone(),
    };
    let content_type = header(&req, "content-type").unwrap_or("");
    if !content_type.trim().to_ascii_lowercase().starts_with("application/json") {
        return Err(BatchError::UnsupportedContentType(content_type.to_owned()).into());
    }
    let asked: ForgetBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadForget(format!("the body must be {{\"install_id\": \"<uuid>\"}}: {e}")))?;
    let install_id = Uuid::parse_str(asked.install_id.trim())
        .map_err(|e| ApiError::BadForget(format!("install_id `{}` is not a UUID: {e}", asked.install_id)))?;
    // A request costs the app one event of its rate limit.
    if let Err(wait) = gw
        .limits
        .lock()
        .expect("rate lock")
        .take(&app.app_id, 1.0, app.rate_limit_per_s, app.burst)
    {
        return Err(ApiError::RateLimited {
            app: app.app_id.clone(),
            rate: app.rate_limit_per_s,
            retry_after: wait,
        });
    }
    let max = gw.settings.max_forgotten_installs;
    if gw.forgotten.get().is_some_and(|f| f.len() >= max) {
        metrics::counter!("gateway_forget_refused_total", "reason" => "ledger_full").increment(1);
        tracing::error!(
            max,
            "the forget ledger is full: raise max_forgotten_installs (and the memory of every stage)"
        );
        return Err(ApiError::Unavailable {
            reason: format!("the forget ledger holds {max} installs (max_forgotten_installs)"),
            retry_after: 3600,
        });
    }
    let request = context_runtime::forget::Request::new(&app.app_id, install_id, "device");
    let record = Outgoing {
        topic: gw.forget_topic.clone(),
        key: request.key(),
        value: request.to_json(),
        headers: Vec::new(),
    };
    match gw.kafka.send_all(vec![record]).await {
        Ok(()) => {
            metrics::counter!("gateway_forget_requests_total").increment(1);
            metrics::counter!("gateway_requests_total", "status" => "202").increment(1);
            tracing::info!(app_id = %app.app_id, %install_id, request_id = %request.request_id, "forget requested");
            if let Some(f) = gw.forgotten.get() {
                f.insert(request.clone());
            }
            Ok(HttpResponse::Accepted().json(ForgetAccepted {
                request_id: request.request_id,
                install_id,
                requested_at: context_runtime::clock::rfc3339(request.requested_at_us),
            }))
        }
        Err(e) if e.is_permanent() => {
            tracing::error!(error = %e, topic = %gw.forget_topic, "Kafka refuses forget requests: check the topic exists and the gateway may write it");
            Err(ApiError::KafkaRefused(e.to_string()))
        }
        Err(e) => Err(ApiError::Unavailable {
            reason: e.to_string(),
            retry_after: gw.kafka.health.retry_after(),
        }),
    }
}

/// Reads the body into memory, at most `max_body` bytes, each chunk charged
/// to `charge` before it is kept (`declared`, the `Content-Length`, is
/// charged already and reserved): 413 over the limit, 503 when the budget
/// has no more or the body is cut off on the way.
/// A whole body gets this many times `body_read_timeout` (the longest
/// pause) to arrive.
pub const BODY_DEADLINE_FACTOR: u32 = 4;

async fn read_body(
    payload: &mut web::Payload,
    charge: &mut Charge,
    declared: usize,
    max_body: usize,
    idle: std::time::Duration,
) -> Result<web::Bytes, ApiError> {
    let too_large = || ApiError::from(BatchError::TooLarge(format!("the body is over {max_body} bytes")));
    let mut body = web::BytesMut::with_capacity(declared);
    loop {
        let Ok(next) = tokio::time::timeout(idle, payload.next()).await else {
            metrics::counter!("gateway_dropped_total", "reason" => "body_read_timeout").increment(1);
            return Err(ApiError::Unavailable {
                reason: format!(
                    "the body paused for more than {idle:?} after {} bytes (body_read_timeout)",
                    body.len()
                ),
                retry_after: 1,
            });
        };
        let Some(chunk) = next else { break };
        // A body cut off or garbled on the way (a dropped connection, an
        // HTTP/2 reset) says nothing about the batch: retry, never 400.
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => too_large(),
            other => ApiError::Unavailable {
                reason: format!("the body could not be read to its end ({other})"),
                retry_after: 1,
            },
        })?;
        let size = body.len() + chunk.len();
        if size > max_body {
            return Err(too_large());
        }
        if !charge.grow(size) {
            return Err(ApiError::Busy);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A request's share of the budget of bytes in flight: taken before its
/// body is read, grown as the body arrives and while it inflates, and given
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
    } else if let Some(reason) = gw.backpressure.refusing() {
        // Still ready: the phones must get the 503 with Retry-After, which a
        // pod taken out of its Service could not give them.
        HttpResponse::Ok().body(format!("ready (backpressure on, batches answered 503: {reason})"))
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
    // What the dead-letter topic takes: larger dead letters go as stubs.
    let limit_read = kafka.refresh_deadletter_limit().await;
    tracing::info!(
        topic = %settings.deadletter_topic,
        largest_whole_dead_letter = kafka.deadletter_max_bytes(),
        read_from_the_broker = limit_read,
        "dead-letter limit"
    );
    let (backpressure, watcher) = crate::lag::watch(&settings.kafka, &settings.events_topic, &settings.backpressure)?;
    let gateway = Arc::new(Gateway {
        backpressure,
        validator: Validator::new(settings.limits.clone(), settings.max_future, settings.max_age),
        events_topic: settings.events_topic.as_str().into(),
        deadletter_topic: settings.deadletter_topic.as_str().into(),
        forget_topic: settings.forget_topic.as_str().into(),
        forgotten: Arc::new(std::sync::OnceLock::new()),
        in_flight: Arc::new(Semaphore::new(settings.max_in_flight_bytes.min(u32::MAX as usize))),
        dedup: Mutex::new(Dedup::new(
            settings.dedup_window,
            settings.dedup_capacity,
            settings.dedup_capacity_bytes,
        )),
        limits: Mutex::new(RateLimits::default()),
        byte_limits: Mutex::new(RateLimits::default()),
        draining: AtomicBool::new(false),
        schema_id,
        keys: keys.clone(),
        kafka: kafka.clone(),
        settings: settings.clone(),
    });
    let mut background = vec![
        keys.watch(settings.keys_file.clone(), Duration::from_secs(2)),
        kafka.probe(),
        kafka.watch_deadletter_limit(),
    ];
    background.extend(watcher);
    {
        // The ledger, for its size only: batches never wait for it.
        let (kafka, topic, slot) = (
            settings.kafka.clone(),
            settings.forget_topic.clone(),
            gateway.forgotten.clone(),
        );
        background.push(tokio::spawn(async move {
            match context_runtime::forget::follow_configured(&kafka, &topic).await {
                Ok(f) => {
                    let _ = slot.set(f);
                }
                Err(e) => tracing::error!(error = %e, "the forget ledger cannot be read: max_forgotten_installs is not enforced"),
            }
        }));
    }
    let data = web::Data::new(gateway.clone());
    let metrics = web::Data::new(metrics);
    let max_body = settings.limits.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(metrics.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .route("/v1/batch", web::post().to(post_batch))
            .service(
                web::resource("/v1/forget")
                    .app_data(web::PayloadConfig::new(MAX_FORGET_BODY))
                    .route(web::post().to(post_forget)),
            )
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

    fn key(n: u128) -> DedupKey {
        ("app".to_owned(), Uuid::from_u128(n))
    }

    #[test]
    fn dedup_forgets_after_capacity() {
        let mut d = Dedup::new(Duration::from_secs(60), 2, 1 << 20);
        let answer = Arc::new(Accepted {
            accepted: 1,
            rejected: vec![],
        });
        let digest = [1; 32];
        assert!(d.put(key(1), answer.clone(), digest));
        assert!(d.put(key(2), answer.clone(), digest));
        assert!(d.put(key(3), answer, digest));
        assert!(matches!(d.get(&key(1), &digest), Seen::New));
        assert!(matches!(d.get(&key(3), &digest), Seen::Same(_)));
    }

    /// An answer with many long rejections, as a hostile batch gets it.
    fn big_answer(rejections: usize) -> Arc<Accepted> {
        Arc::new(Accepted {
            accepted: 0,
            rejected: (0..rejections)
                .map(|index| Rejected {
                    index,
                    event_id: Some("x".repeat(64)),
                    reason: "invalid_event_id",
                    detail: "y".repeat(512),
                })
                .collect(),
        })
    }

    #[test]
    fn dedup_is_bounded_in_bytes_and_forgets_the_oldest_first() {
        let bound = 200_000;
        let mut d = Dedup::new(Duration::from_secs(60), 100_000, bound);
        let one = remembered_bytes(&key(0), &big_answer(100));
        assert!(one > 100 * (64 + 512), "the strings are counted: {one}");
        for n in 0..50 {
            assert!(d.put(key(n), big_answer(100), [0; 32]));
            assert!(d.bytes <= bound, "{} bytes held, bound {bound}", d.bytes);
        }
        assert_eq!(d.answers.len(), bound / one, "as many as fit");
        assert_eq!(d.bytes, d.answers.values().map(|r| r.bytes).sum::<usize>());
        assert!(matches!(d.get(&key(0), &[0; 32]), Seen::New), "the oldest went first");
        assert!(matches!(d.get(&key(49), &[0; 32]), Seen::Same(_)));
        // One answer larger than the whole memory is not kept (and evicts nothing).
        assert!(!d.put(key(99), big_answer(1000), [0; 32]));
        assert!(matches!(d.get(&key(49), &[0; 32]), Seen::Same(_)));
        // Expired answers give their bytes back.
        let mut d = Dedup::new(Duration::from_millis(1), 10, bound);
        assert!(d.put(key(1), big_answer(10), [0; 32]));
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(d.get(&key(1), &[0; 32]), Seen::New));
        assert_eq!((d.bytes, d.answers.len(), d.order.len()), (0, 0, 0));
    }

    #[test]
    fn a_batch_id_reused_for_another_body_is_told_apart() {
        let mut d = Dedup::new(Duration::from_secs(600), 10, 1 << 20);
        let answer = Arc::new(Accepted {
            accepted: 3,
            rejected: vec![],
        });
        assert!(d.put(key(1), answer, [1; 32]));
        assert!(matches!(d.get(&key(1), &[1; 32]), Seen::Same(a) if a.accepted == 3));
        match d.get(&key(1), &[2; 32]) {
            Seen::Reused { retry_after } => assert!((590..=600).contains(&retry_after), "{retry_after}"),
            _ => panic!("another body under the same batch_id must not get the first answer"),
        }
        // Another app's batch of the same id is its own.
        assert!(matches!(
            d.get(&("other".to_owned(), Uuid::from_u128(1)), &[2; 32]),
            Seen::New
        ));
        // Two answers of one batch_id at once: the later one is kept, once.
        let later = Arc::new(Accepted {
            accepted: 4,
            rejected: vec![],
        });
        assert!(d.put(key(1), later, [2; 32]));
        assert!(matches!(d.get(&key(1), &[2; 32]), Seen::Same(a) if a.accepted == 4));
        assert_eq!((d.answers.len(), d.order.len()), (1, 1));
    }
}
