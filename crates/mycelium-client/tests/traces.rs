//! Traces through the broker, native and HTTP: a message published with a trace context yields
//! broker spans (publish, store, deliver, ack) that are children of the publisher's span in one
//! trace, and the consumer receives a context that continues it. Spans go to an in-memory
//! exporter (this test binary installs the global subscriber, so it holds one test).

use std::time::Duration;

use mycelium_client::{Client, DurableOptions, PublishOptions, StartPosition};
use mycelium_test_support::TestServer;
use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn span<'a>(spans: &'a [SpanData], name: &str, trace: opentelemetry::trace::TraceId) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name && s.span_context.trace_id() == trace)
        .unwrap_or_else(|| {
            let names: Vec<_> = spans
                .iter()
                .map(|s| (s.name.to_string(), s.span_context.trace_id()))
                .collect();
            panic!("no `{name}` span in trace {trace}: {names:?}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_spans_continue_the_publisher_and_hand_the_context_to_the_consumer() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();
    mycelium_trace::set_enabled(true);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(&dir.path().join("t.sock"), move |c| {
        c.storage.data_dir = data.display().to_string();
        c.http.enabled = true;
        c.http.listen = "127.0.0.1:0".into();
        c.auth.mode = "none".into();
        c.topics.push(mycelium_server::config_topic("orders", |t| {
            t.delivery = "at_least_once".into();
        }));
    })
    .await;
    let client = Client::connect(&server.url()).await.unwrap();
    let options = DurableOptions {
        start: StartPosition::Beginning,
        ..DurableOptions::default()
    };
    let mut orders = client
        .subscribe_durable("orders", "billing", options)
        .await
        .unwrap();

    // Native: the publisher's span, its context in the message headers.
    let checkout = tracing::info_span!("checkout");
    let publisher_cx = mycelium_trace::context_of(&checkout);
    let publisher = publisher_cx.span().span_context().clone();
    client
        .publish_with(
            "orders",
            "order 1",
            &PublishOptions::default().with_trace_context(&publisher_cx),
        )
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), orders.next())
        .await
        .unwrap()
        .unwrap();
    let consumer_cx = message
        .trace_context()
        .expect("the delivery carries a trace context");
    let handed = consumer_cx.span().span_context().clone();
    client.ack_confirmed(&message).await.unwrap();
    drop(checkout);

    // HTTP: the same, with the header set by hand.
    let http_span = tracing::info_span!("http-producer");
    let http_parent = mycelium_trace::context_of(&http_span)
        .span()
        .span_context()
        .clone();
    let traceparent = format!("00-{}-{}-01", http_parent.trace_id(), http_parent.span_id());
    let base = format!("http://{}/api/v1", server.http.unwrap());
    let response = reqwest::Client::new()
        .post(format!("{base}/messages/publish"))
        .json(&serde_json::json!({"topic": "orders", "payload": {"order": 2}, "headers": {"traceparent": traceparent}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let second = tokio::time::timeout(Duration::from_secs(5), orders.next())
        .await
        .unwrap()
        .unwrap();
    let second_cx = second.trace_context().expect("context");
    client.ack(&second).await.unwrap();
    drop(http_span);
    client.close().await;
    server.stop().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let trace = publisher.trace_id();
    let publish = span(&spans, "mycelium.publish", trace);
    assert_eq!(
        publish.parent_span_id,
        publisher.span_id(),
        "the broker continues the publisher"
    );
    let store = span(&spans, "mycelium.store", trace);
    assert_eq!(store.parent_span_id, publish.span_context.span_id());
    let deliver = span(&spans, "mycelium.deliver", trace);
    assert_eq!(deliver.parent_span_id, publish.span_context.span_id());
    let ack = span(&spans, "mycelium.ack", trace);
    assert_eq!(ack.parent_span_id, deliver.span_context.span_id());
    assert_eq!(handed.trace_id(), trace, "the consumer continues the same trace");
    assert_eq!(
        handed.span_id(),
        deliver.span_context.span_id(),
        "as a child of the delivery"
    );
    assert_ne!(handed.span_id(), SpanId::INVALID);

    let http_trace = http_parent.trace_id();
    let http_publish = span(&spans, "mycelium.publish", http_trace);
    assert_eq!(http_publish.parent_span_id, http_parent.span_id());
    assert_eq!(second_cx.span().span_context().trace_id(), http_trace);
}
