//! Engines of a test's own: a PostgreSQL server, a Garage and a JetStream server, each on
//! free ports with its data in a temporary directory, for tests that stop, kill or restart
//! an engine under running servers.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL server of the test's own, on a free port, with its data in a temporary
/// directory (run as the `postgres` user: initdb refuses root).
pub struct OwnPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("pg_ctl").exists())
            .expect("pg_ctl");
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}", sluice_blobs::new_id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        run(Command::new("chown").arg("postgres").arg(&dir));
        let pg = OwnPostgres {
            dir,
            bin,
            port: free_port(),
        };
        run(pg
            .as_postgres("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(pg.dir.join("data")));
        pg.start_again();
        run(Command::new(pg.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(pg.port.to_string())
            .args(["-c", "CREATE DATABASE sluice"]));
        pg
    }

    pub fn as_postgres(&self, tool: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
        c
    }

    pub fn start_again(&self) {
        run(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.dir.display()
            ))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "start"]));
    }

    /// Stops it as a crash would (no checkpoint, connections cut).
    pub fn crash(&self) {
        run(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]));
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/sluice", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Garage of the test's own (`scripts/s3-server`).
pub struct OwnGarage {
    dir: PathBuf,
    pub url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3-server")
}

impl OwnGarage {
    pub fn start() -> OwnGarage {
        let dir = std::env::temp_dir().join(format!("sluice-garage-{}", sluice_blobs::new_id()));
        let out = run(Command::new(script()).arg("start").arg(&dir));
        let url = out
            .lines()
            .find_map(|l| l.strip_prefix("export SLUICE_TEST_S3='"))
            .and_then(|l| l.strip_suffix('\''))
            .expect("SLUICE_TEST_S3 from scripts/s3-server")
            .to_owned();
        OwnGarage { dir, url }
    }

    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.dir.join("garage.pid")).expect("pid");
        run(Command::new("kill").args(["-9", pid.trim()]));
    }

    pub fn resume(&self) {
        run(Command::new(script()).arg("resume").arg(&self.dir));
    }
}

impl Drop for OwnGarage {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A JetStream server of the test's own.
#[allow(unused_imports)]
pub use sluice_stream::test_nats::NatsServer as OwnNats;
