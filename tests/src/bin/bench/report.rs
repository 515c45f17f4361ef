//! What a run prints: a progress line per second on stderr, then an aligned table and one JSON
//! line on stdout, so a person reads the table and a script reads the JSON.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A latency histogram in nanoseconds, 1 µs to 100 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency in nanoseconds, clamped into the histogram's range.
#[inline]
pub(crate) fn record(histogram: &mut Histogram<u64>, nanos: u64) {
    histogram.saturating_record(nanos.max(1_000));
}

/// p50, p99, p99.9 and max of a histogram, in microseconds.
pub(crate) fn latency_json(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "p50_us": us(0.50), "p99_us": us(0.99), "p999_us": us(0.999),
        "max_us": histogram.max() as f64 / 1000.0, "count": histogram.len(),
    })
}

/// A latency quantile as text in ms, or "-".
pub(crate) fn latency_ms(histogram: &Histogram<u64>, quantile: f64) -> String {
    if histogram.is_empty() {
        return "-".into();
    }
    format!("{:.3}", histogram.value_at_quantile(quantile) as f64 / 1_000_000.0)
}

/// A rate with a k/M suffix.
pub(crate) fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// An optional number as text, or "-".
pub(crate) fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// A table of strings printed with aligned columns.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub(crate) fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    /// Appends a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table as Markdown with padded columns.
    pub(crate) fn print(&self) {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> =
                (0..columns).map(|i| format!("{:>w$}", cells.get(i).map_or("", |c| c), w = widths[i])).collect();
            println!("| {} |", padded.join(" | "));
        };
        line(&self.header);
        println!("|{}|", widths.iter().map(|w| format!("{}:", "-".repeat(w + 1))).collect::<Vec<_>>().join("|"));
        for row in &self.rows {
            line(row);
        }
    }
}

/// Prints the run's context line, the table and the JSON line.
pub(crate) fn finish(mode: &str, threads: usize, params: Value, table: &Table, results: Value) {
    let machine = crate::target::machine();
    println!();
    println!(
        "{mode}: {} cores ({}), {} GiB RAM; generator: 1 tokio runtime with {threads} thread(s), broker and \
         generator share the cores, nothing pinned",
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["ram_gib"]
    );
    table.print();
    let line = json!({
        "bench": "tidewater-bench",
        "mode": mode,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": machine,
        "generator_threads": threads,
        "params": params,
        "results": results,
    });
    println!("{line}");
}

/// Prints `line()` to stderr once a second until dropped.
pub(crate) struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts the progress line; `line` gets the seconds since start.
    pub(crate) fn start(label: String, mut line: impl FnMut(f64) -> String + Send + 'static) -> Progress {
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                let secs = start.elapsed().as_secs_f64();
                eprintln!("[{label} {secs:>5.1}s] {}", line(secs));
            }
        });
        Progress { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
