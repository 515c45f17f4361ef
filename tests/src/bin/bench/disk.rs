//! The disk under the broker's data dir, measured in the same run as the broker: what `dd`
//! writes with `conv=fdatasync` (the sustained write rate), and how many small
//! write-then-fdatasync rounds it takes per second (what `fsync = always` can at most do).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::kafka::Phase;

/// Bytes `dd` writes (large enough to pass any write cache of a few hundred MB).
const DD_MIB: u64 = 2048;

/// `dd if=/dev/zero of=<dir>/dd.bench bs=1M count=2048 conv=fdatasync`, as a phase row.
pub(crate) fn dd(dir: &Path) -> anyhow::Result<Phase> {
    let target = dir.join("dd.bench");
    let started = Instant::now();
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", &format!("count={DD_MIB}"), "conv=fdatasync"])
        .output()
        .context("cannot run dd")?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);
    if !output.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let bytes = DD_MIB << 20;
    Ok(Phase {
        name: "disk: dd bs=1M conv=fdatasync".into(),
        records: 0,
        value_bytes: bytes,
        wire_bytes: bytes,
        secs,
        latency: None,
        cpu: Default::default(),
        errors: 0,
        note: format!("{DD_MIB} MiB of zeros into the data dir's file system, fdatasync included"),
    })
}

/// 4 KiB appended and fdatasynced, over and over for `seconds`: the fsyncs per second.
pub(crate) fn fsyncs(dir: &Path, seconds: f64) -> anyhow::Result<Phase> {
    let target = dir.join("fsync.bench");
    let file = std::fs::File::create(&target)?;
    let block = [0x5a_u8; 4096];
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        file.write_all_at(&block, rounds * 4096)?;
        file.sync_data()?;
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&target);
    Ok(Phase {
        name: "disk: 4 KiB write + fdatasync".into(),
        records: rounds,
        value_bytes: rounds * 4096,
        wire_bytes: rounds * 4096,
        secs,
        latency: None,
        cpu: Default::default(),
        errors: 0,
        note: "records/s = fsyncs per second (one append and its sync each)".into(),
    })
}
