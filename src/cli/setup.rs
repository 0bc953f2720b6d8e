//! `imgstream setup`: create (or, with `--check`, only compare) what the pipeline needs.

use super::SchemaArg;
use clap::Args;
use imgstream::config::Settings;
use std::process::ExitCode;

#[derive(Args)]
pub struct SetupArgs {
    /// Change nothing; exit non-zero listing what is missing or different
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    schema: SchemaArg,
}

pub async fn run(settings: &Settings, args: SetupArgs) -> Result<ExitCode, String> {
    let items = imgstream::setup::run(settings, &args.schema.load()?, args.check).await;
    for item in &items {
        // Each item masks the URLs it names; this is the last check before the terminal.
        println!("{}", imgstream::config::redact(&item.to_string()));
    }
    let problems = items.iter().filter(|i| i.state.is_problem()).count();
    if problems == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    Err(if args.check {
        format!("{problems} item(s) missing or different; run `imgstream setup`")
    } else {
        format!("setup incomplete: {problems} item(s) failed (see above)")
    })
}
