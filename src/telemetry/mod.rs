//! Traces with OpenTelemetry: where one image spent its time, from the producer through Kafka to
//! the store, the index and the commit. Off unless the standard `OTEL_*` variables name an OTLP
//! endpoint; then `tracing` spans of the target [`TARGET`] become OpenTelemetry spans, exported
//! over OTLP/HTTP (protobuf) by a batch processor on a thread of its own.
//!
//! - The producer starts a `produce` span per record (ended by the broker's acknowledgement) and
//!   writes its W3C `traceparent` into the record's headers ([`spans::produce`]).
//! - The consumer continues that trace: a `process` span per record, child of the producer's,
//!   from poll to commit, with a child per stage (`check`, `upload`, `index`, `commit`); and a
//!   `batch` span per batch, a root of its own with a link to each record's context
//!   ([`spans::RecordSpans`]). A record without a `traceparent` starts a trace of its own.
//!
//! Sampling is the SDK's, from `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default
//! `parentbased_always_on`: the consumer keeps what the producer kept), with one addition: a
//! batch span is kept whenever one of its records is ([`sampler::KeepLinked`]), so a sampled
//! record's batch is never missing.
//!
//! Off costs nothing measurable: no exporter, no subscriber layer, the spans' callsites are
//! disabled (one cached check), and the consumer reads no header ([`enabled`] is checked first).

mod sampler;
pub mod spans;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Config, SdkTracer, SdkTracerProvider};
use std::sync::atomic::{AtomicBool, Ordering};

/// The `tracing` target of the spans that are exported; nothing else is.
pub const TARGET: &str = "imgstream::otel";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported in this process.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceSettings {
    Off,
    /// Export to this endpoint (as given: the signal's own variable, or the base endpoint to
    /// which the exporter appends `/v1/traces`).
    Otlp {
        endpoint: String,
    },
}

impl TraceSettings {
    /// From the OpenTelemetry specification's variables: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`. Only OTLP/HTTP with protobuf is built in; another protocol is
    /// refused by name rather than ignored.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<TraceSettings, String> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(TraceSettings::Off);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(TraceSettings::Off),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER: '{other}' is not built in; use otlp (or none)"
                ));
            }
        }
        let Some(endpoint) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(TraceSettings::Off);
        };
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = get(name) {
                if p != "http/protobuf" {
                    return Err(format!(
                        "{name}: '{p}' is not built in; imgstream exports traces over OTLP/HTTP: set http/protobuf and point the endpoint at the collector's HTTP port (4318)"
                    ));
                }
                break;
            }
        }
        Ok(TraceSettings::Otlp { endpoint })
    }

    pub fn from_env() -> Result<TraceSettings, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The running exporter; [`Telemetry::shutdown`] sends what is still queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts the exporter when the settings ask for it. The SDK reads the rest of its settings
    /// itself: sampler, service name and resource attributes, headers, timeout, batch sizes.
    pub fn start(settings: &TraceSettings) -> Result<Option<Telemetry>, String> {
        let TraceSettings::Otlp { endpoint } = settings else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|e| {
                format!(
                    "cannot export traces to {endpoint}: {e}; check OTEL_EXPORTER_OTLP_ENDPOINT"
                )
            })?;
        let env = Config::default();
        let mut builder = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler::KeepLinked::new(env.sampler))
            .with_resource(resource());
        // A batch span links to each of its sampled records; a batch holds up to 500 by default,
        // more than the SDK's 128 links.
        if std::env::var_os("OTEL_SPAN_LINK_COUNT_LIMIT").is_none() {
            builder = builder.with_max_links_per_span(1024);
        }
        ON.store(true, Ordering::Relaxed);
        Ok(Some(Telemetry {
            provider: builder.build(),
        }))
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("imgstream")
    }

    /// Exports the spans still queued and stops; the SDK waits at most 5 s for the collector.
    pub fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("imgstream: the last spans may not have been exported: {e}");
        }
    }
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named `imgstream`
/// when neither names the service, and with this build's version.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if unnamed {
        builder = builder.with_service_name("imgstream");
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<TraceSettings, String> {
        TraceSettings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn tracing_is_off_unless_an_otlp_endpoint_is_named() {
        assert_eq!(settings(&[]), Ok(TraceSettings::Off));
        assert_eq!(
            settings(&[("OTEL_TRACES_SAMPLER", "always_on")]),
            Ok(TraceSettings::Off)
        );
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
            Ok(TraceSettings::Otlp {
                endpoint: "http://collector:4318".into()
            })
        );
        assert_eq!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://b:4318/v1/traces"
                ),
            ]),
            Ok(TraceSettings::Otlp {
                endpoint: "http://b:4318/v1/traces".into()
            })
        );
    }

    #[test]
    fn the_sdk_switches_and_the_none_exporter_turn_it_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            Ok(TraceSettings::Off)
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(TraceSettings::Off)
        );
    }

    #[test]
    fn a_protocol_or_exporter_not_built_in_is_refused_by_its_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let e = settings(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'"), "{e}");
        let e = settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.starts_with("OTEL_TRACES_EXPORTER"), "{e}");
        // The signal's own variable wins over the general one.
        assert!(
            settings(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ])
            .is_ok()
        );
    }
}
