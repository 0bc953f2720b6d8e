//! `imgstream consume`: the pipeline on this machine's settings, a live status line on a
//! terminal, and the run's summary at the end.

use super::parse;
use clap::Args;
use imgstream::config::Settings;
use imgstream::pipeline::PipelineOptions;
use imgstream::schema::IMAGE_RECORD_SCHEMA;
use imgstream::shutdown::Shutdown;
use imgstream::validate::Limits;
use imgstream::{monitor, setup, wiring};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ConsumeArgs {
    /// Exit after nothing new arrived for this long (e.g. 30s, 5m; a bare number is seconds)
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub until_idle: Option<Duration>,
    /// Exit after this many records were stored or dead-lettered
    #[arg(long)]
    max: Option<u64>,
    /// Records per batch
    #[arg(long, default_value_t = PipelineOptions::DEFAULT_BATCH_RECORDS)]
    batch_size: usize,
    /// Concurrent object uploads
    #[arg(long, default_value_t = PipelineOptions::DEFAULT_UPLOADS_IN_FLIGHT)]
    uploads: usize,
    /// Largest batch in MiB of payload (large images fill a batch before --batch-size does)
    #[arg(long, value_name = "MIB", default_value_t = PipelineOptions::DEFAULT_BATCH_MIB)]
    batch_mib: usize,
    /// Batches uploading at once, at least (up to twice as many while upload slots are idle);
    /// with --batch-mib this bounds the image bytes held in memory
    #[arg(long, default_value_t = PipelineOptions::DEFAULT_BATCHES_IN_FLIGHT)]
    batches_in_flight: usize,
    /// How long a batch waits to fill once its first record arrived, in milliseconds: longer
    /// makes fewer, larger batches; shorter, less latency when records trickle in
    #[arg(long, value_name = "MS", default_value_t = PipelineOptions::DEFAULT_LINGER_MS)]
    linger_ms: u64,
    /// Serve /metrics (Prometheus), /healthz and /readyz here, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    json: bool,
}

impl ConsumeArgs {
    /// The pipeline's options from the flags; a zero where a count is asked for means one.
    pub fn options(&self, limits: Limits) -> PipelineOptions {
        let mut opts = PipelineOptions::new(limits);
        opts.batch_max_records = self.batch_size.max(1);
        opts.uploads_in_flight = self.uploads.max(1);
        opts.batch_max_bytes = self.batch_mib.max(1) << 20;
        opts.batches_in_flight = self.batches_in_flight.max(1);
        opts.batch_linger = Duration::from_millis(self.linger_ms);
        opts.until_idle = self.until_idle;
        opts.max_records = self.max;
        opts
    }
}

pub async fn run(settings: &Settings, args: ConsumeArgs) -> Result<ExitCode, String> {
    setup::preflight(settings, IMAGE_RECORD_SCHEMA, setup::Needs::Consumer).await?;
    let consumer = wiring::consumer(
        settings,
        args.options(wiring::limits(settings)),
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
        // One line, unlike the other reports: the bench and scripts read it per consumer.
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| e.to_string())?
        );
    }
    Ok(ExitCode::SUCCESS)
}
