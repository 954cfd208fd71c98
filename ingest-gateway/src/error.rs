//! Errors of the request path and what each means for the client.

use thiserror::Error;

/// Why a request body cannot be taken as a batch. Each maps to one HTTP
/// answer; none of them is helped by retrying the same bytes.
#[derive(Debug, Error)]
pub enum BatchError {
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

impl BatchError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            BatchError::UnsupportedEncoding(_) | BatchError::UnsupportedContentType(_) => 415,
            BatchError::TooLarge(_) => 413,
            BatchError::BadCompression(_) | BatchError::NotABatch(_) => 400,
        }
    }
}
