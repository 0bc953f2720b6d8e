//! The `imgstream` command line: parse, load settings, call the library, print. Every failure
//! ends as one line on stderr and a non-zero exit code.

use clap::{Args, Parser, Subcommand};
use imgstream::audit::{self, Checksums};
use imgstream::config::Settings;
use imgstream::domain::ImageFormat;
use imgstream::index::ImageIndex;
use imgstream::pipeline::PipelineOptions;
use imgstream::produce::{self, ProduceOptions};
use imgstream::schema::IMAGE_RECORD_SCHEMA;
use imgstream::shutdown::Shutdown;
use imgstream::store::ImageStore;
use imgstream::{dlq, monitor, setup, wiring};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "imgstream",
    version,
    about = "Streams images from Kafka into object storage with a PostgreSQL index"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create everything the pipeline needs: index migrations, topics, bucket, registered schema
    Setup {
        /// Change nothing; exit non-zero listing what is missing or different
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        schema: SchemaArg,
    },
    /// Generate realistic images and send them to the data topic
    Produce(ProduceArgs),
    /// Store every record of the data topic as an object plus an index row
    Consume(ConsumeArgs),
    /// Per-partition lag, index rows, bucket objects and dead-letter depth
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Audit the bucket against the index
    Verify(VerifyArgs),
    /// Inspect dead letters and send fixed ones back to the data topic
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Browse and fetch stored images and watch the pipeline: gallery, JSON API, metrics
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; 127.0.0.1 keeps it on this machine
    #[arg(long, env = "IMGSTREAM_SERVE_ADDR", default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Thumbnails made at once (default: the number of cores)
    #[arg(long)]
    thumbnail_makers: Option<usize>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Counts per code and the letters
    Ls {
        #[command(flatten)]
        select: DlqSelect,
        #[arg(long)]
        json: bool,
    },
    /// Send the selected letters back to the data topic: original key, value and headers, plus a
    /// replay count
    Replay {
        #[command(flatten)]
        select: DlqSelect,
        /// Letters already replayed this many times stay where they are
        #[arg(long, default_value_t = 3)]
        max_replays: u32,
        /// Say what would be sent, send nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DlqSelect {
    /// Only letters with this code (e.g. too-many-pixels)
    #[arg(long)]
    code: Option<String>,
    /// Only letters dead-lettered since then: a time ago (30m, 2h) or an RFC 3339 timestamp
    #[arg(long, value_parser = parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl DlqSelect {
    fn selection(self) -> dlq::Selection {
        dlq::Selection {
            code: self.code,
            since: self.since,
        }
    }
}

fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let ago = parse_duration(s)
        .map_err(|_| format!("{s:?} is neither a time ago (30m, 2h) nor an RFC 3339 timestamp"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - ago)
}

#[derive(Args)]
struct SchemaArg {
    /// Avro value schema to register (default: the schema compiled in from schema/image-record.avsc)
    #[arg(long, value_name = "PATH")]
    schema_file: Option<PathBuf>,
}

impl SchemaArg {
    fn load(&self) -> Result<String, String> {
        match &self.schema_file {
            None => Ok(IMAGE_RECORD_SCHEMA.to_string()),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read schema file {}: {e}", p.display())),
        }
    }
}

#[derive(Args)]
struct ProduceArgs {
    /// Number of images to send
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Send for this long instead (e.g. 30s, 5m)
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Images per second; 0 = as fast as possible
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Width in pixels, or a range like 320-1280
    #[arg(long, default_value = "256-1024", value_parser = parse_range)]
    width: (u32, u32),
    /// Height in pixels, or a range like 240-960
    #[arg(long, default_value = "256-768", value_parser = parse_range)]
    height: (u32, u32),
    /// png, jpeg, webp, or mix
    #[arg(long, default_value = "mix", value_parser = parse_formats)]
    format: Formats,
    /// Customer id on every record (default: PRODUCER_CUSTOMER_ID)
    #[arg(long)]
    customer_id: Option<String>,
    /// Seed for reproducible images (default: random)
    #[arg(long)]
    seed: Option<u64>,
    /// Number of distinct sources (devices); the record key, spread over partitions
    #[arg(long, default_value_t = 16)]
    sources: u32,
    #[command(flatten)]
    schema: SchemaArg,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConsumeArgs {
    /// Exit after this many seconds with nothing new
    #[arg(long, value_name = "SECONDS")]
    until_idle: Option<f64>,
    /// Exit after this many records were stored or dead-lettered
    #[arg(long)]
    max: Option<u64>,
    /// Records per batch
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Concurrent object uploads
    #[arg(long, default_value_t = 32)]
    uploads: usize,
    /// Largest batch in MiB of payload (large images fill a batch before --batch-size does)
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    batch_mib: usize,
    /// Batches uploading at once, at least (up to twice as many while upload slots are idle);
    /// with --batch-mib this bounds the image bytes held in memory
    #[arg(long, default_value_t = 3)]
    batches_in_flight: usize,
    /// How long a batch waits to fill once its first record arrived, in milliseconds: longer
    /// makes fewer, larger batches; shorter, less latency when records trickle in
    #[arg(long, value_name = "MS", default_value_t = 20)]
    linger_ms: u64,
    /// Serve /metrics (Prometheus), /healthz and /readyz here, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// Objects whose sha256 is recomputed (evenly spread)
    #[arg(long, default_value_t = 100, conflicts_with = "full")]
    sample: usize,
    /// Recompute the sha256 of every object
    #[arg(long)]
    full: bool,
    /// Delete orphan objects older than --grace (by the store's clock) that no consumer indexes
    #[arg(long)]
    repair: bool,
    /// Orphans younger than this may be a write in flight and are left alone (e.g. 15m)
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    grace: Duration,
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a size like 512 or 256-1024");
    let (a, b) = match s.split_once(['-', ':']) {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if a == 0 || a > b || b > 16384 {
        return Err(format!("{s:?}: sizes must be 1..=16384 and ascending"));
    }
    Ok((a, b))
}

/// A list of formats as one argument value (`png,jpeg`), which clap must not split into many.
#[derive(Clone)]
struct Formats(Vec<ImageFormat>);

fn parse_formats(s: &str) -> Result<Formats, String> {
    if s.eq_ignore_ascii_case("mix") {
        return Ok(Formats(ImageFormat::ALL.to_vec()));
    }
    s.split(',')
        .map(|f| {
            ImageFormat::from_name(f.trim())
                .ok_or_else(|| format!("{f:?} is not png, jpeg, webp or mix"))
        })
        .collect::<Result<_, _>>()
        .map(Formats)
}

fn init_logging() {
    let mut directives =
        std::env::var("IMGSTREAM_LOG").unwrap_or_else(|_| "info,rdkafka=warn,sqlx=warn".into());
    // rustls logs a refused certificate itself, at error level, on every attempt; the error that
    // reaches the user names it once. A filter that mentions rustls decides for itself.
    if !directives.contains("rustls") {
        directives.push_str(",rustls=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingWriter(std::io::stderr()));
    if std::env::var("IMGSTREAM_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .init();
    }
}

/// Log lines without the credentials of any URL in them. Our own messages mask URLs where they
/// name them; this catches what libraries log at debug level (the URLs they send to). The
/// formatter hands over one whole event per write, so no URL is split across two calls.
struct RedactingWriter(std::io::Stderr);

impl std::io::Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(imgstream::config::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // One async thread, with decoding, hashing and blocking librdkafka calls on the blocking pool.
    // Measured on the consumer (README, "Choices the measurements made"): the multi-threaded
    // runtime spent 4.8 context switches per 16 KiB image handing HTTP and Kafka work between
    // threads, this one 1.1, and CPU per image fell by 10-18% at the same throughput.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imgstream: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("imgstream: {}", imgstream::config::redact(&message));
            ExitCode::FAILURE
        }
    };
    // The work is done and reported; what is left is saying goodbye to the services (a consumer
    // leaving its group), which must not hold the process when a service stopped answering.
    let limit = Duration::from_secs(10);
    runtime.shutdown_timeout(limit);
    if !imgstream::kafka::wait_for_closes(limit) {
        eprintln!(
            "imgstream: Kafka did not confirm that this consumer left its group within {}s; exiting anyway (the group hands its partitions on after its session timeout)",
            limit.as_secs()
        );
    }
    code
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let settings = Settings::load().map_err(|e| format!("configuration: {e}"))?;
    match cli.command {
        Command::Setup { check, schema } => run_setup(&settings, &schema.load()?, check).await,
        Command::Produce(args) => run_produce(&settings, args).await,
        Command::Consume(args) => run_consume(&settings, args).await,
        Command::Status { json } => run_status(&settings, json).await,
        Command::Verify(args) => run_verify(&settings, args).await,
        Command::Dlq(command) => run_dlq(&settings, command).await,
        Command::Serve(args) => run_serve(&settings, args).await,
    }
}

async fn run_setup(settings: &Settings, schema: &str, check: bool) -> Result<ExitCode, String> {
    let items = setup::run(settings, schema, check).await;
    for item in &items {
        // Each item masks the URLs it names; this is the last check before the terminal.
        println!("{}", imgstream::config::redact(&item.to_string()));
    }
    let problems = items.iter().filter(|i| i.state.is_problem()).count();
    if problems == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    Err(if check {
        format!("{problems} item(s) missing or different; run `imgstream setup`")
    } else {
        format!("setup incomplete: {problems} item(s) failed (see above)")
    })
}

async fn run_produce(settings: &Settings, args: ProduceArgs) -> Result<ExitCode, String> {
    setup::preflight(settings, IMAGE_RECORD_SCHEMA, setup::Needs::Producer).await?;
    if args.count.is_none() && args.duration.is_none() {
        return Err("say how much to send: --count N or --duration 30s".into());
    }
    let opts = ProduceOptions {
        count: args.count,
        duration: args.duration,
        rate: args.rate.max(0.0),
        width: args.width,
        height: args.height,
        formats: args.format.0,
        customer_id: args
            .customer_id
            .unwrap_or_else(|| settings.customer_id.clone()),
        seed: args.seed.unwrap_or_else(rand::random),
        sources: args.sources.max(1),
        schema: args.schema.load()?,
        progress: std::io::stderr().is_terminal() && !args.json,
    };
    let summary = produce::produce(settings, opts, Shutdown::on_signals())
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "produced {} of {} generated images to {} ({:.1} MB) in {:.1}s: {:.0} images/s, {:.1} MB/s; failed {}, refused as too large {}",
            summary.delivered,
            summary.generated,
            summary.topic,
            summary.bytes_delivered as f64 / 1e6,
            summary.elapsed_secs,
            summary.images_per_sec,
            summary.mb_per_sec,
            summary.failed,
            summary.refused_too_large
        );
    }
    if summary.failed > 0 || summary.refused_too_large > 0 {
        return Err(summary
            .first_error
            .unwrap_or_else(|| "some records were not delivered".into()));
    }
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_consume(settings: &Settings, args: ConsumeArgs) -> Result<ExitCode, String> {
    setup::preflight(settings, IMAGE_RECORD_SCHEMA, setup::Needs::Consumer).await?;
    let mut opts = PipelineOptions::new(wiring::limits(settings));
    opts.batch_max_records = args.batch_size.max(1);
    opts.uploads_in_flight = args.uploads.max(1);
    opts.batch_max_bytes = args.batch_mib.max(1) << 20;
    opts.batches_in_flight = args.batches_in_flight.max(1);
    opts.batch_linger = Duration::from_millis(args.linger_ms);
    opts.until_idle = args.until_idle.map(Duration::from_secs_f64);
    opts.max_records = args.max;
    let consumer = wiring::consumer(
        settings,
        opts,
        Shutdown::on_signals(),
        args.metrics_addr.is_some(),
    )
    .await?;
    if let (Some(metrics), Some(addr)) = (consumer.metrics, args.metrics_addr) {
        metrics.serve(addr).await.map_err(|e| {
            format!("cannot serve metrics on {addr}: {e}; choose another --metrics-addr")
        })?;
    }
    let pipeline = consumer.pipeline;
    let live = monitor::spawn(
        consumer.source,
        pipeline.stats(),
        std::io::stderr().is_terminal(),
    );
    let started = Instant::now();
    let result = pipeline.run().await;
    live.abort();
    let reason = result.map_err(|e| e.to_string())?;
    let summary = pipeline.summary(started.elapsed(), reason);
    summary.log();
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| e.to_string())?
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect_sinks(settings: &Settings) -> Result<(ImageStore, ImageIndex), String> {
    let store = wiring::store(settings).map_err(|e| e.to_string())?;
    let index = wiring::index(settings).await.map_err(|e| e.to_string())?;
    Ok((store, index))
}

async fn run_status(settings: &Settings, json: bool) -> Result<ExitCode, String> {
    let (store, index) = connect_sinks(settings).await?;
    let status = audit::status(settings, &store, &index)
        .await
        .map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("topic {} · group {}", status.topic, status.group);
    println!(
        "{:>9} {:>12} {:>12} {:>10} {:>14} {:>10}",
        "partition", "end offset", "committed", "lag", "max indexed", "rows"
    );
    for p in &status.partitions {
        println!(
            "{:>9} {:>12} {:>12} {:>10} {:>14} {:>10}",
            p.partition,
            p.high_watermark,
            p.committed.map_or("-".into(), |c| c.to_string()),
            p.lag,
            p.max_indexed_offset.map_or("-".into(), |c| c.to_string()),
            p.indexed_rows
        );
    }
    println!("total lag        {}", status.total_lag);
    println!(
        "index rows       {} (bucket {})",
        status.index_rows, settings.store.bucket
    );
    println!(
        "bucket objects   {} (bucket {})",
        status.bucket_objects, settings.store.bucket
    );
    println!(
        "dead letters     {} (topic {})",
        status.dlq_depth, status.dlq_topic
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_verify(settings: &Settings, args: VerifyArgs) -> Result<ExitCode, String> {
    let (store, index) = connect_sinks(settings).await?;
    let checksums = if args.full {
        Checksums::All
    } else {
        Checksums::Sample(args.sample)
    };
    let report = audit::verify(
        settings,
        &store,
        &index,
        checksums,
        args.repair.then_some(args.grace),
    )
    .await
    .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "objects {} · rows {} · checksums checked {}",
            report.objects, report.rows, report.checksums_checked
        );
        let lists: [(&str, &Vec<String>); 8] = [
            ("missing object", &report.missing_objects),
            ("orphan object", &report.orphan_objects),
            ("size mismatch", &report.size_mismatches),
            ("checksum mismatch", &report.checksum_mismatches),
            ("orphan removed", &report.orphans_removed),
            (
                "orphan kept (younger than grace)",
                &report.orphans_too_young,
            ),
            (
                "orphan kept (a consumer indexed it during repair)",
                &report.orphans_indexed_meanwhile,
            ),
            (
                "orphan kept (the consumer group did not settle)",
                &report.orphans_kept_unsettled,
            ),
        ];
        for (label, items) in lists {
            for item in items {
                println!("{label}: {item}");
            }
        }
        for p in &report.partitions {
            println!(
                "partition {}: committed {} · highest indexed offset {} · end {}",
                p.partition,
                p.committed.map_or("-".into(), |c| c.to_string()),
                p.max_indexed_offset.map_or("-".into(), |c| c.to_string()),
                p.high_watermark
            );
        }
        if !report.missing_objects.is_empty() {
            println!(
                "missing objects cannot be rebuilt from the index; replay their records from Kafka while retained"
            );
        }
    }
    match (report.is_clean(), args.json) {
        (true, true) => Ok(ExitCode::SUCCESS),
        (true, false) => {
            println!("verify: clean");
            Ok(ExitCode::SUCCESS)
        }
        // The JSON on stdout says what; the line on stderr says that it failed.
        (false, true) => Err("verify found problems (see the JSON report)".into()),
        (false, false) => Err("verify found problems (listed above)".into()),
    }
}

async fn run_serve(settings: &Settings, args: ServeArgs) -> Result<ExitCode, String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = imgstream::serve::ServeOptions {
        addr: args.addr,
        thumbnail_makers: args.thumbnail_makers.unwrap_or(cores).max(1),
    };
    let serving = imgstream::serve::start(settings, opts).await?;
    println!("gallery at http://{}/", serving.addr);
    let shutdown = Shutdown::on_signals();
    tokio::select! {
        _ = shutdown.triggered() => Ok(ExitCode::SUCCESS),
        _ = serving.wait() => Err("the server stopped on its own (see the log above)".into()),
    }
}

async fn run_dlq(settings: &Settings, command: DlqCommand) -> Result<ExitCode, String> {
    match command {
        DlqCommand::Ls { select, json } => {
            let listing = dlq::list(settings, &select.selection())
                .await
                .map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&listing).map_err(|e| e.to_string())?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{} dead letter(s) in {}",
                listing.letters.len(),
                listing.topic
            );
            for (code, n) in &listing.counts {
                println!("{n:>8}  {code}");
            }
            for l in &listing.letters {
                let at = l.dead_lettered_at.map_or("-".into(), |t| t.to_rfc3339());
                let omitted = l
                    .omitted
                    .as_ref()
                    .map_or(String::new(), |o| format!("  [{o} omitted]"));
                println!(
                    "{}@{}  {at}  {}  from {}  replays {}{omitted}: {}",
                    listing.topic, l.dlq_offset, l.code, l.original, l.replays, l.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            select,
            max_replays,
            dry_run,
            json,
        } => {
            let report = dlq::replay(settings, &select.selection(), max_replays, dry_run)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                let verb = if dry_run { "would replay" } else { "replayed" };
                println!(
                    "{verb} {} of {} selected letter(s) to {}; {} held back after {max_replays} replays",
                    report.replayed.len(),
                    report.selected,
                    report.to_topic,
                    report.held_back.len()
                );
                for l in &report.held_back {
                    println!(
                        "held back: {} from {} ({} replays)",
                        l.code, l.original, l.replays
                    );
                }
            }
            // Letters without their value cannot be replayed from the dead-letter topic: said
            // on stderr, and the command fails, so a script does not take a partial replay for
            // a whole one.
            for l in &report.not_replayable {
                eprintln!(
                    "not replayed: {} from {}: the dead letter carries a reference, not the record ({} omitted; value {} bytes, sha256 {}); the original is at {} while the data topic retains it",
                    l.code,
                    l.original,
                    l.omitted.as_deref().unwrap_or("-"),
                    l.original_value_size
                        .map_or("-".to_string(), |n| n.to_string()),
                    l.original_value_sha256.as_deref().unwrap_or("-"),
                    l.original
                );
            }
            Ok(if report.not_replayable.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
