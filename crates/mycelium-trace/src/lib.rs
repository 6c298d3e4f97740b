//! Traces through the broker: W3C trace context (`traceparent`, `tracestate`) travels in message
//! headers; the broker continues a publisher's context with its own spans (publish, store,
//! deliver, ack / nack, dead-letter) and hands its context on to consumers in the delivered
//! headers; spans are exported over OTLP (gRPC or HTTP) when configured. Off by default, and
//! then nothing here runs on the message path: callers check [`enabled`] first.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use mycelium_protocol::{HeaderIter, encode_headers};
pub use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the broker traces messages (set once an exporter is installed).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns message tracing on or off (the exporter set-up calls it; tests with their own exporter
/// too).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The header carrying the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying the W3C trace state.
pub const TRACESTATE: &str = "tracestate";

struct HeaderBlock<'a>(Vec<(&'a str, String)>);

impl Extractor for HeaderBlock<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

#[derive(Default)]
struct Carrier(Vec<(String, String)>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Whether a header block carries a trace context.
pub fn has_context(headers: &[u8]) -> bool {
    HeaderIter::new(headers)
        .map_while(Result::ok)
        .any(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
}

/// The trace context in a header block (`None`: no valid `traceparent`).
pub fn extract(headers: &[u8]) -> Option<Context> {
    let pairs: Vec<(&str, String)> = HeaderIter::new(headers)
        .map_while(Result::ok)
        .filter(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT) || k.eq_ignore_ascii_case(TRACESTATE))
        .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderBlock(pairs));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent` / `tracestate` header values of `cx`.
pub fn inject(cx: &Context) -> Vec<(String, String)> {
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.0
}

/// `headers` with its trace context replaced by `cx`'s (other headers kept, in order).
pub fn with_context(headers: &[u8], cx: &Context) -> Bytes {
    let injected = inject(cx);
    let mut out = BytesMut::with_capacity(headers.len() + 80);
    let kept = HeaderIter::new(headers)
        .map_while(Result::ok)
        .filter(|(k, _)| !k.eq_ignore_ascii_case(TRACEPARENT) && !k.eq_ignore_ascii_case(TRACESTATE));
    let added = injected.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    if encode_headers(&mut out, kept.chain(added)).is_err() {
        return Bytes::copy_from_slice(headers);
    }
    out.freeze()
}

/// A broker span (`mycelium.publish`, `mycelium.store`, ...) continuing the context in
/// `headers`, or a new root when they carry none.
pub fn span(name: &'static str, topic: &str, headers: &[u8]) -> tracing::Span {
    let span = match name {
        "mycelium.publish" => {
            tracing::info_span!("mycelium.publish", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic, messaging.operation = "publish")
        }
        "mycelium.store" => {
            tracing::info_span!("mycelium.store", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic)
        }
        "mycelium.route" => {
            tracing::info_span!("mycelium.route", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic)
        }
        "mycelium.deliver" => {
            tracing::info_span!("mycelium.deliver", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic, messaging.operation = "deliver")
        }
        "mycelium.ack" => {
            tracing::info_span!("mycelium.ack", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic, messaging.operation = "settle")
        }
        "mycelium.nack" => {
            tracing::info_span!("mycelium.nack", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic, messaging.operation = "settle")
        }
        _ => {
            tracing::info_span!("mycelium.dead_letter", messaging.system = "mycelium", trace_id = tracing::field::Empty, messaging.destination.name = %topic)
        }
    };
    if let Some(parent) = extract(headers) {
        let trace_id = parent.span().span_context().trace_id().to_string();
        let _ = span.set_parent(parent);
        // Log lines inside the span (JSON logs show the current span) carry the trace id.
        span.record("trace_id", trace_id.as_str());
    }
    span
}

/// The OpenTelemetry context of a tracing span (to hand on in headers).
pub fn context_of(span: &tracing::Span) -> Context {
    span.context()
}

/// How spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// OTLP endpoint (`http://127.0.0.1:4317` for gRPC, `http://127.0.0.1:4318/v1/traces` for
    /// HTTP); empty: tracing off.
    pub otlp_endpoint: String,
    /// `grpc` or `http`.
    pub protocol: String,
    /// Fraction of new traces sampled (a sampled parent is always followed).
    pub sampling_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// An installed exporter: flushes and shuts down when dropped.
#[derive(Debug)]
pub struct Exporter {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Exporter {
    /// The tracer to hand to `tracing_opentelemetry::layer().with_tracer(..)`.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        use opentelemetry::trace::TracerProvider as _;
        self.provider.tracer("mycelium")
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        set_enabled(false);
        let _ = self.provider.shutdown();
    }
}

/// Why the OTLP exporter cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `tracing.protocol` is neither `grpc` nor `http`.
    #[error("tracing.protocol `{0}` is not grpc or http")]
    Protocol(String),
    /// The exporter refused its settings (the endpoint, say).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Builds the OTLP exporter and turns message tracing on (`None` when no endpoint is set). Call
/// inside a tokio runtime.
///
/// # Errors
/// An unusable endpoint or protocol.
pub fn install(config: &TraceConfig) -> Result<Option<Exporter>, InstallError> {
    use opentelemetry_otlp::WithExportConfig;
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = match config.protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .build(),
        "http" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.otlp_endpoint.clone())
            .build(),
        other => return Err(InstallError::Protocol(other.to_owned())),
    }
    .map_err(|e| InstallError::Exporter(e.to_string()))?;
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(config.sampling_ratio.clamp(0.0, 1.0)),
    ));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    set_enabled(true);
    Ok(Some(Exporter { provider }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn trace_context_round_trips_through_a_header_block() {
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(span_context.clone());
        let mut block = BytesMut::new();
        encode_headers(
            &mut block,
            [("kind", &b"order"[..]), ("traceparent", b"00-old-old-00")],
        )
        .unwrap();
        let rewritten = with_context(&block, &cx);
        let pairs: Vec<(String, Vec<u8>)> = HeaderIter::new(&rewritten)
            .map_while(Result::ok)
            .map(|(k, v)| (k.to_owned(), v.to_vec()))
            .collect();
        assert_eq!(
            pairs[0],
            ("kind".to_owned(), b"order".to_vec()),
            "other headers kept"
        );
        assert_eq!(
            pairs[1],
            (
                "traceparent".to_owned(),
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()
            )
        );
        let back = extract(&rewritten).expect("a context");
        assert_eq!(back.span().span_context().span_id(), span_context.span_id());
        assert!(has_context(&rewritten));
        assert!(extract(b"").is_none());
        let mut junk = BytesMut::new();
        encode_headers(&mut junk, [("traceparent", &b"not a trace"[..])]).unwrap();
        assert!(extract(&junk).is_none(), "an invalid traceparent is no context");
    }
}
