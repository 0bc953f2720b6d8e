//! `make bench`: the pipeline against the machine's own ceiling, measured in the same run.
//!
//! For each image size: preload a topic, measure the ceilings (raw concurrent PUTs with the
//! consumer's client and concurrency; a raw Kafka consume), drain the topic with the real
//! consumer process (throughput, peak RSS, CPU), run a naive one-at-a-time reference, and measure
//! produce-to-index latency at half the pipeline's pace. Then scaling over 1, 2 and 4 partitions,
//! and the consumer's peak RSS over a 100,000-record backlog. Prints a table and writes JSON.
//! `--soak` (`make soak`) and `--browse` (`make bench-browse`) run other measurements instead.
//!
//! Where things are: [`scenarios`], one file per measurement; [`fixtures`] (images, preloaded
//! topics); [`ceilings`] (raw Kafka and PUT rates); [`control`] (each case's settings, databases
//! and topics, the consumer processes under test); [`services`] (the services' CPU, the machine);
//! [`naive`] (the one-at-a-time reference); [`report`] (the table and the JSON files).

mod ceilings;
mod control;
mod fixtures;
mod naive;
mod report;
mod scenarios;
mod services;

use clap::Parser;
use imgstream::kafka::consumer::FetchSettings;
use imgstream::pipeline::PipelineOptions;
use scenarios::{backlog, browse, large, lifetime, rebalance, scaling, sizes, soak};
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "imgstream-bench",
    about = "The pipeline against the machine's own ceiling, measured in the same run (make bench)"
)]
struct Args {
    /// Smaller counts (a fifth of the records per size), and no backlog run
    #[arg(long)]
    quick: bool,
    /// Only these sizes, comma-separated (16KiB, 256KiB, 2MiB, 32MiB), or `rebalance`; no
    /// scaling or backlog run. `erasure-check` and `retain-latency` (what erasures cost a
    /// consumer) run only when named here
    #[arg(long, value_name = "SIZES")]
    only: Option<String>,
    /// Run the soak test instead (make soak): consumers killed, joining and leaving, a MinIO and
    /// a PostgreSQL outage
    #[arg(long, conflicts_with = "browse")]
    soak: bool,
    /// How long the soak test runs
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Measure `imgstream serve` on a large index instead (make bench-browse)
    #[arg(long)]
    browse: bool,
    /// Rows generated in the index for --browse
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // The bench's own clients (the producer above all) log only when asked: `BENCH_LOG=debug`.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // Read the way `imgstream` reads them: the environment, then `.env`.
    let base = imgstream::config::load_vars().unwrap_or_else(|e| {
        eprintln!("imgstream-bench: configuration: {e}");
        std::process::exit(2)
    });
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let started = Instant::now();
    if args.soak {
        let report = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "machine": services::machine(),
            "versions": services::versions(),
            "soak": soak::soak(&base, &run, args.minutes).await,
        });
        println!("{}", serde_json::to_string_pretty(&report["soak"]).unwrap());
        report::write_report("soak", &report);
        return;
    }
    if args.browse {
        let report = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "machine": services::machine(),
            "browse": browse::bench_browse(&base, &run, args.rows).await,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report["browse"]).unwrap()
        );
        report::write_report("browse", &report);
        return;
    }

    let (quick, only) = (args.quick, args.only.as_deref());
    let named =
        |name: &str| only.is_some_and(|o| o.split(',').any(|x| x.eq_ignore_ascii_case(name)));
    if lifetime::NAMES.iter().any(|n| named(n)) {
        let sizes = lifetime::Sizes::new(quick);
        let mut measured = serde_json::Map::new();
        if named("erasure-check") {
            measured.insert(
                "erasure_check".into(),
                lifetime::erasure_check(&base, &run, &sizes).await,
            );
        }
        if named("retain-latency") {
            measured.insert(
                "retain_latency".into(),
                lifetime::retain_latency(&base, &run, &sizes).await,
            );
        }
        let report = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "elapsed_secs": started.elapsed().as_secs_f64(),
            "quick": quick,
            "machine": services::machine(),
            "versions": services::versions(),
            "lifetime": measured,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report["lifetime"]).unwrap()
        );
        report::write_report("lifetime", &report);
        // Named alone, they are the whole run.
        if only.is_some_and(|o| {
            o.split(',')
                .all(|x| lifetime::NAMES.iter().any(|n| x.eq_ignore_ascii_case(n)))
        }) {
            return;
        }
    }
    let mut results = Vec::new();
    let sizes_wanted: Vec<_> = sizes::cases(quick)
        .into_iter()
        .filter(|case| {
            only.is_none_or(|o| o.split(',').any(|x| x.eq_ignore_ascii_case(case.label)))
        })
        .collect();
    let mut host_memory = Value::Null;
    if !sizes_wanted.is_empty() {
        eprintln!("[sizes] keeping freed memory backed");
        let kept = control::KeptMemory::apply();
        host_memory = kept.describe();
        eprintln!("  {host_memory}");
        for case in &sizes_wanted {
            results.push(sizes::bench_case(&base, &run, case).await);
        }
    }
    let large = if only.is_none_or(|o| o.split(',').any(|x| x.eq_ignore_ascii_case(large::LABEL))) {
        Some(large::bench_large(&base, &run, quick).await)
    } else {
        None
    };
    let scale = if only.is_none() {
        Some(scaling::scaling(&base, &run, if quick { 4_000 } else { 12_000 }).await)
    } else {
        None
    };
    let rebalance = if only.is_none() || only == Some("rebalance") {
        let records = if quick { 10_000 } else { 30_000 };
        let mut each = Vec::new();
        for protocol in ["classic", "consumer"] {
            each.push(rebalance::rebalance_redo(&base, &run, records, protocol).await);
        }
        Some(each)
    } else {
        None
    };
    let backlog = if only.is_none() && !quick {
        Some(backlog::backlog_rss(&base, &run, 100_000).await)
    } else {
        None
    };

    let batches = PipelineOptions::DEFAULT_BATCHES_IN_FLIGHT;
    let report = json!({
        "when": chrono::Utc::now().to_rfc3339(),
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "machine": services::machine(),
        "versions": services::versions(),
        "consumer_defaults": {
            "batch_size": PipelineOptions::DEFAULT_BATCH_RECORDS,
            "batch_mib": PipelineOptions::DEFAULT_BATCH_MIB,
            "uploads_in_flight": PipelineOptions::DEFAULT_UPLOADS_IN_FLIGHT,
            "batches_in_flight": format!("{batches}, up to {} while upload slots are idle", 2 * batches),
            "linger_ms": PipelineOptions::DEFAULT_LINGER_MS,
            "fetch_queue_backoff_ms": FetchSettings::default().fetch_queue_backoff_ms,
            "object_store_client": "object_store (reqwest)",
        },
        "cases": results,
        "host_memory": host_memory,
        "large": large,
        "scaling": scale,
        "rebalance": rebalance,
        "backlog": backlog,
    });
    report::print_table(&report);
    report::write_report("bench", &report);
    println!("({:.0}s)", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("imgstream-bench").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn no_flags_run_the_whole_bench() {
        let args = parse(&[]).unwrap();
        assert!(!args.quick && !args.soak && !args.browse && args.only.is_none());
    }

    #[test]
    fn the_flags_of_the_makefile_and_readme_are_taken() {
        let soak = parse(&["--soak", "--minutes", "5"]).unwrap();
        assert!(soak.soak);
        assert_eq!(soak.minutes, 5);
        assert_eq!(parse(&["--soak"]).unwrap().minutes, 30);
        let browse = parse(&["--browse", "--rows", "2000"]).unwrap();
        assert!(browse.browse);
        assert_eq!(browse.rows, 2000);
        assert_eq!(parse(&["--browse"]).unwrap().rows, 1_000_000);
        let only = parse(&["--quick", "--only", "256KiB,2MiB"]).unwrap();
        assert!(only.quick);
        assert_eq!(only.only.as_deref(), Some("256KiB,2MiB"));
        assert_eq!(
            parse(&["--only", "rebalance"]).unwrap().only.as_deref(),
            Some("rebalance")
        );
        let lifetime = parse(&["--quick", "--only", "erasure-check,retain-latency"]).unwrap();
        assert_eq!(
            lifetime.only.as_deref(),
            Some("erasure-check,retain-latency")
        );
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_flag_rather_than_replaced_by_the_default() {
        let error = parse(&["--soak", "--minutes", "half an hour"])
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("--minutes"), "{error}");
        assert!(parse(&["--soak", "--browse"]).is_err());
    }
}
