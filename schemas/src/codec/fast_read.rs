//! The reading side of [`super::fast_write`]: `ContextEvent` bodies of the current
//! schema read straight from bytes, strictly (a truncated body, an unknown
//! union branch or trailing bytes are errors). Older writer schemas go
//! through `apache_avro`'s resolution instead.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::catalog::{catalog, SignalKind};
use crate::event::{Axes3, ContextEvent, DeviceFacts, Motion, Sdk, SignalValue, Signals};

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("the body is truncated")?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn long(&mut self) -> R<i64> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err("a varint is longer than 10 bytes".into())
    }

    fn len(&mut self) -> R<usize> {
        usize::try_from(self.long()?).map_err(|_| "a negative length".to_string())
    }

    fn string(&mut self) -> R<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    fn uuid(&mut self) -> R<Uuid> {
        let n = self.len()?;
        let s = std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())?;
        Uuid::parse_str(s).map_err(|e| format!("`{s}` is not a UUID: {e}"))
    }

    fn f64(&mut self) -> R<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn branch(&mut self) -> R<bool> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(format!("union branch {n} does not exist")),
        }
    }

    fn floats(&mut self) -> R<Vec<f32>> {
        let mut out = Vec::new();
        loop {
            let mut n = self.long()?;
            if n == 0 {
                return Ok(out);
            }
            if n < 0 {
                n = -n;
                self.long()?; // block size in bytes
            }
            let n = n as usize;
            let raw = self.take(n.checked_mul(4).ok_or("an array is too long")?)?;
            out.extend(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            );
        }
    }

    fn axes(&mut self) -> R<Axes3> {
        Ok(Axes3 {
            x: self.floats()?,
            y: self.floats()?,
            z: self.floats()?,
        })
    }
}

pub(super) fn context_event(bytes: &[u8]) -> R<ContextEvent> {
    let mut r = Reader { bytes, pos: 0 };
    let event_id = r.uuid()?;
    let batch_id = r.uuid()?;
    let app_id = r.string()?;
    let session_id = r.uuid()?;
    let install_id = r.uuid()?;
    let sdk = Sdk {
        name: r.string()?,
        version: r.string()?,
    };
    let (model, os_name, os_version) = (r.string()?, r.string()?, r.string()?);
    let mut extra = BTreeMap::new();
    loop {
        let mut n = r.long()?;
        if n == 0 {
            break;
        }
        if n < 0 {
            n = -n;
            r.long()?;
        }
        for _ in 0..n {
            let k = r.string()?;
            extra.insert(k, r.string()?);
        }
    }
    let (client_timestamp, sent_at, received_at, timestamp) = (r.long()?, r.long()?, r.long()?, r.long()?);
    let time_suspect = match r.take(1)?[0] {
        0 => false,
        1 => true,
        b => return Err(format!("boolean byte {b} for time_suspect")),
    };
    let mut signals = Signals::default();
    for spec in &catalog().signals {
        if r.branch()? {
            let v = match spec.kind {
                SignalKind::Double => SignalValue::Double(r.f64()?),
                SignalKind::Long => SignalValue::Long(r.long()?),
                SignalKind::Boolean => match r.take(1)?[0] {
                    0 => SignalValue::Boolean(false),
                    1 => SignalValue::Boolean(true),
                    b => return Err(format!("boolean byte {b}")),
                },
                SignalKind::String => SignalValue::String(r.string()?),
            };
            signals.set_at(spec, v).map_err(|e| e.to_string())?;
        }
    }
    let motion = if r.branch()? {
        Some(Motion {
            sample_rate_hz: r.f64()?,
            accelerometer: r.axes()?,
            gyroscope: r.axes()?,
        })
    } else {
        None
    };
    if r.pos != bytes.len() {
        return Err(format!("{} bytes left over after the record", bytes.len() - r.pos));
    }
    Ok(ContextEvent {
        event_id,
        batch_id,
        app_id,
        session_id,
        install_id,
        sdk,
        device: DeviceFacts {
            model,
            os_name,
            os_version,
            extra,
        },
        client_timestamp,
        sent_at,
        received_at,
        timestamp,
        time_suspect,
        signals,
        motion,
    })
}
