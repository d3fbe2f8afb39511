//! What operators see: `/metrics` counts what the pipeline did (and never turns request
//! input into label values), `/readyz` reports the engines, `--log-format json` writes one
//! JSON object per line. (`/readyz` with an engine down: `tests/faults.rs`.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{DataDir, Server};
use serde_json::{Value, json};

/// One sample of the Prometheus text format: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format's sample lines (comments skipped). Label values here never hold
/// `,` or `"` (module documentation of `telemetry`), which keeps this parser small.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one series `name{labels}` (exactly those labels), if present.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The sum over every series of `name` (whatever its labels).
fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn scrape(server: &Server) -> (String, Vec<Sample>) {
    let r = server
        .http
        .get(format!("{}/metrics", server.api))
        .send()
        .expect("metrics");
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().expect("metrics text");
    let samples = parse(&text);
    (text, samples)
}

#[test]
fn metrics_count_what_the_pipeline_did_with_bounded_labels() {
    let dir = DataDir::new("metrics");
    let server = Server::start(&dir.0);
    server.create_user("m@example.com");
    let token = server.id_token("m@example.com");

    // Two uploads, processed; their status read by id.
    let mut ids = Vec::new();
    let contents = ["first metrics upload", "second"];
    for (i, content) in contents.iter().enumerate() {
        let r = server.upload(&token, &format!("m-{i}.txt"), content);
        assert_eq!(r.status(), 200);
        let body: Value = r.json().expect("json");
        ids.push(body["uploadId"].as_str().expect("uploadId").to_owned());
    }
    for id in &ids {
        assert_eq!(server.wait_final(&token, id)["status"], "processed");
    }
    // Refusals: a malformed bearer token, a wrong password, an unsigned Kinesis call, and
    // operations nobody knows (made-up names must not become label values).
    let r = server
        .http
        .post(format!("{}/uploads", server.api))
        .bearer_auth("not-a-jwt")
        .body("{}")
        .send()
        .expect("upload");
    assert_eq!(r.status(), 401);
    let client_id = server.info()["clientId"]
        .as_str()
        .expect("clientId")
        .to_owned();
    let (status, _) = server.cognito(
        "InitiateAuth",
        json!({
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": client_id,
            "AuthParameters": {"USERNAME": "m@example.com", "PASSWORD": "Wrong-password-1"},
        }),
    );
    assert_eq!(status, 400);
    for target in [
        "Kinesis_20131202.ListStreams",
        "Kinesis_20131202.MadeUpOperationXyzzy",
        "NoSuchService.MadeUpOperationXyzzy",
    ] {
        let r = server
            .http
            .post(format!("{}/", server.edge))
            .header("x-amz-target", target)
            .header("content-type", "application/x-amz-json-1.1")
            .body("{}")
            .send()
            .expect("edge call");
        assert_eq!(r.status(), 400, "{target}");
    }
    let r = server
        .http
        .request(
            reqwest::Method::from_bytes(b"XYZZYMETHOD").expect("method"),
            format!("{}/some/bucket", server.edge),
        )
        .send()
        .expect("odd method");
    assert!(r.status().is_client_error() || r.status().is_server_error());

    // The mapping's metrics are written after its outputs: wait until both invocations
    // are counted.
    let samples = common::wait_for("the mapping's invocations", Duration::from_secs(30), || {
        let (_, samples) = scrape(&server);
        (total(&samples, "sluice_mapping_invocation_records_total") >= 2.0).then_some(samples)
    });
    let (text, _) = scrape(&server);

    let api = |route: &str, status: &str| {
        value(
            &samples,
            "sluice_http_requests_total",
            &[("listener", "api"), ("route", route), ("status", status)],
        )
    };
    assert_eq!(api("/uploads", "200"), Some(2.0), "{text}");
    assert_eq!(api("/uploads", "401"), Some(1.0), "{text}");
    assert!(api("/uploads/{id}", "200").unwrap_or(0.0) >= 2.0, "{text}");
    assert!(api("/healthz", "200").unwrap_or(0.0) >= 1.0, "{text}");
    let bytes: usize = contents.iter().map(|c| c.len()).sum();
    assert_eq!(
        value(&samples, "sluice_upload_bytes_total", &[("via", "api")]),
        Some(bytes as f64),
        "{text}"
    );
    assert_eq!(
        value(&samples, "sluice_uploads_total", &[("via", "api")]),
        Some(2.0)
    );
    assert!(
        value(
            &samples,
            "sluice_http_request_duration_seconds_count",
            &[("listener", "api"), ("route", "/uploads")],
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{text}"
    );

    // Authentication outcomes, by edge and reason.
    let auth = |edge: &str, result: &str, reason: &str| {
        value(
            &samples,
            "sluice_auth_total",
            &[("edge", edge), ("result", result), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    assert!(auth("api", "success", "ok") >= 4.0, "{text}");
    assert_eq!(auth("api", "failure", "malformed"), 1.0, "{text}");
    assert!(auth("cognito", "success", "ok") >= 1.0, "{text}");
    assert_eq!(auth("cognito", "failure", "not_authorized"), 1.0, "{text}");
    assert!(auth("sigv4", "failure", "missing") >= 2.0, "{text}");

    // The edge: known operations by name, everything else folded.
    let edge = |route: &str, status: &str| {
        value(
            &samples,
            "sluice_http_requests_total",
            &[("listener", "edge"), ("route", route), ("status", status)],
        )
    };
    assert!(
        edge("cognito-idp:InitiateAuth", "200").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(edge("cognito-idp:InitiateAuth", "400"), Some(1.0), "{text}");
    assert_eq!(edge("kinesis:ListStreams", "400"), Some(1.0), "{text}");
    assert!(text.contains("route=\"s3:other\""), "{text}");
    for id in &ids {
        assert!(
            !text.contains(id.as_str()),
            "an upload id became a label: {text}"
        );
    }
    assert!(
        !text.contains("Xyzzy") && !text.contains("XYZZY") && !text.contains("some/bucket"),
        "request input became a label: {text}"
    );

    // The stream, the mapping, the engines, the process.
    // Appends are counted per stream and shard.
    let appended: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "sluice_stream_appended_records_total"
                && s.labels.get("stream").map(String::as_str) == Some("uploads-stream")
                && s.labels
                    .get("shard")
                    .is_some_and(|id| id.starts_with("shardId-"))
        })
        .map(|s| s.value)
        .sum();
    assert!(appended >= 2.0, "{text}");
    assert!(
        value(
            &samples,
            "sluice_stream_read_records_total",
            &[("stream", "uploads-stream")],
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    let mapping = "builtin-uppercase";
    assert!(
        value(
            &samples,
            "sluice_mapping_invocations_total",
            &[("mapping", mapping), ("result", "ok")],
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        value(
            &samples,
            "sluice_mapping_invocation_duration_seconds_count",
            &[("mapping", mapping)],
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        total(&samples, "sluice_mapping_errors_total"),
        0.0,
        "{text}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "sluice_mapping_iterator_age_seconds"
                && s.labels.get("mapping").map(String::as_str) == Some(mapping)
                && s.labels.contains_key("shard")),
        "{text}"
    );
    // Group commits and their fsyncs (whichever metadata engine the suite runs on).
    assert!(
        total(&samples, "sluice_meta_commit_batch_size_count") >= 2.0,
        "{text}"
    );
    assert!(
        total(&samples, "sluice_meta_fsync_duration_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("sluice_meta_fsync_duration_seconds_bucket{"),
        "a histogram, with buckets: {text}"
    );
    // The record engine's durable writes: the stream log's fsyncs, or JetStream's acks.
    let records_metric = if common::records_on_nats() {
        "sluice_records_ack_duration_seconds_count"
    } else {
        "sluice_records_fsync_duration_seconds_count"
    };
    assert!(total(&samples, records_metric) >= 1.0, "{text}");
    assert!(
        total(&samples, "sluice_process_resident_memory_bytes") > 1e6,
        "{text}"
    );
    assert!(total(&samples, "sluice_process_open_fds") > 3.0, "{text}");
    assert_eq!(total(&samples, "sluice_build_info"), 1.0, "{text}");

    // Every exported metric is documented, and the dashboard charts only documented ones.
    let docs_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let documented = std::fs::read_to_string(docs_dir.join("METRICS.md")).expect("METRICS.md");
    let base = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_owned()
    };
    for s in &samples {
        let name = base(&s.name);
        assert!(
            documented.contains(&format!("`{name}`")),
            "{name} is not in docs/METRICS.md"
        );
    }
    let dashboard =
        std::fs::read_to_string(docs_dir.join("grafana-dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("sluice_") {
                    let name = base(word);
                    assert!(
                        documented.contains(&format!("`{name}`")),
                        "the dashboard charts {name}, which docs/METRICS.md does not list"
                    );
                    charted += 1;
                }
            }
        }
    }
    assert!(charted >= 14, "{charted}");
    server.stop();
}

#[test]
fn readyz_reports_the_engines_and_json_logs_are_one_object_per_line() {
    let dir = DataDir::new("readyz");
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_LOG_FORMAT", "json"),
            ("SLUICE_LOG", "info,sluice_gateway=debug,sluice=debug"),
        ],
    );
    let r = server
        .http
        .get(format!("{}/readyz", server.api))
        .send()
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().expect("json");
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"meta": "ok", "blobs": "ok"}})
    );
    // One API request and one edge request, each logged with its request id at debug.
    let r = server
        .http
        .get(format!("{}/uploads/nope", server.api))
        .send()
        .expect("get");
    assert_eq!(r.status(), 401);
    let api_request_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    let r = server
        .http
        .post(format!("{}/", server.edge))
        .header("x-amz-target", "Kinesis_20131202.ListStreams")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .expect("edge");
    let edge_request_id = r
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .expect("x-amzn-requestid")
        .to_owned();
    let log_path = server.cwd.join("server.log");
    server.stop();
    let log = std::fs::read_to_string(&log_path).expect("server.log");
    let mut lines = 0;
    let mut seen = (false, false);
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
        if v["request_id"] == api_request_id.as_str() {
            seen.0 = true;
            assert_eq!(v["status"], 401, "{line}");
        }
        if v["request_id"] == edge_request_id.as_str() {
            seen.1 = true;
            assert_eq!(v["route"], "kinesis:ListStreams", "{line}");
        }
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    assert!(
        seen.0 && seen.1,
        "both requests logged with their ids: {log}"
    );
}

/// `metrics = false`: nothing is recorded or exported; the server works as before.
#[test]
fn metrics_can_be_turned_off() {
    let dir = DataDir::new("metrics-off");
    dir.write_config("metrics = false\n");
    let server = Server::start(&dir.0);
    let r = server
        .http
        .get(format!("{}/metrics", server.api))
        .send()
        .expect("metrics");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().expect("json");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("metrics are off")),
        "{v}"
    );
    server.create_user("off@example.com");
    let token = server.id_token("off@example.com");
    let r = server.upload(&token, "off.txt", "still works");
    assert_eq!(r.status(), 200);
    server.stop();
}
