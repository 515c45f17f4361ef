//! `tidewater-simulation`: run seeds, print a summary, replay one with `SIM_SEED=<n>`.
//!
//!     simulation/run --seeds 100 [--first-seed S]
//!     simulation/run --regressions simulation/regression-seeds.txt --minutes 3
//!     SIM_SEED=42 simulation/run
#![allow(clippy::disallowed_methods)] // a campaign measures wall time and draws its first seed from the OS

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{RngCore, SeedableRng};
use tidewater_cluster::InvariantId;
use tidewater_simulation::{Options, SeedReport, run_seed};

#[derive(Parser, Debug)]
#[command(name = "tidewater-simulation", about = "Deterministic simulation campaigns of a Tidewater node")]
struct Cli {
    /// Seeds to run (consecutive from --first-seed).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The first seed (default: drawn from the OS).
    #[arg(long)]
    first_seed: Option<u64>,
    /// Run the seeds listed in this file (one per line, `#` comments) first.
    #[arg(long)]
    regressions: Option<PathBuf>,
    /// After the listed seeds, keep running random seeds for this many minutes.
    #[arg(long)]
    minutes: Option<f64>,
    /// Test-only: the node acknowledges before what it promises is durable.
    #[arg(long)]
    ack_before_durable: bool,
    /// Print every seed's line, not only failures.
    #[arg(long)]
    verbose: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !cfg!(tokio_unstable) {
        eprintln!(
            "warning: built without --cfg tokio_unstable (use simulation/run): tokio's own randomness is not seeded"
        );
    }
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let Ok(seed) = seed.trim().parse::<u64>() else {
            eprintln!("error: SIM_SEED must be a number, got {seed:?}");
            return std::process::ExitCode::from(2);
        };
        let mut options = Options::draw(seed);
        options.ack_before_durable = cli.ack_before_durable;
        options.print_trace = std::env::var_os("SIM_TRACE").is_some();
        if options.print_trace {
            // the node's own logs too (RUST_LOG picks the level, info by default)
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt().with_env_filter(filter).with_target(false).without_time().init();
        }
        let started = Instant::now();
        let report = run_seed(&options);
        print_report(&report, started.elapsed().as_secs_f64(), true);
        println!("trace hash {:016x} ({} events)", report.trace_hash, report.trace_len);
        return if report.violations.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }

    let mut seeds: Vec<u64> = Vec::new();
    if let Some(path) = &cli.regressions {
        match std::fs::read_to_string(path) {
            Ok(text) => seeds.extend(
                text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter_map(|l| l.parse::<u64>().ok()),
            ),
            Err(error) => {
                eprintln!("error: cannot read {}: {error}", path.display());
                return std::process::ExitCode::from(2);
            }
        }
    }
    let first = cli.first_seed.unwrap_or_else(|| rand::rngs::StdRng::from_os_rng().next_u64() >> 16);
    let listed = seeds.len();
    seeds.extend((0..cli.seeds).map(|i| first.wrapping_add(i)));
    let budget = cli.minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    println!(
        "running {listed} listed seed(s), then {} from {first}{}",
        cli.seeds,
        budget.map_or(String::new(), |b| format!(", then more until {:.1} min", b.as_secs_f64() / 60.0))
    );

    let started = Instant::now();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut summary = Summary::default();
    let mut next_random = first.wrapping_add(cli.seeds);
    let mut index = 0usize;
    loop {
        let seed = if index < seeds.len() {
            seeds[index]
        } else if budget.is_some_and(|b| started.elapsed() < b) {
            next_random = next_random.wrapping_add(1);
            next_random
        } else {
            break;
        };
        index += 1;
        let seed_started = Instant::now();
        let report = run(seed, cli.ack_before_durable);
        let wall = seed_started.elapsed().as_secs_f64();
        summary.add(&report, wall);
        if !report.violations.is_empty() || cli.verbose {
            if interactive {
                eprint!("\r\x1b[K");
            }
            print_report(&report, wall, !report.violations.is_empty());
        }
        if interactive {
            let total = seeds.len().max(index);
            let filled = (index * 30 / total.max(1)).min(30);
            eprint!(
                "\r[{}{}] {index} seeds, {} failed, {:.0} s",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                summary.failed_seeds.len(),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        } else if index.is_multiple_of(250) {
            // a log, not a terminal: a line now and then instead of a bar
            eprintln!("{index} seeds, {} failed, {:.0} s", summary.failed_seeds.len(), started.elapsed().as_secs_f64());
        }
    }
    if interactive {
        eprintln!();
    }
    summary.print(started.elapsed());
    if summary.failed_seeds.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

fn run(seed: u64, ack_before_durable: bool) -> SeedReport {
    let mut options = Options::draw(seed);
    options.ack_before_durable = ack_before_durable;
    run_seed(&options)
}

fn print_report(report: &SeedReport, wall: f64, details: bool) {
    let verdict = if report.violations.is_empty() { "ok" } else { "FAILED" };
    println!(
        "seed {} {verdict}: {} violation(s), {:.1} s simulated, {wall:.2} s wall, trace {:016x}, acks {}+{}, delivered {}, read {}",
        report.options.seed,
        report.violations.len(),
        report.simulated_ms as f64 / 1000.0,
        report.trace_hash,
        report.counts[0],
        report.counts[1],
        report.counts[2],
        report.counts[3]
    );
    if details {
        println!("  options: {:?}", report.options);
        for violation in report.violations.iter().take(20) {
            println!("  {}: {}", violation.name(), violation.detail);
        }
        if report.violations.len() > 20 {
            println!("  ... and {} more", report.violations.len() - 20);
        }
        for tolerated in &report.tolerated {
            println!("  tolerated (known limit): {tolerated}");
        }
        if !report.violations.is_empty() {
            println!("  replay: SIM_SEED={} simulation/run", report.options.seed);
        }
    }
}

#[derive(Default)]
struct Summary {
    seeds: u64,
    failed_seeds: Vec<u64>,
    by_invariant: BTreeMap<&'static str, u64>,
    simulated_ms: u64,
    wall_secs: f64,
    tolerated: u64,
}

impl Summary {
    fn add(&mut self, report: &SeedReport, wall: f64) {
        self.seeds += 1;
        self.simulated_ms += report.simulated_ms;
        self.wall_secs += wall;
        self.tolerated += report.tolerated.len() as u64;
        if !report.violations.is_empty() {
            self.failed_seeds.push(report.options.seed);
        }
        for violation in &report.violations {
            *self.by_invariant.entry(violation.name()).or_default() += 1;
        }
    }

    fn print(&self, elapsed: Duration) {
        println!();
        println!("| seeds run | failed | simulated time | wall time | wall per seed |");
        println!("| --- | --- | --- | --- | --- |");
        println!(
            "| {} | {} | {:.0} s | {:.1} s | {:.3} s |",
            self.seeds,
            self.failed_seeds.len(),
            self.simulated_ms as f64 / 1000.0,
            elapsed.as_secs_f64(),
            self.wall_secs / self.seeds.max(1) as f64
        );
        println!();
        println!("| invariant | violations |");
        println!("| --- | --- |");
        for id in InvariantId::ALL {
            println!("| {} | {} |", id.name(), self.by_invariant.get(id.name()).copied().unwrap_or(0));
        }
        println!("| liveness | {} |", self.by_invariant.get("liveness").copied().unwrap_or(0));
        println!();
        println!(
            "tolerated (known limit, not failures): {} QoS 2 duplicates of messages whose PUBREC had not been sent when the node went down",
            self.tolerated
        );
        if !self.failed_seeds.is_empty() {
            println!();
            println!("failed seeds: {:?}", self.failed_seeds);
        }
    }
}
