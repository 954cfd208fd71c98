//! Errors of the request path: why a body is not a batch. The HTTP answers
//! built from them (and from everything else that refuses a request) are in
//! `api_error`.

use thiserror::Error;

/// Why a request body cannot be taken as a batch. None of them is helped by
/// retrying the same bytes, except [`BatchError::OverBudget`].
#[derive(Debug, Error)]
pub enum BatchError {
    /// 503 with `Retry-After`: the body inflates past what the gateway's
    /// budget of bytes in flight has left; the same bytes can succeed later.
    #[error("the body inflates past the bytes in flight the gateway has left; retry shortly")]
    OverBudget,
    /// 415.
    #[error("unsupported Content-Encoding `{0}`; use gzip, zstd or none")]
    UnsupportedEncoding(String),
    /// 415.
    #[error("unsupported Content-Type `{0}`; send application/json")]
    UnsupportedContentType(String),
    /// 413.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// 400.
    #[error("the body is not valid compressed data: {0}")]
    BadCompression(String),
    /// 400.
    #[error("the body is not a batch: {0}")]
    NotABatch(String),
}
