//! Raw-body and multipart uploads are streamed to disk: a large body arrives whole and
//! intact, an oversized one is refused with a 413 and leaves no blob file and no row, a
//! multipart form is an upload like a JSON one, and bad forms are 400s.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{DataDir, Server, rows, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;
/// The server's `max_upload_bytes` in these tests.
const LIMIT: u64 = 40 * MIB;

/// `len` deterministic, non-repeating-looking bytes, produced as they are read: the client
/// streams them (chunked, no Content-Length) rather than sending one buffer.
struct Pattern {
    pos: u64,
    len: u64,
    state: u64,
}

impl Pattern {
    fn new(len: u64) -> Self {
        Pattern {
            pos: 0,
            len,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn all(len: u64) -> Vec<u8> {
        let mut v = Vec::new();
        Pattern::new(len).read_to_end(&mut v).expect("pattern");
        v
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for b in &mut buf[..n] {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The blobs of the data directory's store (files, or objects on the S3 store).
fn blob_files(dir: &std::path::Path) -> usize {
    common::blob_count(dir)
}

fn start(tag: &str) -> (DataDir, Server, String) {
    let dir = DataDir::new(tag);
    let limit = LIMIT.to_string();
    let server = Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[("SLUICE_MAX_UPLOAD_BYTES", &limit)],
    );
    server.create_user("me@example.com");
    let token = server.id_token("me@example.com");
    (dir, server, token)
}

fn raw_upload(
    server: &Server,
    token: &str,
    filename: &str,
    body: reqwest::blocking::Body,
) -> reqwest::blocking::Response {
    server
        .http
        .post(format!("{}/uploads?filename={filename}", server.api))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .expect("raw upload")
}

#[test]
fn large_raw_upload_is_streamed_and_an_oversized_one_leaves_nothing() {
    let (dir, server, token) = start("stream-raw");

    // 30 MiB, chunked: three times the JSON limit.
    let size = 30 * MIB;
    let resp = raw_upload(
        &server,
        &token,
        "big.bin",
        reqwest::blocking::Body::new(Pattern::new(size)),
    );
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    let id = v["uploadId"].as_str().expect("uploadId").to_owned();
    let expected = Pattern::all(size);
    let status = server.wait_final(&token, &id);
    assert_eq!(status["size"], size, "{status}");
    assert_eq!(status["sha256"], hex::encode(Sha256::digest(&expected)));
    assert_eq!(status["contentType"], "application/octet-stream");
    let (code, got) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
    assert_eq!(code, 200);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the content read back differs");
    drop((got, expected));

    // A small raw body is still stored inline (no blob file).
    let blobs = blob_files(&dir.0);
    let resp = raw_upload(&server, &token, "small.bin", b"tiny".to_vec().into());
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    let small = server.wait_final(&token, v["uploadId"].as_str().expect("id"));
    let (_, got) = server.get_bytes(
        &token,
        &format!(
            "/uploads/{}/content",
            small["uploadId"].as_str().expect("id")
        ),
    );
    assert_eq!(got, b"tiny");
    // (its processed output is small too)
    assert_eq!(blob_files(&dir.0), blobs);

    // Over the limit, streamed (no Content-Length, so the server only finds out while
    // writing): 413 with a JSON error; no blob file, no object, no upload row (an upload
    // row is committed with its stream record).
    let objects = rows(&dir.0, "SELECT COUNT(*) FROM objects");
    let uploads = rows(&dir.0, "SELECT COUNT(*) FROM uploads");
    let resp = raw_upload(
        &server,
        &token,
        "huge.bin",
        reqwest::blocking::Body::new(Pattern::new(LIMIT + 3 * MIB)),
    );
    assert_eq!(resp.status(), 413);
    assert!(resp.headers().get("x-request-id").is_some());
    let err: Value = resp.json().expect("json error");
    assert_eq!(err["error"], "payload_too_large", "{err}");
    common::wait_for(
        "the partial blob file to be deleted",
        Duration::from_secs(10),
        || (blob_files(&dir.0) == blobs).then_some(()),
    );
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM objects"), objects);
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM uploads"), uploads);
    assert_eq!(
        rows(
            &dir.0,
            "SELECT COUNT(*) FROM objects WHERE key = 'uploads/huge.bin'"
        ),
        0
    );

    // Exactly at the limit is accepted (with a Content-Length this time).
    let resp = raw_upload(
        &server,
        &token,
        "limit.bin",
        reqwest::blocking::Body::sized(Pattern::new(LIMIT), LIMIT),
    );
    assert_eq!(resp.status(), 200);

    // A bad ?filename= is refused before the body matters.
    let resp = raw_upload(&server, &token, "..evil", b"x".to_vec().into());
    assert_eq!(resp.status(), 400);

    // No token: 401, whatever the body.
    let resp = server
        .http
        .post(format!("{}/uploads?filename=x.bin", server.api))
        .header("Content-Type", "application/octet-stream")
        .body(b"data".to_vec())
        .send()
        .expect("send");
    assert_eq!(resp.status(), 401);
}

fn form_upload(
    server: &Server,
    token: &str,
    form: reqwest::blocking::multipart::Form,
) -> reqwest::blocking::Response {
    server
        .http
        .post(format!("{}/uploads", server.api))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .expect("form upload")
}

fn text_part(text: &str, filename: &str) -> reqwest::blocking::multipart::Part {
    reqwest::blocking::multipart::Part::bytes(text.as_bytes().to_vec())
        .file_name(filename.to_owned())
        .mime_str("text/plain")
        .expect("mime")
}

#[test]
fn multipart_uploads_are_processed_and_bad_forms_refused() {
    use reqwest::blocking::multipart::{Form, Part};
    let (dir, server, token) = start("stream-form");

    // A text file from a form: processed like a JSON upload.
    let resp = form_upload(
        &server,
        &token,
        Form::new().part("file", text_part("hello multipart", "hello.txt")),
    );
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    assert_eq!(v["message"], "Uploaded and queued for processing");
    assert_eq!(v["s3"]["key"], "uploads/hello.txt");
    let id = v["uploadId"].as_str().expect("id").to_owned();
    let done = server.wait_final(&token, &id);
    assert_eq!(done["status"], "processed", "{done}");
    assert_eq!(
        done["contentType"], "text/plain",
        "the part's content type is kept"
    );
    assert_eq!(done["filename"], "hello.txt");
    let (code, out) = server.get_bytes(&token, &format!("/uploads/{id}/processed"));
    assert_eq!(code, 200);
    assert_eq!(out, b"HELLO MULTIPART");

    // A `filename` field names the upload instead of the part's file name; a large part
    // is streamed to a blob file like a raw body.
    let big = Pattern::all(3 * MIB);
    let resp = form_upload(
        &server,
        &token,
        Form::new().text("filename", "renamed.bin").part(
            "file",
            Part::bytes(big.clone())
                .file_name("ignored.bin")
                .mime_str("application/x-thing")
                .expect("mime"),
        ),
    );
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    assert_eq!(v["s3"]["key"], "uploads/renamed.bin");
    let id = v["uploadId"].as_str().expect("id").to_owned();
    let st = server.wait_final(&token, &id);
    assert_eq!(st["sha256"], hex::encode(Sha256::digest(&big)));
    assert_eq!(st["contentType"], "application/x-thing");
    let (_, got) = server.get_bytes(&token, &format!("/uploads/{id}/content"));
    assert!(got == big, "the content read back differs");

    // Bad forms: 400 with a JSON error, nothing committed, no blob file left.
    let objects = rows(&dir.0, "SELECT COUNT(*) FROM objects");
    let uploads = rows(&dir.0, "SELECT COUNT(*) FROM uploads");
    let blobs = blob_files(&dir.0);
    let big_part = || {
        Part::bytes(Pattern::all(MIB))
            .file_name("b.bin")
            .mime_str("application/octet-stream")
            .expect("mime")
    };
    let cases: Vec<(&str, Form)> = vec![
        ("no file part", Form::new().text("filename", "a.txt")),
        ("empty form", Form::new()),
        (
            "two file parts",
            Form::new()
                .part("file", big_part())
                .part("file", text_part("b", "b.txt")),
        ),
        (
            "unknown field",
            Form::new()
                .part("file", text_part("a", "a.txt"))
                .text("colour", "blue"),
        ),
        (
            "bad part file name",
            Form::new().part("file", text_part("a", "..evil")),
        ),
        (
            "bad filename field after a large part",
            Form::new()
                .part("file", big_part())
                .text("filename", "a/b.txt"),
        ),
        (
            "empty filename field",
            Form::new()
                .text("filename", "")
                .part("file", text_part("a", "a.txt")),
        ),
        (
            "filename over 255 bytes",
            Form::new()
                .text("filename", "a".repeat(256))
                .part("file", text_part("a", "a.txt")),
        ),
    ];
    for (name, form) in cases {
        let resp = form_upload(&server, &token, form);
        assert_eq!(resp.status(), 400, "{name}");
        let err: Value = resp.json().expect("json error");
        assert_eq!(err["error"], "bad_request", "{name}: {err}");
        assert!(err["message"].is_string(), "{name}: {err}");
    }
    // A multipart Content-Type without a boundary.
    let resp = server
        .http
        .post(format!("{}/uploads", server.api))
        .bearer_auth(&token)
        .header("Content-Type", "multipart/form-data")
        .body("--x\r\n")
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
    // A truncated form (the closing boundary never comes).
    let resp = server
        .http
        .post(format!("{}/uploads", server.api))
        .bearer_auth(&token)
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.txt\"\r\n\r\nabc",
        )
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM objects"), objects);
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM uploads"), uploads);
    // A staged body dropped uncommitted is deleted in the background, at once.
    common::wait_for(
        "staged parts of refused forms to be deleted",
        Duration::from_secs(10),
        || (blob_files(&dir.0) == blobs).then_some(()),
    );
}

/// Yields `ok` bytes, then fails: the client aborts the request mid-body.
struct Broken(Pattern);

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(std::io::Error::other("client gives up")),
            n => Ok(n),
        }
    }
}

#[test]
fn an_upload_broken_off_mid_body_leaves_nothing() {
    let (dir, server, token) = start("stream-broken");
    let uploads = rows(&dir.0, "SELECT COUNT(*) FROM uploads");
    let blobs = blob_files(&dir.0);
    let sent = server
        .http
        .post(format!("{}/uploads?filename=broken.bin", server.api))
        .bearer_auth(&token)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::blocking::Body::new(Broken(Pattern::new(4 * MIB))))
        .send();
    assert!(sent.is_err(), "the request cannot complete");
    // The server finds out when the connection ends; its partial blob file goes then.
    wait_for(
        "the partial blob file of a broken upload to be deleted",
        Duration::from_secs(30),
        || (blob_files(&dir.0) == blobs).then_some(()),
    );
    assert_eq!(rows(&dir.0, "SELECT COUNT(*) FROM uploads"), uploads);
    // The server is fine afterwards.
    let resp = server.upload(&token, "after.txt", "still here");
    assert_eq!(resp.status(), 200);
}
