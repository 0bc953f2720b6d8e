//! Log lines on stderr: `IMGSTREAM_LOG` filters them, `IMGSTREAM_LOG_FORMAT=json` makes them
//! JSON, and no credential of a URL reaches them.

use imgstream::telemetry::{self, Telemetry, TraceSettings};
use std::io::IsTerminal;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Starts logging, and the trace exporter when the `OTEL_*` variables ask for one (returned, to
/// be shut down at exit so the last spans are sent). A trace setting that cannot work is an
/// error: the command does not start with tracing silently off.
pub fn init() -> Result<Option<Telemetry>, String> {
    let mut directives =
        std::env::var("IMGSTREAM_LOG").unwrap_or_else(|_| "info,rdkafka=warn,sqlx=warn".into());
    // rustls logs a refused certificate itself, at error level, on every attempt; the error that
    // reaches the user names it once. A filter that mentions rustls decides for itself.
    if !directives.contains("rustls") {
        directives.push_str(",rustls=off");
    }
    // The spans made for export are not log lines; turned off here, they cost nothing when
    // tracing is off too (their callsites are disabled).
    if !directives.contains(telemetry::TARGET) {
        directives.push_str(&format!(",{}=off", telemetry::TARGET));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(|| RedactingWriter(std::io::stderr()));
    let fmt = if std::env::var("IMGSTREAM_LOG_FORMAT").is_ok_and(|v| v == "json") {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .with_filter(filter)
            .boxed()
    };
    let telemetry = TraceSettings::from_env().and_then(|s| Telemetry::start(&s));
    let started = telemetry.as_ref().ok().and_then(Option::as_ref);
    let otel = started.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_filter(Targets::new().with_target(telemetry::TARGET, LevelFilter::INFO))
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    telemetry
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
