//! Reading a request body into a batch: decompression with a hard limit,
//! then the JSON envelope with its events kept as raw JSON, so that one bad
//! event is rejected alone instead of failing the whole batch.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Limits;
use crate::error::BatchError;

/// `Content-Encoding` of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Reads a `Content-Encoding` header value.
    pub fn from_header(value: Option<&str>) -> Result<Self, BatchError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
            Some("zstd") => Ok(Encoding::Zstd),
            Some(other) => Err(BatchError::UnsupportedEncoding(other.to_owned())),
        }
    }
}

/// Decompresses `body`, reading at most `max` bytes of output: a body that
/// inflates further is refused as soon as it passes the limit, never after
/// it filled memory.
pub fn decompress(body: &[u8], encoding: Encoding, max: usize) -> Result<Cow<'_, [u8]>, BatchError> {
    decompress_within(body, encoding, max, &mut |_| true)
}

/// [`decompress`], asking `grow` before the output's buffer grows, with the
/// buffer's new size in bytes: `false` stops it with
/// [`BatchError::OverBudget`]. The gateway charges its budget of bytes in
/// flight this way, by what a body really inflates to, not by a guess from
/// its compressed size.
pub fn decompress_within<'b>(
    body: &'b [u8],
    encoding: Encoding,
    max: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Cow<'b, [u8]>, BatchError> {
    fn read_limited(
        mut reader: impl Read,
        max: usize,
        what: &str,
        grow: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<u8>, BatchError> {
        const CHUNK: usize = 64 << 10;
        let mut out = Vec::new();
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => return Ok(out),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BatchError::BadCompression(format!("{what}: {e}"))),
            };
            if out.len() + n > max {
                return Err(BatchError::TooLarge(format!(
                    "the body inflates past the limit of {max} bytes"
                )));
            }
            if out.len() + n > out.capacity() {
                let size = (out.capacity() * 2).max(out.len() + n).max(CHUNK).min(max);
                if !grow(size) {
                    return Err(BatchError::OverBudget);
                }
                out.reserve_exact(size - out.len());
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }
    match encoding {
        Encoding::Identity => Ok(Cow::Borrowed(body)),
        // Every member of a multi-member gzip stream, not only the first.
        Encoding::Gzip => read_limited(flate2::read::MultiGzDecoder::new(body), max, "gzip", grow).map(Cow::Owned),
        Encoding::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(body).map_err(|e| BatchError::BadCompression(format!("zstd: {e}")))?;
            read_limited(decoder, max, "zstd", grow).map(Cow::Owned)
        }
    }
}

/// The SDK that sent the batch. Fields a newer SDK adds (a build number…) are
/// skipped and counted, never a reject.
#[derive(Debug, Deserialize)]
pub struct RawSdk<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

/// Static device facts; facts beyond the named ones are kept as text.
#[derive(Debug, Deserialize)]
pub struct RawDevice<'a> {
    #[serde(borrow)]
    pub install_id: Cow<'a, str>,
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow, default)]
    pub os_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub os_version: Cow<'a, str>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One session's batch as sent, events not yet parsed.
#[derive(Debug, Deserialize)]
pub struct RawBatch<'a> {
    #[serde(borrow)]
    pub batch_id: Cow<'a, str>,
    #[serde(borrow)]
    pub sent_at: Cow<'a, str>,
    #[serde(borrow)]
    pub sdk: RawSdk<'a>,
    #[serde(borrow)]
    pub device: RawDevice<'a>,
    #[serde(borrow)]
    pub session_id: Cow<'a, str>,
    #[serde(borrow)]
    pub events: Vec<&'a RawValue>,
}

/// Parses the envelope of a decompressed body. Anything that is not a batch
/// at all is a [`BatchError::NotABatch`] (400); too many events is
/// [`BatchError::TooLarge`] (413).
pub fn parse_batch<'a>(json: &'a [u8], limits: &Limits) -> Result<RawBatch<'a>, BatchError> {
    let batch: RawBatch<'a> = serde_json::from_slice(json).map_err(|e| BatchError::NotABatch(e.to_string()))?;
    if batch.events.len() > limits.max_events {
        return Err(BatchError::TooLarge(format!(
            "{} events is over the limit of {} per batch",
            batch.events.len(),
            limits.max_events
        )));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 2048, "a 1 MiB bomb compresses to {} bytes", bomb.len());
        let err = decompress(&bomb, Encoding::Gzip, 64 << 10).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge(_)), "{err:?}");
        assert_eq!(decompress(&bomb, Encoding::Gzip, 1 << 20).unwrap().len(), 1 << 20);
        let z = zstd::encode_all(&zeros[..], 3).unwrap();
        assert!(matches!(
            decompress(&z, Encoding::Zstd, 1000),
            Err(BatchError::TooLarge(_))
        ));
        assert!(matches!(
            decompress(b"not gzip", Encoding::Gzip, 1000),
            Err(BatchError::BadCompression(_))
        ));
        // The buffer grows only as far as `grow` allows, asked before each step.
        let mut asked = Vec::new();
        let mut budget = |size: usize| {
            asked.push(size);
            size <= 300 << 10
        };
        assert!(matches!(
            decompress_within(&bomb, Encoding::Gzip, 1 << 20, &mut budget),
            Err(BatchError::OverBudget)
        ));
        assert!(asked.windows(2).all(|w| w[0] < w[1]), "{asked:?}");
        assert!(*asked.last().unwrap() > 300 << 10 && asked[asked.len() - 2] <= 300 << 10);
    }

    #[test]
    fn encodings_are_recognised() {
        assert_eq!(Encoding::from_header(None).unwrap(), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("GZIP")).unwrap(), Encoding::Gzip);
        assert_eq!(Encoding::from_header(Some("zstd")).unwrap(), Encoding::Zstd);
        assert!(matches!(
            Encoding::from_header(Some("br")),
            Err(BatchError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn envelope_errors_and_event_limits() {
        let limits = Limits {
            max_events: 2,
            ..Limits::default()
        };
        let batch = |events: &str| {
            format!(
                r#"{{"batch_id":"b","sent_at":"t","sdk":{{"name":"n","version":"v"}},
                "device":{{"install_id":"i","model":"m","os_version":"17","locale":"de_AT"}},"session_id":"s","events":{events}}}"#
            )
        };
        let ok = batch(r#"[{"a":1},{"b":[1,2]}]"#);
        let parsed = parse_batch(ok.as_bytes(), &limits).unwrap();
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.device.extra["locale"], "de_AT");
        assert!(matches!(
            parse_batch(batch("[1,2,3]").as_bytes(), &limits),
            Err(BatchError::TooLarge(_))
        ));
        assert!(matches!(parse_batch(b"{", &limits), Err(BatchError::NotABatch(_))));
        assert!(matches!(
            parse_batch(batch("{}").as_bytes(), &limits),
            Err(BatchError::NotABatch(_))
        ));
    }
}
