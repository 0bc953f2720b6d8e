//! Log lines on stderr: `IMGSTREAM_LOG` filters them, `IMGSTREAM_LOG_FORMAT=json` makes them
//! JSON, and no credential of a URL reaches them.

use std::io::IsTerminal;

pub fn init() {
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
