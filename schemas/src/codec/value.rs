//! Avro values of the records: building them field by field (writing side)
//! and taking a decoded record apart by field name (reading side).

use apache_avro::types::Value;
use uuid::Uuid;

use crate::error::SchemaError;
use crate::event::Axes3;

// ---- building values -------------------------------------------------------

pub(super) fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub(super) fn uuid(u: Uuid) -> Value {
    Value::Uuid(u)
}

pub(super) fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

pub(super) fn ts(micros: i64) -> Value {
    Value::TimestampMicros(micros)
}

pub(super) fn null_or(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn floats(values: &[f32]) -> Value {
    Value::Array(values.iter().map(|&f| Value::Float(f)).collect())
}

pub(super) fn axes(a: &Axes3) -> Value {
    record(vec![("x", floats(&a.x)), ("y", floats(&a.y)), ("z", floats(&a.z))])
}

// ---- reading values --------------------------------------------------------

/// The fields of a decoded record, taken out by name.
pub(super) struct Fields {
    record: &'static str,
    path: String,
    pub(super) fields: Vec<(String, Value)>,
}

impl Fields {
    pub(super) fn new(record: &'static str, path: &str, value: Value) -> Result<Self, SchemaError> {
        match value {
            Value::Record(fields) => Ok(Fields {
                record,
                path: path.to_owned(),
                fields,
            }),
            other => Err(SchemaError::shape(
                record,
                path,
                format!("expected a record, got {other:?}"),
            )),
        }
    }

    pub(super) fn err(&self, field: &str, problem: String) -> SchemaError {
        let path = if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        };
        SchemaError::shape(self.record, path, problem)
    }

    pub(super) fn take(&mut self, name: &str) -> Result<Value, SchemaError> {
        self.fields
            .iter_mut()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::mem::replace(v, Value::Null))
            .ok_or_else(|| self.err(name, "missing".into()))
    }

    pub(super) fn sub(&mut self, name: &str) -> Result<Fields, SchemaError> {
        let value = self.take(name)?;
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Fields::new(self.record, &path, value)
    }

    pub(super) fn uuid(&mut self, name: &str) -> Result<Uuid, SchemaError> {
        match self.take(name)? {
            Value::Uuid(u) => Ok(u),
            Value::String(s) => Uuid::parse_str(&s).map_err(|e| self.err(name, format!("not a UUID: {e}"))),
            other => Err(self.err(name, format!("expected a UUID, got {other:?}"))),
        }
    }

    pub(super) fn string(&mut self, name: &str) -> Result<String, SchemaError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.err(name, format!("expected a string, got {other:?}"))),
        }
    }

    pub(super) fn boolean(&mut self, name: &str) -> Result<bool, SchemaError> {
        match self.take(name)? {
            Value::Boolean(b) => Ok(b),
            other => Err(self.err(name, format!("expected a boolean, got {other:?}"))),
        }
    }

    pub(super) fn timestamp(&mut self, name: &str) -> Result<i64, SchemaError> {
        match self.take(name)? {
            Value::TimestampMicros(t) | Value::Long(t) => Ok(t),
            Value::TimestampMillis(t) => Ok(t.saturating_mul(1000)),
            other => Err(self.err(name, format!("expected a timestamp, got {other:?}"))),
        }
    }

    pub(super) fn double(&mut self, name: &str) -> Result<f64, SchemaError> {
        match self.take(name)? {
            Value::Double(d) => Ok(d),
            Value::Float(f) => Ok(f64::from(f)),
            other => Err(self.err(name, format!("expected a double, got {other:?}"))),
        }
    }

    pub(super) fn float(&mut self, name: &str) -> Result<f32, SchemaError> {
        match self.take(name)? {
            Value::Float(f) => Ok(f),
            other => Err(self.err(name, format!("expected a float, got {other:?}"))),
        }
    }

    fn floats(&mut self, name: &str) -> Result<Vec<f32>, SchemaError> {
        match self.take(name)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Float(f) => Ok(f),
                    other => Err(self.err(name, format!("expected floats, got {other:?}"))),
                })
                .collect(),
            other => Err(self.err(name, format!("expected an array, got {other:?}"))),
        }
    }

    pub(super) fn axes(&mut self, name: &str) -> Result<Axes3, SchemaError> {
        let mut a = self.sub(name)?;
        Ok(Axes3 {
            x: a.floats("x")?,
            y: a.floats("y")?,
            z: a.floats("z")?,
        })
    }

    /// A `["null", T]` union: `None` for null, the inner value otherwise.
    pub(super) fn optional(&mut self, name: &str) -> Result<Option<Value>, SchemaError> {
        Ok(match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => None,
                v => Some(v),
            },
            Value::Null => None,
            v => Some(v),
        })
    }

    pub(super) fn opt_string(&mut self, name: &str) -> Result<Option<String>, SchemaError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(name, format!("expected a string, got {other:?}"))),
        }
    }
}
