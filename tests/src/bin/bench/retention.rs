//! The `retention` mode: the segment store on its own, in this process. Writes `--gb` GB of
//! 1 MB batches of random bytes into one partition (128 MiB segments, `interval` sync), then
//! times the retention pass that expires all of it (`truncate_before` at the log end) and
//! reads the file system's free space before and after, so "frees the disk at once" is
//! measured, not assumed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tidewater_storage::{
    FsyncPolicy, LogStore, NewRecord, PartitionId, SegmentOptions, SegmentStore, build_record_batch,
};

use crate::report::{self, Table};

/// Arguments of the retention mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct RetentionArgs {
    /// Gigabytes (10⁹ bytes) of log to write and then expire.
    #[arg(long, default_value_t = 10.0)]
    gb: f64,
    /// Where the log goes (default: a temporary directory under $TMPDIR).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Before the retention pass, drop the page cache (`/proc/sys/vm/drop_caches`, root
    /// only): segments expire long after they were written, when their pages are no longer
    /// cached, and evicting 10 GB of cached pages is most of what removing them costs.
    #[arg(long)]
    drop_caches: bool,
}

/// Free bytes of the file system holding `path` (`df --output=avail -B1`).
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let output = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value = text.lines().nth(1).unwrap_or("").trim().parse()?;
    Ok(value)
}

/// Runs the retention mode.
pub(crate) async fn main(args: RetentionArgs, threads: usize) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("tidewater-retention-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let options = SegmentOptions { fsync: FsyncPolicy::Interval(Duration::from_millis(1000)), ..Default::default() };
    let store = SegmentStore::open(&temp.path().join("logs"), options)?;
    let id = PartitionId { stream: "retention".into(), partition: 0 };
    store.create_partition(&id)?;
    // one 1 MB batch of random bytes (a cheap xorshift: incompressible to any disk that compresses)
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let value: Vec<u8> = (0..1_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let record = NewRecord { key: None, value: Some(&value), headers: &[], timestamp_ms: 1 };
    let batch = build_record_batch(&[record], 1);
    let batches = (args.gb * 1e9 / batch.len() as f64).ceil() as u64;
    let free_at_start = free_bytes(temp.path())?;
    let started = Instant::now();
    for _ in 0..batches {
        store.append(&id, 0, batch.clone())?;
    }
    LogStore::sync(&store)?;
    let write_secs = started.elapsed().as_secs_f64();
    let size = store.size_bytes(&id)?;
    let segments = store.segment_files(&id)?.len();
    if args.drop_caches {
        std::fs::write("/proc/sys/vm/drop_caches", "1\n")
            .map_err(|error| anyhow::anyhow!("--drop-caches needs root: {error}"))?;
    }
    let free_before = free_bytes(temp.path())?;
    let end = store.offsets(&id)?.log_end;
    let started = Instant::now();
    store.truncate_before(&id, end)?;
    let retention_secs = started.elapsed().as_secs_f64();
    let free_after = free_bytes(temp.path())?;
    let freed = free_after.saturating_sub(free_before);

    let mut table = Table::new(&["phase", "bytes", "segments", "seconds", "MB/s", "disk freed", "note"]);
    table.row(vec![
        "write (append + interval sync)".into(),
        format!("{size}"),
        segments.to_string(),
        format!("{write_secs:.2}"),
        format!("{:.0}", size as f64 / write_secs / 1e6),
        "-".into(),
        format!("used {} MB of free space", free_at_start.saturating_sub(free_before) / 1_000_000),
    ]);
    table.row(vec![
        format!(
            "retention: expire everything{}",
            if args.drop_caches { " (pages not cached)" } else { " (pages cached)" }
        ),
        format!("{size}"),
        segments.to_string(),
        format!("{retention_secs:.3}"),
        "-".into(),
        format!("{} MB", freed / 1_000_000),
        "truncate_before(log end): every segment file removed; free space read right after".into(),
    ]);
    let params = json!({"gb": args.gb, "batch_bytes": batch.len(), "segment_bytes": options.segment_bytes, "drop_caches": args.drop_caches});
    report::finish(
        "retention",
        threads,
        params,
        &table,
        json!({"write_secs": write_secs, "retention_secs": retention_secs, "bytes": size, "freed": freed}),
    );
    Ok(())
}
