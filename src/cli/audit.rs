//! `imgstream status` and `imgstream verify`: what the services hold, read and compared.

use super::parse;
use clap::Args;
use imgstream::audit::{self, Checksums};
use imgstream::config::Settings;
use imgstream::index::ImageIndex;
use imgstream::store::ImageStore;
use imgstream::wiring;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Objects whose sha256 is recomputed (evenly spread)
    #[arg(long, default_value_t = 100, conflicts_with = "full")]
    sample: usize,
    /// Recompute the sha256 of every object
    #[arg(long)]
    full: bool,
    /// Delete orphan objects older than --grace (by the store's clock) that no consumer indexes
    #[arg(long)]
    repair: bool,
    /// Orphans younger than this may be a write in flight and are left alone (e.g. 15m, 2h, 3d)
    #[arg(long, default_value = "15m", value_parser = parse::duration)]
    pub grace: Duration,
    #[arg(long)]
    json: bool,
}

async fn connect_sinks(settings: &Settings) -> Result<(ImageStore, ImageIndex), String> {
    let store = wiring::store(settings).map_err(|e| e.to_string())?;
    let index = wiring::index(settings).await.map_err(|e| e.to_string())?;
    Ok((store, index))
}

pub async fn status(settings: &Settings, args: StatusArgs) -> Result<ExitCode, String> {
    let (store, index) = connect_sinks(settings).await?;
    let status = audit::status(settings, &store, &index, true)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        super::print_json(&status)?;
    } else {
        print!("{}", status.render(&settings.store.bucket));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(settings: &Settings, args: VerifyArgs) -> Result<ExitCode, String> {
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
        super::print_json(&report)?;
    } else {
        print!("{report}");
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
