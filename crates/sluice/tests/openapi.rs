//! The upload API against its own OpenAPI 3.1 document (`/openapi.json`): schemathesis (from
//! PyPI; scripts/test installs it) sends generated requests — valid, invalid, and chains
//! that follow an upload from `POST /uploads` to its status and bytes — as a signed-in user,
//! and checks every answer: no 5xx, every status, content type, header and JSON body as the
//! document says, no operation that answers without the token.
//!
//! Three of its checks are left out, each because the API refuses on purpose what the schema
//! cannot express: `positive_data_acceptance` (file names with control characters or
//! Windows device names are schema-valid strings but refused with 400; an upload id whose
//! object a later upload of the same name replaced answers 410), `negative_data_rejection`
//! (multipart text fields and query strings carry no types, and unknown query parameters
//! are ignored, as API Gateway ignores them) and `ensure_resource_availability` (an upload's
//! processed result is 404 until the processor has made it).
//!
//! The live view (`GET /uploads/events`) is left out: its answer is a stream that does not
//! end, which schemathesis can only time out on; `tests/console.rs` checks it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{DataDir, Server};

fn schemathesis() -> PathBuf {
    let cache = std::env::var_os("SLUICE_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or SLUICE_CACHE_DIR"))
                .join(".cache/sluice")
        });
    let st = cache.join("schemathesis/bin/st");
    assert!(
        st.exists(),
        "schemathesis is missing at {}: run scripts/test (it installs \
         tests/openapi/requirements.txt there)",
        st.display()
    );
    st
}

#[test]
fn openapi_describes_what_the_server_answers() {
    let st = schemathesis();
    let dir = DataDir::new("openapi");
    let server = Server::start(&dir.0);
    server.create_user("oa@example.com");
    let token = server.id_token("oa@example.com");

    let doc: serde_json::Value = server
        .http
        .get(format!("{}/openapi.json", server.api))
        .send()
        .expect("openapi.json")
        .json()
        .expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );

    let examples = std::env::var("SLUICE_OPENAPI_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seconds = std::env::var("SLUICE_OPENAPI_SECONDS").unwrap_or_else(|_| "40".into());
    let out = Command::new(&st)
        .arg("run")
        .arg(format!("{}/openapi.json", server.api))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all"])
        .args([
            "--exclude-checks",
            "positive_data_acceptance,negative_data_rejection,ensure_resource_availability",
        ])
        .args(["--exclude-path", "/uploads/events"])
        .args(["--max-examples", &examples, "--max-time", &seconds])
        .args(["--workers", "1", "--request-timeout", "30"])
        // Its cache (`.schemathesis/`) goes to the test's own directory, not the clone.
        .current_dir(&dir.0)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found answers that differ from /openapi.json:\n{report}"
    );
    // It did test every operation (and sent a fair number of requests).
    assert!(report.contains("Tested: 6"), "{report}");
    server.stop();
}
