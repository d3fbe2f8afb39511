//! Connection bounds, black-box (issue 13, item 4): slow and idle clients are disconnected,
//! the connection cap holds new connections back without stopping the server, and SIGTERM
//! with a slow client connected ends within the shutdown bound; SIGTERM under a load of uploads
//! answers no 5xx, is not held by a live view, and loses no acknowledged upload. Every server here runs with
//! small bounds (a few seconds) set in its `sluice.toml`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{DataDir, Server};
use serde_json::Value;

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn connect(url: &str) -> TcpStream {
    let s = TcpStream::connect(host_port(url)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads from `s` until the server closes it (end of file or reset) and returns how long
/// that took, or `None` if it is still open after `within`. Anything the server writes
/// before closing is ignored.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
        if start.elapsed() > within {
            return None;
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body: (status, body).
fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    while data.len() < head_end + length {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "short body"));
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).to_string();
    Ok((status, body))
}

fn get_healthz(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n")?;
    read_response(s)
}

/// The head of a raw upload of `length` bytes (its body is the caller's to send).
fn upload_head(token: &str, filename: &str, length: usize) -> String {
    format!(
        "POST /uploads?filename={filename} HTTP/1.1\r\nHost: sluice\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[test]
fn slowloris_heads_are_cut_within_the_header_timeout_while_others_are_served() {
    let dir = DataDir::new("conn-slowloris");
    dir.write_config("header_read_timeout_secs = 2\nidle_timeout_secs = 30\n");
    let server = Server::start(&dir.0);

    // On each listener: four clients trickling a request head (a header line every 200 ms,
    // forever) and one that connects and says nothing.
    let mut clients = Vec::new();
    for url in [server.api.clone(), server.edge.clone()] {
        for i in 0..5 {
            let mut s = connect(&url);
            let trickle = i < 4;
            clients.push(std::thread::spawn(move || {
                let start = Instant::now();
                if trickle {
                    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n");
                }
                loop {
                    if trickle && s.write_all(b"X-Slow: 1\r\n").is_err() {
                        return Some(start.elapsed());
                    }
                    if let Some(_closed) = closed_within(&mut s, Duration::from_millis(200)) {
                        return Some(start.elapsed());
                    }
                    if start.elapsed() > Duration::from_secs(15) {
                        return None;
                    }
                }
            }));
        }
    }

    // Meanwhile ordinary clients are served on both listeners.
    for _ in 0..5 {
        let resp = server
            .http
            .get(format!("{}/healthz", server.api))
            .send()
            .expect("healthz while slow clients hold sockets");
        assert_eq!(resp.status(), 200);
        let edge = reqwest::blocking::get(format!("{}/", server.edge))
            .expect("the edge answers while slow clients hold sockets");
        assert!(edge.status().as_u16() < 500, "{}", edge.status());
        std::thread::sleep(Duration::from_millis(300));
    }

    for c in clients {
        let took = c
            .join()
            .expect("client thread")
            .expect("a slow client was never disconnected");
        assert!(
            took >= Duration::from_millis(1500) && took <= Duration::from_secs(6),
            "a slow client was disconnected after {took:?}, header_read_timeout is 2 s"
        );
    }
    let resp = server
        .http
        .get(format!("{}/healthz", server.api))
        .send()
        .expect("healthz after");
    assert_eq!(resp.status(), 200);
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let dir = DataDir::new("conn-idle");
    dir.write_config("idle_timeout_secs = 2\nheader_read_timeout_secs = 10\n");
    let server = Server::start(&dir.0);

    let mut s = connect(&server.api);
    assert_eq!(get_healthz(&mut s).expect("first request").0, 200);
    // Used again within the idle timeout: still open.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(get_healthz(&mut s).expect("second request").0, 200);

    let took = closed_within(&mut s, Duration::from_secs(15))
        .expect("an idle keep-alive connection was never closed");
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(5),
        "an idle connection was closed after {took:?}, idle_timeout is 2 s"
    );
}

#[test]
fn connections_beyond_the_cap_wait_and_are_served_once_the_others_go() {
    let dir = DataDir::new("conn-cap");
    dir.write_config("max_connections = 4\nheader_read_timeout_secs = 30\n");
    let server = Server::start(&dir.0);

    // An existing keep-alive connection.
    let mut existing = connect(&server.api);
    assert_eq!(get_healthz(&mut existing).expect("existing").0, 200);

    // Sockets that connect and hold: they fill the cap (and more wait in the backlog).
    let hogs: Vec<TcpStream> = (0..8).map(|_| connect(&server.api)).collect();
    std::thread::sleep(Duration::from_millis(300));

    // The existing connection is still served while the cap is reached.
    for _ in 0..3 {
        assert_eq!(
            get_healthz(&mut existing)
                .expect("existing connection at the cap")
                .0,
            200
        );
    }

    // A new connection waits: it is not accepted while the cap is reached.
    let mut waiting = connect(&server.api);
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .expect("write");
    waiting
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("read timeout");
    let mut one = [0u8; 1];
    match waiting.read(&mut one) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a connection beyond the cap was answered at once: {other:?}"),
    }

    // The hogs go: the waiting connection is accepted and answered.
    drop(hogs);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut rest = Vec::new();
    let mut buf = [0u8; 1024];
    while !rest.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = waiting
            .read(&mut buf)
            .expect("the waiting connection is answered once the cap frees");
        assert!(n > 0, "the waiting connection was closed unanswered");
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(rest.starts_with(b"HTTP/1.1 200"), "{rest:?}");

    // And the server takes new clients as before.
    let fresh = reqwest::blocking::Client::new();
    for _ in 0..3 {
        let resp = fresh
            .get(format!("{}/healthz", server.api))
            .send()
            .expect("healthz after the load went");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(get_healthz(&mut existing).expect("existing, after").0, 200);
}

#[test]
fn sigterm_finishes_in_flight_requests_cuts_a_slow_client_and_exits_within_the_bound() {
    let dir = DataDir::new("conn-term");
    dir.write_config(
        "shutdown_timeout_secs = 3\nmin_body_bytes_per_sec = 0\n\
         header_read_timeout_secs = 2\nidle_timeout_secs = 2\n",
    );
    let mut server = Server::start(&dir.0);
    server.create_user("conn@example.com");
    let token = server.id_token("conn@example.com");

    // A slow client: an upload whose body never ends (a byte every 200 ms).
    let mut slow = connect(&server.api);
    slow.write_all(upload_head(&token, "slow.bin", 1_000_000).as_bytes())
        .expect("slow head");
    let slow_client = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if slow.write_all(b"s").is_err() {
                return Some(start.elapsed());
            }
            if closed_within(&mut slow, Duration::from_millis(200)).is_some() {
                return Some(start.elapsed());
            }
        }
        None
    });

    // An upload that sends half its body before the signal and the rest after.
    let body = vec![b'x'; 200_000];
    let mut finishing = connect(&server.api);
    finishing
        .write_all(upload_head(&token, "finishing.bin", body.len()).as_bytes())
        .expect("head");
    finishing.write_all(&body[..100_000]).expect("first half");

    // In flight for longer than the header and idle timeouts: neither applies to them.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !slow_client.is_finished(),
        "a request in flight was cut by a header or idle timeout"
    );

    let signalled = Instant::now();
    server.terminate();
    std::thread::sleep(Duration::from_millis(300));
    finishing.write_all(&body[100_000..]).expect("second half");
    let (code, answer) = read_response(&mut finishing).expect("the in-flight upload's answer");
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("json");
    let id = answer["uploadId"].as_str().expect("uploadId").to_owned();

    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("the server did not exit after SIGTERM");
    let took = signalled.elapsed();
    assert!(status.success(), "sluice serve exited with {status}");
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(7),
        "exit {took:?} after SIGTERM; shutdown_timeout is 3 s and a slow client was connected"
    );
    slow_client
        .join()
        .expect("slow client thread")
        .expect("the slow client was never disconnected");

    // The acknowledged upload was kept.
    let (api, edge) = (server.api.clone(), server.edge.clone());
    drop(server);
    let server = Server::restart(&dir.0, &api, &edge);
    let (code, v) = server.status(&token, &id);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["size"], 200_000, "{v}");
    server.stop();
}

#[test]
fn an_upload_slower_than_the_minimum_body_rate_is_cut_but_a_large_fast_one_is_not() {
    let dir = DataDir::new("conn-rate");
    dir.write_config("min_body_bytes_per_sec = 1024\nbody_rate_window_secs = 2\n");
    let server = Server::start(&dir.0);
    server.create_user("rate@example.com");
    let token = server.id_token("rate@example.com");

    // 40 bytes/s against a minimum of 1 KiB/s.
    let mut slow = connect(&server.api);
    slow.write_all(upload_head(&token, "slow.bin", 1_000_000).as_bytes())
        .expect("head");
    let start = Instant::now();
    let mut reader = slow.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        while start.elapsed() < Duration::from_secs(20) {
            if slow.write_all(b"0123456789").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let took = closed_within(&mut reader, Duration::from_secs(15))
        .expect("a trickled upload body was never cut");
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(7),
        "a trickled body was cut after {took:?}; the window is 2 s"
    );
    let _ = writer.join();

    // 48 MiB at full speed, however long it takes, is never cut.
    let size = 48 * 1024 * 1024;
    let resp = server
        .http
        .post(format!("{}/uploads?filename=large.bin", server.api))
        .bearer_auth(&token)
        .header("Content-Type", "application/octet-stream")
        .body(vec![7u8; size])
        .send()
        .expect("large upload");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    let status = server.wait_final(&token, v["uploadId"].as_str().expect("id"));
    assert_eq!(status["size"], size, "{status}");
}

/// SIGTERM in the middle of a load: 8 clients uploading as fast as they can and a live view
/// open. The server stops within a few seconds (the live view ends at shutdown instead of
/// holding it for the whole bound), no request is answered with a 5xx, and after a restart
/// every upload that was acknowledged is there and gets processed.
#[test]
fn sigterm_under_load_answers_no_5xx_and_loses_no_acknowledged_upload() {
    let dir = DataDir::new("conn-load");
    dir.write_config("shutdown_timeout_secs = 20\n");
    let mut server = Server::start(&dir.0);
    server.create_user("load@example.com");
    let token = server.id_token("load@example.com");

    // The live view, open across the shutdown.
    let events = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
        .get(format!("{}/uploads/events", server.api))
        .bearer_auth(&token)
        .send()
        .expect("events");
    assert_eq!(events.status(), 200);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (api, token, stop) = (server.api.clone(), token.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let (mut acked, mut answers) = (Vec::new(), Vec::new());
                let mut i = 0;
                // Until the server is gone (or 60 s, a safety net).
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    i += 1;
                    let r = http
                        .post(format!("{api}/uploads"))
                        .bearer_auth(&token)
                        .header("Content-Type", "application/json")
                        .body(
                            serde_json::json!({"filename": format!("c{c}-{i}.txt"), "content": "under load"})
                                .to_string(),
                        )
                        .send();
                    match r {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            if code == 200 {
                                let v: Value = r.json().expect("json");
                                acked.push(v["uploadId"].as_str().expect("id").to_owned());
                            }
                            answers.push(code);
                        }
                        // Connection refused or closed: the server is stopping.
                        Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => break,
                        Err(e) => panic!("request failed before the signal: {e}"),
                    }
                }
                (acked, answers)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let signalled = Instant::now();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server did not exit after SIGTERM");
    let took = signalled.elapsed();
    assert!(status.success(), "sluice serve exited with {status}");
    assert!(
        took < Duration::from_secs(10),
        "the server took {took:?} to stop: something held the shutdown (the bound is 20 s)"
    );
    drop(events);

    let mut acked = Vec::new();
    for c in clients {
        let (ids, answers) = c.join().expect("client thread");
        assert!(
            answers.iter().all(|code| *code < 500),
            "a 5xx during the shutdown: {answers:?}"
        );
        acked.extend(ids);
    }
    assert!(
        acked.len() >= 8,
        "the load made few uploads: {}",
        acked.len()
    );

    let (api, edge) = (server.api.clone(), server.edge.clone());
    drop(server);
    let server = Server::restart(&dir.0, &api, &edge);
    for id in &acked {
        let v = server.wait_final(&token, id);
        assert_eq!(v["status"], "processed", "{v}");
    }
    server.stop();
}
