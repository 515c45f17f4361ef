//! Helpers for black-box tests: find the `tidewater` binary, start it on free ports, wait
//! for it to be ready, and stop it; and the lean MQTT and Kafka clients ([`clients`]) that the
//! bench and the deterministic simulation share.
//!
//! Black-box tests run real processes in real time, so the seam lints do not apply here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod clients;

/// The `tidewater` binary under test: `$TIDEWATER_BIN`, else the workspace's release or debug build.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDEWATER_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let release = root.join("target/release/tidewater");
    if release.exists() { release } else { root.join("target/debug/tidewater") }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A `tidewater` command with every inherited `TIDEWATER_*` variable removed.
pub fn command() -> Command {
    command_for(&binary())
}

/// A command running `binary` with every inherited `TIDEWATER_*` variable removed: the node
/// reads each of them as configuration and refuses unknown ones.
pub fn command_for(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIDEWATER_") {
            command.env_remove(key);
        }
    }
    command
}

/// Sends `GET path` and returns (status, body), or None if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A running child process killed on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tidewater` with `args` in `dir`, output discarded.
pub fn spawn_in(dir: &Path, args: &[&str]) -> anyhow::Result<Running> {
    let child = command().args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    Ok(Running(child))
}
