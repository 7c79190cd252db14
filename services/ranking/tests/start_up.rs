//! Start-up validation of the `tandem-ranking` binary: bad configuration stops it before it
//! listens, with a message that names what to fix. (Also makes `cargo test --workspace` build
//! this binary, which the gateway's multi-process trace test starts.)

use std::process::Command;

fn ranking(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem-ranking"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .output()
        .expect("run tandem-ranking");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn missing_files_are_named() {
    let (ok, stderr) = ranking(
        &[
            "--listen=127.0.0.1:0",
            "--ort-dylib-path=/nonexistent/libonnxruntime.so",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--ort-dylib-path /nonexistent/libonnxruntime.so does not exist"),
        "{stderr}"
    );
    let this_binary = env!("CARGO_BIN_EXE_tandem-ranking");
    let (ok, stderr) = ranking(
        &[
            "--listen=127.0.0.1:0",
            &format!("--ort-dylib-path={this_binary}"),
            "--model-dir=/nonexistent/models",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("--model-dir /nonexistent/models does not exist"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_otlp_protocol_is_refused_naming_the_variable() {
    let (ok, stderr) = ranking(
        &["--listen=127.0.0.1:0", "--items=/nonexistent/items.parquet"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"carrier-pigeon\"")
            && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}

#[test]
fn collector_tls_files_that_cannot_be_used_are_refused_naming_the_variable() {
    let (ok, stderr) = ranking(
        &["--listen=127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "/nonexistent/collector-ca.pem",
            ),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/collector-ca.pem"),
        "{stderr}"
    );
    let this_binary = env!("CARGO_BIN_EXE_tandem-ranking");
    let (ok, stderr) = ranking(
        &["--listen=127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", this_binary),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE is set")
            && stderr.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY is not"),
        "{stderr}"
    );
    // Not PEM at all: refused at start-up, not on the first export.
    let (ok, stderr) = ranking(
        &["--listen=127.0.0.1:0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/dev/null"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{stderr}"
    );
}
