//! Email delivery of outbox messages through SMTP, and attribute verification with
//! GetUserAttributeVerificationCode / VerifyUserAttribute, against the real binary and a
//! tiny fake SMTP server.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DataDir, PASSWORD, Server, wait_for};
use serde_json::{Value, json};

/// One message the fake server accepted.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// An SMTP server speaking just enough of the protocol to accept messages.
struct FakeSmtp {
    port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl FakeSmtp {
    fn start() -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake smtp");
        let port = listener.local_addr().expect("addr").port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m = mails.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let m = m.clone();
                std::thread::spawn(move || {
                    let _ = session(conn, &m);
                });
            }
        });
        FakeSmtp { port, mails }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("mails").clone()
    }
}

/// How long the tests wait for mail and delivery states.
const WAIT: Duration = Duration::from_secs(60);

fn session(conn: TcpStream, mails: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut lines = BufReader::new(conn);
    out.write_all(b"220 fake.test ESMTP\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            out.write_all(b"250 fake.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd["MAIL FROM:".len()..].to_owned();
            to.clear();
            out.write_all(b"250 OK\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(cmd["RCPT TO:".len()..].to_owned());
            out.write_all(b"250 OK\r\n")?;
        } else if upper == "DATA" {
            out.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(&line);
            }
            mails.lock().expect("mails").push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            out.write_all(b"250 queued\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            out.write_all(b"250 OK\r\n")?;
        } else {
            out.write_all(b"502 not implemented\r\n")?;
        }
    }
}

fn start_with_smtp(dir: &DataDir, url: &str) -> Server {
    Server::start_on(
        &dir.0,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &[
            ("SLUICE_SMTP_URL", url),
            ("SLUICE_SMTP_FROM", "no-reply@sluice.test"),
        ],
    )
}

fn outbox(server: &Server) -> Vec<Value> {
    server
        .cli(&["outbox", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("outbox json line"))
        .collect()
}

/// Polls (generous deadline) until `f` gives a value.
fn client_id(server: &Server) -> String {
    server.info()["clientId"]
        .as_str()
        .expect("clientId")
        .to_owned()
}

#[test]
fn sign_up_code_is_emailed_and_marked_sent() {
    let smtp = FakeSmtp::start();
    let dir = DataDir::new("smtp-sent");
    let server = start_with_smtp(&dir, &smtp.url());
    let (status, body) = server.cognito(
        "SignUp",
        json!({"ClientId": client_id(&server), "Username": "mailed@example.com",
               "Password": PASSWORD}),
    );
    assert_eq!(status, 200, "{body}");

    let mail = wait_for("the email", WAIT, || smtp.mails().into_iter().next());
    assert_eq!(mail.to, vec!["<mailed@example.com>".to_owned()]);
    assert_eq!(mail.from, "<no-reply@sluice.test>");
    let entry = wait_for("delivery status", WAIT, || {
        outbox(&server)
            .into_iter()
            .find(|m| m["delivery"] == "sent")
    });
    assert_eq!(entry["to"], "mailed@example.com");
    assert_eq!(entry["kind"], "signup");
    let code = entry["code"].as_str().expect("code");
    assert!(
        mail.data
            .contains(&format!("Your verification code is {code}.")),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("Subject: Your verification code"));

    // The emailed code confirms the user.
    let (status, body) = server.cognito(
        "ConfirmSignUp",
        json!({"ClientId": client_id(&server), "Username": "mailed@example.com",
               "ConfirmationCode": code}),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_failed_delivery_is_recorded_without_the_code() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = DataDir::new("smtp-failed");
    let server = start_with_smtp(&dir, &format!("smtp://127.0.0.1:{closed}"));
    let (status, body) = server.cognito(
        "SignUp",
        json!({"ClientId": client_id(&server), "Username": "lost@example.com",
               "Password": PASSWORD}),
    );
    assert_eq!(
        status, 200,
        "answered without waiting for the email: {body}"
    );
    let entry = wait_for("failed delivery", WAIT, || {
        outbox(&server)
            .into_iter()
            .find(|m| m["delivery"] == "failed")
    });
    let code = entry["code"].as_str().expect("code");
    let error = entry["deliveryError"].as_str().expect("deliveryError");
    assert!(!error.is_empty());
    assert!(!error.contains(code));
    let table = server.cli(&["outbox"]);
    assert!(table.contains("failed: "), "{table}");
}

#[test]
fn a_changed_email_is_verified_with_its_code() {
    let smtp = FakeSmtp::start();
    let dir = DataDir::new("smtp-verify");
    let server = start_with_smtp(&dir, &smtp.url());
    server.create_user("old@example.com");
    let access = server.sign_in("old@example.com", PASSWORD)["AuthenticationResult"]["AccessToken"]
        .as_str()
        .expect("AccessToken")
        .to_owned();
    let email_verified = |server: &Server| -> String {
        let (status, body) = server.cognito("GetUser", json!({"AccessToken": access}));
        assert_eq!(status, 200, "{body}");
        body["UserAttributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .find(|a| a["Name"] == "email_verified")
            .map(|a| a["Value"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };

    let (status, body) = server.cognito(
        "UpdateUserAttributes",
        json!({"AccessToken": access,
               "UserAttributes": [{"Name": "email", "Value": "new@example.com"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(email_verified(&server), "false");

    let (status, body) = server.cognito(
        "VerifyUserAttribute",
        json!({"AccessToken": access, "AttributeName": "email", "Code": "000000x"}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "CodeMismatchException", "{body}");

    let (status, body) = server.cognito(
        "GetUserAttributeVerificationCode",
        json!({"AccessToken": access, "AttributeName": "email"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["CodeDeliveryDetails"],
        json!({"Destination": "n***@e***", "DeliveryMedium": "EMAIL", "AttributeName": "email"})
    );
    let latest = outbox(&server).into_iter().next().expect("a message");
    assert_eq!(latest["to"], "new@example.com");
    assert_eq!(latest["kind"], "verify_email");
    let code = latest["code"].as_str().expect("code").to_owned();
    wait_for("the verification email", WAIT, || {
        smtp.mails().into_iter().find(|m| {
            m.data
                .contains(&format!("Your verification code is {code}."))
        })
    });

    let (status, body) = server.cognito(
        "VerifyUserAttribute",
        json!({"AccessToken": access, "AttributeName": "email", "Code": code}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(email_verified(&server), "true");

    // A used code is gone.
    let (status, body) = server.cognito(
        "VerifyUserAttribute",
        json!({"AccessToken": access, "AttributeName": "email", "Code": code}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "ExpiredCodeException", "{body}");

    // Guesses are limited.
    let (status, _) = server.cognito(
        "GetUserAttributeVerificationCode",
        json!({"AccessToken": access, "AttributeName": "email"}),
    );
    assert_eq!(status, 200);
    let mut kinds = Vec::new();
    for _ in 0..6 {
        let (_, body) = server.cognito(
            "VerifyUserAttribute",
            json!({"AccessToken": access, "AttributeName": "email", "Code": "not-a-code"}),
        );
        kinds.push(body["__type"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(kinds[..5], vec!["CodeMismatchException".to_owned(); 5]);
    assert_eq!(kinds[5], "LimitExceededException");

    // Unverifiable attributes and bad tokens.
    let (status, body) = server.cognito(
        "GetUserAttributeVerificationCode",
        json!({"AccessToken": access, "AttributeName": "name"}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "InvalidParameterException", "{body}");
    let (status, body) = server.cognito(
        "VerifyUserAttribute",
        json!({"AccessToken": "nope", "AttributeName": "email", "Code": "123456"}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "NotAuthorizedException", "{body}");
}
