//! The recorder the binaries install renders what the services count.

#[test]
fn installed_recorder_renders_counters() {
    let handle = context_runtime::install_metrics().expect("first install");
    metrics::counter!("runtime_test_total", "kind" => "a").increment(3);
    let text = handle.render();
    assert!(text.contains("runtime_test_total{kind=\"a\"} 3"), "{text:?}");
    assert!(
        context_runtime::install_metrics().is_none(),
        "a second install is refused"
    );
}
