//! The signal reference in `docs/signals.md`, generated from the catalogue.
//!
//! `schemas docs --write` regenerates the file; a test fails when it is stale.

use std::fmt::Write;

use crate::catalog::{catalog, SignalKind, SignalSpec};

/// Path of the generated reference, relative to the repository root.
pub const REFERENCE_PATH: &str = "docs/signals.md";

/// Renders the whole reference as Markdown.
pub fn render() -> String {
    let cat = catalog();
    let mut out = String::new();
    let _ = writeln!(out, "# Signal reference");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Generated from `schemas/avro/context_event.avsc` by `cargo run -p context-schemas --bin schemas -- docs --write`; \
         do not edit by hand. {} signals in {} groups. Every signal is optional (`null` when the SDK did not send it). \
         The range is the documented valid range: the gateway rejects an event whose value lies outside it.",
        cat.len(),
        cat.groups.len()
    );
    for group in &cat.groups {
        let _ = writeln!(out);
        let _ = writeln!(out, "## `{}`", group.name);
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", group.doc);
        let _ = writeln!(out);
        let _ = writeln!(out, "| signal | type | unit | valid values | meaning |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for spec in &cat.signals[group.signals.clone()] {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                spec.name,
                spec.kind,
                spec.unit,
                valid_values(spec),
                spec.doc.replace('|', "\\|")
            );
        }
    }
    out
}

fn valid_values(spec: &SignalSpec) -> String {
    match spec.kind {
        SignalKind::Double | SignalKind::Long => match (spec.min, spec.max) {
            (Some(min), Some(max)) => format!("{min} to {max}"),
            _ => String::new(),
        },
        SignalKind::Boolean => "true, false".into(),
        SignalKind::String => match (&spec.allowed, spec.max_length) {
            (Some(allowed), _) => allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", "),
            (None, Some(len)) => format!("text, at most {len} bytes"),
            (None, None) => "text".into(),
        },
    }
}
