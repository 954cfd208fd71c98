//! The signal catalogue, read from the `signals` record of `context_event.avsc`.
//!
//! Each signal field in the schema is `["null", <type>]` with a `doc` and the
//! custom attributes `unit`, `min`/`max` (numbers), `allowed` or `max_length`
//! (strings). The catalogue keeps them in schema order; that order is also the
//! index into [`crate::event::Signals`].

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::contract::CONTEXT_EVENT_AVSC;
use crate::error::SchemaError;

/// The Avro type of a signal (always wrapped in a union with `null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalKind {
    Double,
    Long,
    Boolean,
    String,
}

impl SignalKind {
    fn parse(avro: &str) -> Option<Self> {
        Some(match avro {
            "double" => SignalKind::Double,
            "long" => SignalKind::Long,
            "boolean" => SignalKind::Boolean,
            "string" => SignalKind::String,
            _ => return None,
        })
    }

    /// The Avro primitive type name.
    pub fn avro_name(self) -> &'static str {
        match self {
            SignalKind::Double => "double",
            SignalKind::Long => "long",
            SignalKind::Boolean => "boolean",
            SignalKind::String => "string",
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.avro_name())
    }
}

/// One signal of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSpec {
    /// Position in schema order; the index into [`crate::event::Signals`].
    pub index: usize,
    /// Field name, unique across all groups; the JSON key the SDK sends.
    pub name: String,
    /// The group (Avro field of `signals`) the signal belongs to.
    pub group: String,
    pub kind: SignalKind,
    pub unit: String,
    pub doc: String,
    /// Documented valid range for numbers, inclusive.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The values a string signal may take, when it is an enumeration.
    pub allowed: Option<Vec<String>>,
    /// Longest accepted free-text string, in bytes.
    pub max_length: Option<usize>,
}

/// One group of signals (an Avro record nested in `signals`).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub record_name: String,
    pub doc: String,
    /// The indices of its signals in the catalogue.
    pub signals: Range<usize>,
}

/// All signals of the contract, in schema order.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub signals: Vec<SignalSpec>,
    pub groups: Vec<GroupSpec>,
    /// Looked up once per signal of every event on the gateway's hot path:
    /// foldhash, not SipHash. Only the catalogue's own names are inserted,
    /// so a client's names cannot degrade it (no hash flooding).
    by_name: HashMap<String, usize, foldhash::fast::RandomState>,
}

/// The catalogue of the embedded `context_event.avsc`, parsed once.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::from_avsc(CONTEXT_EVENT_AVSC).unwrap_or_else(|e| panic!("embedded context_event.avsc: {e}"))
    })
}

impl Catalog {
    /// Reads the catalogue out of a `ContextEvent` schema text.
    pub fn from_avsc(avsc: &str) -> Result<Self, SchemaError> {
        let root: Json = serde_json::from_str(avsc)
            .map_err(|e| SchemaError::Contract(format!("context_event.avsc is not JSON: {e}")))?;
        let signals_field = fields(&root, "ContextEvent")?
            .iter()
            .find(|f| f["name"] == "signals")
            .ok_or_else(|| SchemaError::Contract("ContextEvent has no `signals` field".into()))?;
        let mut signals = Vec::new();
        let mut groups = Vec::new();
        let mut by_name = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for group in fields(&signals_field["type"], "signals")? {
            let group_name = str_attr(group, "name", "a signal group")?;
            let record = &group["type"];
            let start = signals.len();
            for field in fields(record, &group_name)? {
                let spec = parse_signal(field, &group_name, signals.len())?;
                if by_name.insert(spec.name.clone(), spec.index).is_some() {
                    return Err(SchemaError::Contract(format!(
                        "signal `{}` appears twice; names must be unique across groups",
                        spec.name
                    )));
                }
                signals.push(spec);
            }
            groups.push(GroupSpec {
                record_name: str_attr(record, "name", &group_name)?,
                doc: group["doc"].as_str().unwrap_or_default().to_owned(),
                name: group_name,
                signals: start..signals.len(),
            });
        }
        Ok(Catalog {
            signals,
            groups,
            by_name,
        })
    }

    /// The signal called `name`.
    pub fn get(&self, name: &str) -> Option<&SignalSpec> {
        self.by_name.get(name).map(|&i| &self.signals[i])
    }

    /// The number of signals.
    pub fn len(&self) -> usize {
        self.signals.len()
    }

    /// True when the contract declares no signals at all.
    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }
}

fn fields<'a>(record: &'a Json, what: &str) -> Result<&'a Vec<Json>, SchemaError> {
    record["fields"]
        .as_array()
        .ok_or_else(|| SchemaError::Contract(format!("`{what}` is not a record with fields")))
}

fn str_attr(obj: &Json, key: &str, what: &str) -> Result<String, SchemaError> {
    obj[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| SchemaError::Contract(format!("{what} lacks a string `{key}`")))
}

fn parse_signal(field: &Json, group: &str, index: usize) -> Result<SignalSpec, SchemaError> {
    let name = str_attr(field, "name", &format!("a signal of group `{group}`"))?;
    let bad = |problem: &str| SchemaError::Contract(format!("signal `{name}`: {problem}"));
    let kind = match field["type"].as_array().map(Vec::as_slice) {
        Some([null, Json::String(t)]) if null == "null" => {
            SignalKind::parse(t).ok_or_else(|| bad("type must be double, long, boolean or string"))?
        }
        _ => {
            return Err(bad(
                "type must be [\"null\", <primitive>] so that every signal is optional",
            ))
        }
    };
    if !field["default"].is_null() {
        return Err(bad("default must be null"));
    }
    let doc = str_attr(field, "doc", &format!("signal `{name}`"))?;
    let unit = str_attr(field, "unit", &format!("signal `{name}`"))?;
    let min = field["min"].as_f64();
    let max = field["max"].as_f64();
    if matches!(kind, SignalKind::Double | SignalKind::Long) && (min.is_none() || max.is_none()) {
        return Err(bad("numeric signals need `min` and `max` (the documented valid range)"));
    }
    let allowed = field["allowed"].as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    });
    let max_length = field["max_length"].as_u64().map(|n| n as usize);
    if kind == SignalKind::String && allowed.is_none() && max_length.is_none() {
        return Err(bad("string signals need `allowed` values or a `max_length`"));
    }
    Ok(SignalSpec {
        index,
        name,
        group: group.to_owned(),
        kind,
        unit,
        doc,
        min,
        max,
        allowed,
        max_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_has_about_170_unique_signals() {
        let c = catalog();
        assert!(c.len() >= 160, "only {} signals", c.len());
        assert!(c.groups.len() >= 8);
        let level = c.get("battery_level").expect("battery_level");
        assert_eq!(level.kind, SignalKind::Double);
        assert_eq!((level.min, level.max), (Some(0.0), Some(1.0)));
        assert_eq!(level.group, "battery");
        for (i, s) in c.signals.iter().enumerate() {
            assert_eq!(s.index, i);
            assert_eq!(c.get(&s.name).unwrap().index, i);
        }
        let covered: usize = c.groups.iter().map(|g| g.signals.len()).sum();
        assert_eq!(covered, c.len());
    }

    #[test]
    fn rejects_signals_without_range_or_null_default() {
        let avsc = |field: &str| {
            format!(
                r#"{{"type":"record","name":"ContextEvent","fields":[{{"name":"signals","type":
                {{"type":"record","name":"Signals","fields":[{{"name":"g","type":{{"type":"record",
                "name":"G","fields":[{field}]}}}}]}}}}]}}"#
            )
        };
        let no_range = avsc(r#"{"name":"x","type":["null","double"],"default":null,"doc":"d","unit":"u"}"#);
        let err = Catalog::from_avsc(&no_range).unwrap_err().to_string();
        assert!(err.contains("signal `x`") && err.contains("min"), "{err}");
        let not_optional = avsc(r#"{"name":"x","type":"double","doc":"d","unit":"u","min":0,"max":1}"#);
        let err = Catalog::from_avsc(&not_optional).unwrap_err().to_string();
        assert!(err.contains("optional"), "{err}");
        let ok = avsc(r#"{"name":"x","type":["null","long"],"default":null,"doc":"d","unit":"u","min":0,"max":1}"#);
        assert_eq!(Catalog::from_avsc(&ok).unwrap().len(), 1);
    }
}
