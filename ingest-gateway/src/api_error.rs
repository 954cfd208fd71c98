//! One [`ApiError`] per answer other than 200, with its status, its `error`
//! kind in the JSON body and, when waiting helps, `Retry-After`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use thiserror::Error;
use uuid::Uuid;

use crate::error::BatchError;
use crate::validate::{clip, MAX_MESSAGE_BYTES};

/// Every answer of `POST /v1/batch` other than 200. A client may retry the
/// same body after any of them; only those with [`ApiError::retry_after`]
/// can succeed unchanged.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("send `Authorization: Bearer <api key>`")]
    MissingKey,
    #[error("unknown API key")]
    UnknownKey,
    #[error("the key of app `{0}` is disabled")]
    DisabledKey(String),
    #[error("app `{app}` is over its rate limit of {rate} events/s")]
    RateLimited { app: String, rate: f64, retry_after: u64 },
    /// The app's bucket of decompressed bytes (`rate_limit_bytes_per_s`)
    /// has not enough for this batch.
    #[error("app `{app}` is over its rate limit of {rate} decompressed bytes/s")]
    BytesRateLimited { app: String, rate: u64, retry_after: u64 },
    /// 409: the app's `batch_id` was answered within `dedup_window` for a
    /// different body. Nothing of this body was stored; the same body
    /// succeeds once the first answer is forgotten (`retry_after`), and its
    /// events at once under a new `batch_id`.
    #[error("batch_id {batch_id} was already answered for a different body; nothing of this body was stored: send its events under a new batch_id, or this body again after Retry-After")]
    BatchIdReused { batch_id: Uuid, retry_after: u64 },
    #[error("too many bytes in flight; retry shortly")]
    Busy,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A consumer group that must keep up with the events topic is so far
    /// behind that unread records could expire (`[backpressure]`): the
    /// client keeps its batch and sends it again after `retry_after`.
    #[error("the platform is behind ({reason}); nothing of this batch was stored: keep it and send it again after Retry-After")]
    Backpressure { reason: String, retry_after: u64 },
    #[error("{reason}; nothing is lost by retrying this batch")]
    Unavailable { reason: String, retry_after: u64 },
    /// Kafka refuses the records for good (size limit of the topic, no
    /// permission, a policy): an operator must act; nothing was
    /// acknowledged, so the client keeps the batch and sends it again after
    /// [`KAFKA_REFUSED_RETRY_AFTER`]. (A missing topic is not for good: it
    /// may be being created or moved, and is answered 503.)
    #[error("Kafka refuses this batch until the gateway's topics or permissions are fixed: {0}; nothing of it was stored, keep it and send it again later")]
    KafkaRefused(String),
    /// A `POST /v1/forget` body that is not `{"install_id": "<uuid>"}`.
    #[error("{0}")]
    BadForget(String),
    #[error("{0}")]
    Internal(String),
}

/// Seconds a client waits before resending a batch Kafka refused for good:
/// long, because a person must change the topic or the permissions first,
/// and a phone's retries should not hammer the gateway meanwhile.
pub const KAFKA_REFUSED_RETRY_AFTER: u64 = 900;

impl ApiError {
    /// The `error` field of the JSON body.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Batch(BatchError::TooLarge(_)) => "too_large",
            ApiError::Batch(BatchError::UnsupportedEncoding(_) | BatchError::UnsupportedContentType(_)) => {
                "unsupported_media_type"
            }
            ApiError::Batch(BatchError::BadCompression(_) | BatchError::NotABatch(_)) => "not_a_batch",
            ApiError::MissingKey | ApiError::UnknownKey => "unauthorized",
            ApiError::DisabledKey(_) => "forbidden",
            ApiError::RateLimited { .. } | ApiError::BytesRateLimited { .. } => "rate_limited",
            ApiError::BatchIdReused { .. } => "batch_id_reused",
            ApiError::Busy | ApiError::Batch(BatchError::OverBudget) => "busy",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Backpressure { .. } => "backpressure",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::KafkaRefused(_) => "kafka_refused",
            ApiError::BadForget(_) => "bad_request",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Seconds after which the same request can succeed, when waiting helps.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::BytesRateLimited { retry_after, .. }
            | ApiError::BatchIdReused { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. }
            | ApiError::Backpressure { retry_after, .. } => Some(*retry_after),
            ApiError::Busy | ApiError::ShuttingDown | ApiError::Batch(BatchError::OverBudget) => Some(1),
            ApiError::KafkaRefused(_) => Some(KAFKA_REFUSED_RETRY_AFTER),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Batch(BatchError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Batch(BatchError::UnsupportedEncoding(_) | BatchError::UnsupportedContentType(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Batch(BatchError::BadCompression(_) | BatchError::NotABatch(_)) | ApiError::BadForget(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::MissingKey | ApiError::UnknownKey => StatusCode::UNAUTHORIZED,
            ApiError::DisabledKey(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } | ApiError::BytesRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BatchIdReused { .. } => StatusCode::CONFLICT,
            ApiError::Busy
            | ApiError::ShuttingDown
            | ApiError::Unavailable { .. }
            | ApiError::Backpressure { .. }
            | ApiError::Batch(BatchError::OverBudget) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::KafkaRefused(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        metrics::counter!("gateway_requests_total", "status" => status.as_u16().to_string()).increment(1);
        let mut answer = HttpResponse::build(status);
        if let Some(seconds) = self.retry_after() {
            answer.insert_header((header::RETRY_AFTER, seconds));
        }
        let message = self.to_string();
        answer.json(serde_json::json!({"error": self.kind(), "message": clip(&message, MAX_MESSAGE_BYTES)}))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    #[test]
    fn each_answer_has_its_status_kind_and_retry_after() {
        let cases = [
            (ApiError::from(BatchError::TooLarge("x".into())), 413, "too_large", None),
            (
                ApiError::from(BatchError::NotABatch("x".into())),
                400,
                "not_a_batch",
                None,
            ),
            (
                ApiError::from(BatchError::UnsupportedEncoding("br".into())),
                415,
                "unsupported_media_type",
                None,
            ),
            (ApiError::UnknownKey, 401, "unauthorized", None),
            (ApiError::DisabledKey("a".into()), 403, "forbidden", None),
            (
                ApiError::RateLimited {
                    app: "a".into(),
                    rate: 5.0,
                    retry_after: 3,
                },
                429,
                "rate_limited",
                Some("3"),
            ),
            (
                ApiError::BytesRateLimited {
                    app: "a".into(),
                    rate: 1000,
                    retry_after: 2,
                },
                429,
                "rate_limited",
                Some("2"),
            ),
            (
                ApiError::BatchIdReused {
                    batch_id: Uuid::nil(),
                    retry_after: 600,
                },
                409,
                "batch_id_reused",
                Some("600"),
            ),
            (
                ApiError::from(BatchError::NotABatch("z".repeat(100_000))),
                400,
                "not_a_batch",
                None,
            ),
            (ApiError::Busy, 503, "busy", Some("1")),
            (ApiError::from(BatchError::OverBudget), 503, "busy", Some("1")),
            (
                ApiError::Unavailable {
                    reason: "broker down".into(),
                    retry_after: 7,
                },
                503,
                "unavailable",
                Some("7"),
            ),
        ];
        for (e, status, kind, retry) in cases {
            let r = e.error_response();
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(
                r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
                retry,
                "{e}"
            );
            let body = r.into_body().try_into_bytes().unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], kind);
            let message = json["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{e}");
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "a message of {} bytes",
                message.len()
            );
        }
    }
}
