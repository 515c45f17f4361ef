//! The binary's command line: a bare `start` serves on the documented default ports with
//! data in ./data, stops cleanly on SIGTERM, and `passwd` prints a usable hash.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tidewater_tests::{command, http_get, spawn_in, wait_until};

#[test]
fn bare_start_serves_default_ports_with_data_in_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_in(dir.path(), &["start"]).unwrap();
    let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || http_get(http, "/health").is_some_and(|(s, _)| s == 200)),
        "bare start did not answer /health on 8080"
    );
    assert!(TcpStream::connect("127.0.0.1:1883").is_ok(), "bare start does not serve MQTT on 1883");
    assert!(dir.path().join("data").is_dir(), "bare start did not create ./data");
    let (_, metrics) = http_get(http, "/metrics").unwrap();
    assert!(metrics.contains("tidewater_mqtt_connections"), "{metrics}");

    // SIGTERM: graceful stop with exit code 0
    let pid = node.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = node.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "SIGTERM did not stop the node cleanly");
}

#[test]
fn passwd_prints_a_pbkdf2_hash() {
    let output = command().args(["passwd", "s3cret"]).output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    assert!(hash.starts_with("pbkdf2-sha256$"), "{hash}");
    let again = String::from_utf8(command().args(["passwd", "s3cret"]).output().unwrap().stdout).unwrap();
    assert_ne!(hash, again, "each hash must use a fresh salt");
}

#[test]
fn unknown_flag_and_bad_config_fail_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[mqtt]\nmax_inflite = 3\n").unwrap();
    let output = command().args(["start", "--config"]).arg(&config).current_dir(dir.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_inflite"), "{stderr}");

    let output =
        command().args(["start"]).env("TIDEWATER_MQTT__MAX_INFLIGHT", "lots").current_dir(dir.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_inflight"), "{stderr}");
}
