//! `imgstream rewind`: move the group's committed offsets to a point in time, the start or the
//! end, printing each partition's old and new offset.

use imgstream::config::Settings;
use imgstream::kafka::off_thread;
use imgstream::kafka::rewind::{self, RewindTo};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RewindArgs {
    /// Where to: an RFC 3339 time, a time ago (2h, 3d), earliest or latest
    #[arg(long, value_name = "WHEN")]
    to: String,
    /// The consumer group to move (default: KAFKA_GROUP_ID)
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Print the moves, change nothing
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

fn target(to: &str) -> Result<RewindTo, String> {
    match to.trim().to_ascii_lowercase().as_str() {
        "earliest" => Ok(RewindTo::Earliest),
        "latest" => Ok(RewindTo::Latest),
        _ => super::parse::since(to)
            .map(RewindTo::Time)
            .map_err(|e| format!("--to: {e}, earliest or latest")),
    }
}

pub async fn run(settings: &Settings, args: RewindArgs) -> Result<ExitCode, String> {
    let to = target(&args.to)?;
    let mut kafka = settings.kafka.clone();
    if let Some(group) = args.group {
        kafka.group_id = group;
    }
    let (timeout, dry_run) = (settings.connect_timeout, args.dry_run);
    let report = off_thread(move || rewind::rewind(&kafka, to, dry_run, timeout))
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        super::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}
