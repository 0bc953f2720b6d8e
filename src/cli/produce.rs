//! `imgstream produce`: generate images and send them to the data topic.

use super::{SchemaArg, parse};
use clap::Args;
use imgstream::config::Settings;
use imgstream::produce::{self, ProduceOptions, RecordKey};
use imgstream::schema::IMAGE_RECORD_SCHEMA;
use imgstream::setup;
use imgstream::shutdown::Shutdown;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct ProduceArgs {
    /// Number of images to send
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Send for this long instead (e.g. 30s, 5m, 1h30m)
    #[arg(long, value_parser = parse::duration)]
    duration: Option<Duration>,
    /// Images per second; 0 = as fast as possible
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Width in pixels, or a range like 320-1280
    #[arg(long, default_value = "256-1024", value_parser = parse::size_range)]
    width: (u32, u32),
    /// Height in pixels, or a range like 240-960
    #[arg(long, default_value = "256-768", value_parser = parse::size_range)]
    height: (u32, u32),
    /// png, jpeg, webp, or mix
    #[arg(long, default_value = "mix", value_parser = parse::formats)]
    format: parse::Formats,
    /// Customer id on every record (default: PRODUCER_CUSTOMER_ID)
    #[arg(long)]
    customer_id: Option<String>,
    /// Seed for reproducible images (default: random)
    #[arg(long)]
    seed: Option<u64>,
    /// Number of distinct sources (devices)
    #[arg(long, default_value_t = 16)]
    sources: u32,
    /// Record key: `source` keeps one source's images in order on one partition; `image`
    /// spreads images evenly over the partitions, with no order per source
    #[arg(long, default_value = "source", value_parser = parse::record_key)]
    key: RecordKey,
    #[command(flatten)]
    schema: SchemaArg,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    json: bool,
}

pub async fn run(settings: &Settings, args: ProduceArgs) -> Result<ExitCode, String> {
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
        key: args.key,
        schema: args.schema.load()?,
        progress: std::io::stderr().is_terminal() && !args.json,
    };
    let summary = produce::produce(settings, opts, Shutdown::on_signals())
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        super::print_json(&summary)?;
    } else {
        println!("{summary}");
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
