//! With no OTLP endpoint in the environment, tandem's spans are never built (logs still go
//! out): tracing must cost nothing on the request path of a deployment that does not export.
//! Its own test binary: the subscriber is process-wide.

#[tokio::test]
async fn without_an_endpoint_spans_are_disabled_and_logs_stay_on() {
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set in the test environment"
        );
    }
    let telemetry = tandem_server::init_telemetry("tandem-test").expect("no OTLP set-up");
    assert!(!telemetry.is_exporting());
    let span = tracing::info_span!(target: "tandem::rpc", "rpc.server", rpc.method = "Recommend");
    assert!(
        span.is_disabled(),
        "a span was built with nothing to export it"
    );
    assert!(
        tracing::enabled!(kind: tracing::metadata::Kind::EVENT, target: "tandem_recommend", tracing::Level::WARN),
        "warnings must still be logged"
    );
}
