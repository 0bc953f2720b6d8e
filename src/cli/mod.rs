//! The `imgstream` command line, one file per command: its flags and its handler, which builds
//! the library's options, calls the library and prints the report (each report renders itself,
//! beside its type in the library). [`parse`] holds the flags' value parsers, [`logging`] the
//! log setup; `main.rs` starts the runtime and dispatches.

pub mod audit;
pub mod consume;
pub mod dlq;
pub mod erase;
pub mod logging;
pub mod monitor;
pub mod parse;
pub mod produce;
pub mod rewind;
pub mod serve;
pub mod setup;

use clap::{Args, Parser, Subcommand};
use imgstream::schema::IMAGE_RECORD_SCHEMA;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "imgstream",
    version,
    about = "Streams images from Kafka into object storage with a PostgreSQL index"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create everything the pipeline needs: index migrations, topics, bucket, registered schema
    Setup(setup::SetupArgs),
    /// Generate realistic images and send them to the data topic
    Produce(produce::ProduceArgs),
    /// Store every record of the data topic as an object plus an index row
    Consume(consume::ConsumeArgs),
    /// Per-partition lag, index rows, bucket objects and dead-letter depth
    Status(audit::StatusArgs),
    /// Audit the bucket against the index
    Verify(audit::VerifyArgs),
    /// Inspect dead letters and send fixed ones back to the data topic
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Forget images: a customer's (before a time) or some by id, objects, thumbnails and rows,
    /// kept as an erasure that no consumer stores again
    Erase(erase::EraseArgs),
    /// Erase every image older than IMGSTREAM_RETENTION, as an erasure
    Retain(erase::RetainArgs),
    /// Move the group's committed offsets to a time, the start or the end, to reprocess from there
    Rewind(rewind::RewindArgs),
    /// Export the group's lag per partition (records, seconds) at /metrics, consumers alive or not
    Monitor(monitor::MonitorArgs),
    /// Browse and fetch stored images and watch the pipeline: gallery, JSON API, metrics
    Serve(serve::ServeArgs),
}

/// The schema `setup` registers and `produce` writes with.
#[derive(Args)]
pub struct SchemaArg {
    /// Avro value schema to register (default: the schema compiled in from schema/image-record.avsc)
    #[arg(long, value_name = "PATH")]
    schema_file: Option<PathBuf>,
}

impl SchemaArg {
    pub fn load(&self) -> Result<String, String> {
        match &self.schema_file {
            None => Ok(IMAGE_RECORD_SCHEMA.to_string()),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read schema file {}: {e}", p.display())),
        }
    }
}

/// A report as pretty JSON on stdout, for `--json`.
pub fn print_json(report: &impl serde::Serialize) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(report).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use imgstream::config::Settings;
    use imgstream::pipeline::PipelineOptions;
    use imgstream::wiring;
    use std::collections::HashMap;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("imgstream").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bad_duration_names_its_flag_and_the_forms_taken() {
        for args in [
            &["dlq", "ls", "--since", "3x"][..],
            &["consume", "--until-idle", "soon"],
            &["verify", "--repair", "--grace", "a while"],
            &["produce", "--duration", "5 parsecs"],
        ] {
            let error = parse(args).err().expect("refused").to_string();
            assert!(error.contains(args[args.len() - 2]), "{error}");
            assert!(error.contains("3d"), "{error}");
        }
    }

    #[test]
    fn durations_are_taken_in_days_minutes_and_bare_seconds() {
        let Command::Consume(consume) = parse(&["consume", "--until-idle", "3"]).unwrap().command
        else {
            panic!("consume")
        };
        assert_eq!(consume.until_idle, Some(Duration::from_secs(3)));
        let Command::Consume(consume) = parse(&["consume", "--until-idle", "90min"])
            .unwrap()
            .command
        else {
            panic!("consume")
        };
        assert_eq!(consume.until_idle, Some(Duration::from_secs(90 * 60)));
        let Command::Verify(verify) = parse(&["verify", "--repair", "--grace", "3d"])
            .unwrap()
            .command
        else {
            panic!("verify")
        };
        assert_eq!(verify.grace, Duration::from_secs(3 * 24 * 3600));
        assert!(parse(&["dlq", "ls", "--since", "3d"]).is_ok());
    }

    #[test]
    fn consume_defaults_to_the_pipeline_defaults() {
        let Command::Consume(args) = parse(&["consume"]).unwrap().command else {
            panic!("consume")
        };
        let settings = Settings::from_vars(&HashMap::new()).unwrap();
        let defaults = PipelineOptions::new(wiring::limits(&settings));
        let opts = args.options(defaults.limits);
        assert_eq!(opts.batch_max_records, defaults.batch_max_records);
        assert_eq!(opts.batch_max_bytes, defaults.batch_max_bytes);
        assert_eq!(opts.uploads_in_flight, defaults.uploads_in_flight);
        assert_eq!(opts.batches_in_flight, defaults.batches_in_flight);
        assert_eq!(opts.batch_linger, defaults.batch_linger);
        assert_eq!(opts.until_idle, None);
    }
}
