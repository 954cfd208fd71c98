//! The `signals` record of `ContextEvent`: one sub-record per catalogue group,
//! one `["null", T]` field per signal, to and from [`Signals`].

use apache_avro::types::Value;

use super::value::{null_or, Fields};
use crate::catalog::catalog;
use crate::error::SchemaError;
use crate::event::{SignalValue, Signals};

fn signal_value(v: &SignalValue) -> Value {
    match v {
        SignalValue::Double(d) => Value::Double(*d),
        SignalValue::Long(l) => Value::Long(*l),
        SignalValue::Boolean(b) => Value::Boolean(*b),
        SignalValue::String(s) => Value::String(s.clone()),
    }
}

pub(super) fn signals_value(signals: &Signals) -> Value {
    let cat = catalog();
    let groups = cat
        .groups
        .iter()
        .map(|g| {
            let fields = cat.signals[g.signals.clone()]
                .iter()
                .map(|spec| (spec.name.clone(), null_or(signals.at(spec.index).map(signal_value))))
                .collect();
            (g.name.clone(), Value::Record(fields))
        })
        .collect();
    Value::Record(groups)
}

pub(super) fn signals_from(mut fields: Fields) -> Result<Signals, SchemaError> {
    let cat = catalog();
    let mut signals = Signals::default();
    for (group_name, group) in std::mem::take(&mut fields.fields) {
        let Value::Record(group) = group else {
            return Err(fields.err(&group_name, "expected a record of signals".into()));
        };
        for (name, value) in group {
            // A reader schema is always the current one, so every field is in
            // the catalogue; skip defensively rather than fail a whole event.
            let Some(spec) = cat.get(&name) else { continue };
            let value = match value {
                Value::Union(_, inner) => *inner,
                v => v,
            };
            let value = match value {
                Value::Null => continue,
                Value::Double(d) => SignalValue::Double(d),
                Value::Float(f) => SignalValue::Double(f64::from(f)),
                Value::Long(l) => SignalValue::Long(l),
                Value::Int(i) => SignalValue::Long(i64::from(i)),
                Value::Boolean(b) => SignalValue::Boolean(b),
                Value::String(s) => SignalValue::String(s),
                other => {
                    return Err(fields.err(&format!("{group_name}.{name}"), format!("unexpected value {other:?}")));
                }
            };
            signals
                .set_at(spec, value)
                .map_err(|e| fields.err(&format!("{group_name}.{name}"), e.to_string()))?;
        }
    }
    Ok(signals)
}
