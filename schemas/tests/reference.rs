//! The signal reference in docs/ must match the schema it is generated from.

use context_schemas::reference;

#[test]
fn signal_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(reference::REFERENCE_PATH);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == reference::render(),
        "{} is stale: run `cargo run -p context-schemas --bin schemas -- docs --write`",
        path.display()
    );
}

#[test]
fn reference_lists_every_signal_with_unit() {
    let text = reference::render();
    for s in &context_schemas::catalog().signals {
        let row = format!("| `{}` | {} | {} |", s.name, s.kind, s.unit);
        assert!(text.contains(&row), "missing row for {}", s.name);
    }
}
