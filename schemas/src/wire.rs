//! The Confluent wire format: one magic byte `0`, the schema id as a 4-byte
//! big-endian integer, then the Avro binary body.

use crate::error::SchemaError;

/// The first byte of every Confluent-framed record.
pub const MAGIC: u8 = 0;
/// Bytes before the Avro body.
pub const HEADER_LEN: usize = 5;

/// Frames an Avro body with its schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    write_header(schema_id, &mut out);
    out.extend_from_slice(body);
    out
}

/// Appends the 5-byte header to `out`, for callers that encode the body in place.
pub fn write_header(schema_id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// Splits a framed record into its schema id and Avro body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), SchemaError> {
    if bytes.len() < HEADER_LEN {
        return Err(SchemaError::Wire(format!(
            "{} bytes is shorter than the 5-byte header",
            bytes.len()
        )));
    }
    if bytes[0] != MAGIC {
        return Err(SchemaError::Wire(format!(
            "first byte is {:#04x}, expected the magic byte 0x00",
            bytes[0]
        )));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_then_unframe() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(unframe(&framed).unwrap(), (0x0102_0304, &b"body"[..]));
    }

    #[test]
    fn rejects_short_and_wrong_magic() {
        assert!(unframe(&[0, 0, 0]).unwrap_err().to_string().contains("shorter"));
        assert!(unframe(&[1, 0, 0, 0, 1, 9]).unwrap_err().to_string().contains("magic"));
    }
}
