//! A JetStream server of a test's own (tests only, feature `conformance`): `nats-server`
//! with JetStream on a port it picks itself (`listen: 127.0.0.1:-1`, read back from its
//! log, so tests starting servers at once never race for a port), its store in a
//! temporary directory; killed and removed when dropped. It can be killed with -9 and
//! started again on the same port and store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    pub port: u16,
    conf: PathBuf,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts one (`max_payload: 8MB`); panics if `nats-server` is missing or does not
    /// start within 20 s.
    pub fn start() -> NatsServer {
        let dir = std::env::temp_dir().join(format!(
            "sluice-nats-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let conf = dir.join("nats.conf");
        let write = |listen: &str| {
            let text = format!(
                "listen: {listen}\nmax_payload: 8MB\njetstream {{ store_dir: {:?} }}\n",
                dir.join("js")
            );
            if let Err(e) = std::fs::write(&conf, text) {
                panic!("cannot write {}: {e}", conf.display());
            }
        };
        write("127.0.0.1:-1");
        let (child, port) = spawn(&conf, &dir.join("nats.log"));
        // A restart comes back on the same port.
        write(&format!("127.0.0.1:{port}"));
        NatsServer {
            child,
            port,
            conf,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown of its own.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) {
        let (child, port) = spawn(&self.conf, &self.dir.join("nats-again.log"));
        assert_eq!(port, self.port, "back on its port");
        self.child = child;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts nats-server with `conf` and waits until it listens; answers the port.
// The child goes to the caller, or is killed and waited for here.
#[allow(clippy::zombie_processes)]
fn spawn(conf: &Path, log: &Path) -> (Child, u16) {
    let _ = std::fs::remove_file(log);
    let stderr = match std::fs::File::create(log) {
        Ok(f) => f,
        Err(e) => panic!("cannot create {}: {e}", log.display()),
    };
    let mut child = match Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "nats-server must be installed (scripts/test installs it; Debian: apt-get install nats-server): {e}"
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .find_map(|l| l.split("Listening for client connections on ").nth(1))
            .and_then(|a| a.trim().rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return (child, port);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
