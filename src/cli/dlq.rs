//! `imgstream dlq ls` and `imgstream dlq replay`: the dead letters, and sending fixed ones back.

use super::parse;
use clap::{Args, Subcommand};
use imgstream::config::Settings;
use imgstream::dlq;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DlqCommand {
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
pub struct DlqSelect {
    /// Only letters with this code (e.g. too-many-pixels)
    #[arg(long)]
    code: Option<String>,
    /// Only letters dead-lettered since then: a time ago (30m, 2h, 3d) or an RFC 3339 timestamp
    #[arg(long, value_parser = parse::since)]
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

pub async fn run(settings: &Settings, command: DlqCommand) -> Result<ExitCode, String> {
    match command {
        DlqCommand::Ls { select, json } => {
            let listing = dlq::list(settings, &select.selection())
                .await
                .map_err(|e| e.to_string())?;
            if json {
                super::print_json(&listing)?;
            } else {
                print!("{listing}");
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
                super::print_json(&report)?;
            } else {
                print!("{}", report.render(max_replays));
            }
            // Letters without their value cannot be replayed from the dead-letter topic: said
            // on stderr, and the command fails, so a script does not take a partial replay for
            // a whole one.
            for l in &report.not_replayable {
                eprintln!("{}", l.why_not_replayed());
            }
            Ok(if report.not_replayable.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
