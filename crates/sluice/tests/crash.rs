//! kill -9 while uploads are in flight: every upload that got a 200 is there after restart,
//! with its stream record, and gets processed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DataDir, Server};
use serde_json::Value;

const ROUNDS: usize = 3;
const WRITERS: usize = 8;
/// Acknowledged uploads to wait for before pulling the plug.
const ACKED_BEFORE_KILL: usize = 150;

#[test]
fn acknowledged_uploads_survive_kill_9() {
    let dir = DataDir::new("crash");
    let mut server = Server::start(&dir.0);
    server.create_user("me@example.com");
    let token = server.id_token("me@example.com");
    let (api, edge) = (server.api.clone(), server.edge.clone());
    // (upload id, content) of every upload that was acknowledged, over all rounds.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.lock().expect("lock").len();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (stop, acked, token, api) =
                (stop.clone(), acked.clone(), token.clone(), api.clone());
            writers.push(std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let content = format!("round {round} writer {w} upload {i}");
                    let resp = http
                        .post(format!("{api}/uploads"))
                        .bearer_auth(&token)
                        .header("Content-Type", "application/json")
                        .body(
                            serde_json::json!({
                                "filename": format!("r{round}-w{w}-{i}.txt"),
                                "content": content,
                            })
                            .to_string(),
                        )
                        .send();
                    match resp {
                        Ok(r) if r.status() == 200 => {
                            if let Ok(v) = r.json::<Value>()
                                && let Some(id) = v["uploadId"].as_str()
                            {
                                acked.lock().expect("lock").push((id.to_owned(), content));
                            }
                        }
                        // The server died under us: whatever was not acknowledged may be
                        // lost; stop writing.
                        _ => break,
                    }
                }
            }));
        }
        while acked.lock().expect("lock").len() < before + ACKED_BEFORE_KILL {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let _ = w.join();
        }
        server = Server::restart(&dir.0, &api, &edge);
    }

    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= ROUNDS * ACKED_BEFORE_KILL);
    for (id, content) in &acked {
        let status = server.wait_final(&token, id);
        assert_eq!(status["status"], "processed", "{status}");
        let (_, body) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
        assert_eq!(String::from_utf8_lossy(&body), *content);
        let (_, out) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
        assert_eq!(String::from_utf8_lossy(&out), content.to_uppercase());
    }
    server.stop();
}
