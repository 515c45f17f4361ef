//! `tidewater-bench tls`: what TLS costs, measured in one run. One client, generic over its
//! byte stream, speaks to plain TCP and to TLS alike, so both sides of every ratio run the same
//! code: 1→1 QoS 1 msg/s (a publisher with `--inflight` in flight, a QoS 1 subscriber that
//! acknowledges) and connects per second (TCP, TLS handshake, CONNECT, CONNACK) on the plain
//! and the TLS listener of Tidewater, and the same against Mosquitto holding the same
//! certificate (a P-256 key signed by a CA made for the run with `openssl`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tidewater_tests::clients::mqtt_wire::{self as wire, CONNACK, PUBACK, PUBLISH, SUBACK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::report::{self, Table};
use crate::target::{Broker, free_port};

/// Arguments of `tidewater-bench tls`.
#[derive(Args, Debug)]
pub(crate) struct TlsArgs {
    /// The tidewater binary to start.
    #[arg(long, default_value = "target/release/tidewater")]
    spawn: PathBuf,
    /// Seconds of each QoS 1 run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Connects of each connect run.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Connects in progress at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// QoS 1 publishes awaiting PUBACK, at most.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Leave Mosquitto out.
    #[arg(long)]
    no_mosquitto: bool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens MQTT connections over TCP, or TLS when it has a connector.
#[derive(Clone)]
struct Dialer {
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Dialer {
    async fn open(&self, addr: SocketAddr, client_id: &str) -> anyhow::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = match &self.tls {
            Some(connector) => Box::new(connector.connect("localhost".try_into()?, tcp).await?),
            None => Box::new(tcp),
        };
        let mut out = Vec::with_capacity(64);
        wire::connect(&mut out, client_id, 60);
        io.write_all(&out).await?;
        let mut connack = [0u8; 4];
        io.read_exact(&mut connack).await?;
        if connack[0] >> 4 != CONNACK || connack[3] != 0 {
            bail!("connect refused: {connack:?}");
        }
        Ok(io)
    }
}

/// One measured row.
struct Row {
    broker: &'static str,
    transport: &'static str,
    qos1: f64,
    connects: f64,
    failed: u64,
}

pub(crate) async fn main(args: TlsArgs, threads: usize) -> anyhow::Result<()> {
    let pki = tempfile::Builder::new().prefix("tidewater-bench-tls-").tempdir()?;
    make_certificate(pki.path())?;
    let (ca, cert, key) = (pki.path().join("ca.pem"), pki.path().join("server.pem"), pki.path().join("server.key"));
    let tls = Dialer { tls: Some(connector(&ca)?) };
    let plain = Dialer { tls: None };
    let mut rows = Vec::new();

    let mqtts = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let env = [
        ("TIDEWATER_LISTENERS__MQTTS".to_string(), mqtts.to_string()),
        ("TIDEWATER_TLS__CERT_FILE".to_string(), cert.display().to_string()),
        ("TIDEWATER_TLS__KEY_FILE".to_string(), key.display().to_string()),
    ];
    let tidewater = Broker::spawn_tidewater_env(&args.spawn, "warn", None, &env).await?;
    for (transport, dialer, addr) in [("tcp", &plain, tidewater.mqtt), ("tls", &tls, mqtts)] {
        rows.push(measure(&args, "tidewater", transport, dialer, addr).await?);
    }
    drop(tidewater);
    if !args.no_mosquitto {
        let (mosquitto, mqtt, mqtts) = spawn_mosquitto(pki.path(), &cert, &key).await?;
        for (transport, dialer, addr) in [("tcp", &plain, mqtt), ("tls", &tls, mqtts)] {
            rows.push(measure(&args, "mosquitto", transport, dialer, addr).await?);
        }
        drop(mosquitto);
    }

    let mut table = Table::new(&["broker", "transport", "QoS1 1→1 msg/s", "connects/s", "failed"]);
    for row in &rows {
        let cells = [row.broker, row.transport].map(String::from);
        let rest = [report::human(row.qos1), report::human(row.connects), row.failed.to_string()];
        table.row(cells.into_iter().chain(rest).collect());
    }
    for broker in ["tidewater", "mosquitto"] {
        let find = |transport| rows.iter().find(|r| r.broker == broker && r.transport == transport);
        if let (Some(tcp), Some(tls)) = (find("tcp"), find("tls")) {
            let ratio = |a: f64, b: f64| format!("{:.0} %", 100.0 * a / b.max(1e-9));
            table.row(vec![
                broker.into(),
                "tls / tcp".into(),
                ratio(tls.qos1, tcp.qos1),
                ratio(tls.connects, tcp.connects),
            ]);
        }
    }
    let params = json!({"duration_s": args.duration, "connects": args.connects, "concurrency": args.concurrency,
                        "payload": args.payload, "inflight": args.inflight});
    let results: Vec<_> = rows
        .iter()
        .map(|r| json!({"broker": r.broker, "transport": r.transport, "qos1_msg_s": r.qos1, "connects_s": r.connects, "failed": r.failed}))
        .collect();
    report::finish("tls", threads, params, &table, json!(results));
    Ok(())
}

async fn measure(
    args: &TlsArgs,
    broker: &'static str,
    transport: &'static str,
    dialer: &Dialer,
    addr: SocketAddr,
) -> anyhow::Result<Row> {
    eprintln!("[tls] {broker} over {transport}: QoS 1 for {} s, then {} connects", args.duration, args.connects);
    let qos1 = qos1_rate(dialer, addr, args).await.with_context(|| format!("{broker} {transport} QoS 1"))?;
    let (connects, failed) = connect_rate(dialer, addr, args).await;
    Ok(Row { broker, transport, qos1, connects, failed })
}

/// Delivered QoS 1 messages per second from one publisher to one subscriber.
async fn qos1_rate(dialer: &Dialer, addr: SocketAddr, args: &TlsArgs) -> anyhow::Result<f64> {
    let topic = format!("bench/tls/{}", free_port()?);
    let mut subscriber = dialer.open(addr, &format!("tls-sub-{topic}")).await?;
    let mut out = Vec::new();
    wire::subscribe(&mut out, 1, &topic, 1);
    subscriber.write_all(&out).await?;
    let mut suback = [0u8; 5];
    subscriber.read_exact(&mut suback).await?;
    if suback[0] >> 4 != SUBACK || suback[4] & 0x80 != 0 {
        bail!("subscribe refused: {suback:?}");
    }
    let received = Arc::new(AtomicU64::new(0));
    let reading = tokio::spawn(read_and_ack(subscriber, Arc::clone(&received)));
    let publisher = dialer.open(addr, &format!("tls-pub-{topic}")).await?;
    let (mut reader, mut writer) = tokio::io::split(publisher);
    let window = Arc::new(Semaphore::new(args.inflight));
    let acking = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut used = 0;
                while let Ok(Some((frame, len))) = wire::parse(&buf[used..]) {
                    if frame.kind == PUBACK {
                        window.add_permits(1);
                    }
                    used += len;
                }
                buf.drain(..used);
            }
        })
    };
    let payload = vec![b'x'; args.payload];
    let (started, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(args.duration));
    let (mut packet_id, mut batch) = (0u16, Vec::with_capacity(64 * 1024));
    let warmup = started + Duration::from_secs(1);
    let mut measured_from = None;
    while Instant::now() < deadline {
        let Ok(permit) = window.acquire().await else { break };
        permit.forget();
        let mut taken = 1;
        while taken < 64 && window.try_acquire().map(|p| p.forget()).is_ok() {
            taken += 1;
        }
        batch.clear();
        for _ in 0..taken {
            packet_id = packet_id.checked_add(1).unwrap_or(1);
            wire::publish_payload(&mut batch, &topic, 1, packet_id, false, &payload);
        }
        writer.write_all(&batch).await?;
        if measured_from.is_none() && Instant::now() >= warmup {
            measured_from = Some((Instant::now(), received.load(Ordering::Relaxed)));
        }
    }
    let (from, base) = measured_from.unwrap_or((started, 0));
    let rate = (received.load(Ordering::Relaxed) - base) as f64 / from.elapsed().as_secs_f64();
    acking.abort();
    reading.abort();
    Ok(rate)
}

/// Reads a subscriber's PUBLISH packets, counting them and acknowledging each.
async fn read_and_ack(mut io: Box<dyn Io>, received: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut acks = Vec::with_capacity(4096);
    while let Ok(n) = io.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        acks.clear();
        while let Ok(Some((frame, len))) = wire::parse(&buf[used..]) {
            if frame.kind == PUBLISH {
                received.fetch_add(1, Ordering::Relaxed);
                if let Some(publish) = wire::parse_publish(frame.flags, frame.body)
                    && publish.qos > 0
                {
                    wire::ack(&mut acks, PUBACK, publish.packet_id);
                }
            }
            used += len;
        }
        buf.drain(..used);
        if !acks.is_empty() && io.write_all(&acks).await.is_err() {
            return;
        }
    }
}

/// Connects (and CONNACKs) per second with `concurrency` in progress; how many failed.
async fn connect_rate(dialer: &Dialer, addr: SocketAddr, args: &TlsArgs) -> (f64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|worker| {
            let (dialer, next, failed, total) = (dialer.clone(), Arc::clone(&next), Arc::clone(&failed), args.connects);
            tokio::spawn(async move {
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < total {
                    let id = format!("tls-conn-{worker}");
                    match tokio::time::timeout(Duration::from_secs(10), dialer.open(addr, &id)).await {
                        Ok(Ok(mut io)) => {
                            let mut out = Vec::new();
                            wire::disconnect(&mut out);
                            let _ = io.write_all(&out).await;
                            let _ = io.shutdown().await;
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let failed = failed.load(Ordering::Relaxed);
    ((args.connects as u64 - failed) as f64 / started.elapsed().as_secs_f64(), failed)
}

fn connector(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    #[allow(deprecated)] // the provider the node uses (node/src/tls.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A CA and a server certificate for localhost and 127.0.0.1, readable by Mosquitto's user.
fn make_certificate(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("cannot run openssl")?;
        if !out.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA"],
    ]
    .concat())?;
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat())?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for file in ["server.pem", "server.key", "ca.pem"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Mosquitto with a plain and a TLS listener holding `cert`: (broker, plain, tls).
async fn spawn_mosquitto(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<(Broker, SocketAddr, SocketAddr)> {
    let (plain, tls) = (free_port()?, free_port()?);
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "per_listener_settings false\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000000\n\
             listener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            cert.display(),
            key.display()
        ),
    )?;
    let mut command = Command::new("mosquitto");
    command.arg("-c").arg(&config);
    let plain = SocketAddr::from(([127, 0, 0, 1], plain));
    let workdir = tempfile::Builder::new().prefix("tidewater-bench-mosquitto-").tempdir()?;
    let broker = Broker::spawn_peer("mosquitto", command, plain, workdir).await?;
    let tls = SocketAddr::from(([127, 0, 0, 1], tls));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(tls).await.is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not listen on {tls}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((broker, plain, tls))
}
