//! A request the broker never answers fails with `Timeout` after `request_timeout` (for a
//! pipelined publish, counted from its send), and the connection goes on working: the next
//! request gets its own answer. The "broker" here is a
//! scripted peer on a real Unix socket that ignores the first confirmed publish; time is paused.

use std::time::Duration;

use bytes::BytesMut;
use mycelium_client::{Client, ClientOptions, ErrorKind};
use mycelium_protocol::{
    DEFAULT_FRAME_BYTES_MAX, Frame, PublishOk, SubscriptionRef, Welcome, decode, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// Answers HELLO with WELCOME, drops the first PUBLISH and confirms every later one, answers
/// every SUBSCRIBE with subscription id 7, and reports each UNSUBSCRIBE's id on `unsubscribed`.
async fn scripted_broker(listener: UnixListener, unsubscribed: mpsc::UnboundedSender<u32>) {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let mut publishes = 0u64;
    loop {
        while let Some((decoded, used)) = decode(&buf, DEFAULT_FRAME_BYTES_MAX).unwrap() {
            let mut out = BytesMut::new();
            match decoded.frame {
                Frame::Hello(_) => {
                    let welcome = Welcome {
                        version: mycelium_protocol::PROTOCOL_VERSION,
                        connection_id: 1,
                        frame_bytes_max: DEFAULT_FRAME_BYTES_MAX as u32,
                        server_name: "scripted",
                    };
                    encode(&mut out, decoded.request_id, &Frame::Welcome(welcome)).unwrap();
                }
                Frame::Publish(_) => {
                    publishes += 1;
                    if publishes > 1 {
                        let ok = PublishOk {
                            sequence: publishes,
                            message_id: [0; 16],
                            duplicate: false,
                        };
                        encode(&mut out, decoded.request_id, &Frame::PublishOk(ok)).unwrap();
                    }
                }
                Frame::Subscribe(_) => {
                    let ok = Frame::SubscribeOk(SubscriptionRef { subscription_id: 7 });
                    encode(&mut out, decoded.request_id, &ok).unwrap();
                }
                Frame::Unsubscribe(sub) => {
                    let _ = unsubscribed.send(sub.subscription_id);
                }
                Frame::Ping => encode(&mut out, decoded.request_id, &Frame::Pong).unwrap(),
                _ => {}
            }
            let _ = buf.split_to(used);
            if !out.is_empty() {
                stream.write_all(&out).await.unwrap();
            }
        }
        if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

/// The scripted peer on a Unix socket in a fresh directory, a client with a 3 s request timeout
/// connected to it, and the peer's reports of UNSUBSCRIBE frames.
async fn connect_scripted() -> (
    tempfile::TempDir,
    tokio::task::JoinHandle<()>,
    Client,
    mpsc::UnboundedReceiver<u32>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scripted.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, unsubscribed) = mpsc::unbounded_channel();
    let broker = tokio::spawn(scripted_broker(listener, tx));
    let options = ClientOptions {
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&format!("unix://{}", path.display()), options)
        .await
        .unwrap();
    (dir, broker, client, unsubscribed)
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_request_times_out_and_the_connection_keeps_working() {
    let (_dir, broker, client, _) = connect_scripted().await;

    let started = tokio::time::Instant::now();
    // Bounded from outside, so a client that never times out fails here instead of hanging.
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        client.publish_confirmed("orders", b"lost"),
    )
    .await
    .expect("the client's own request timeout fires first")
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the timeout"
    );
    assert!(error.to_string().contains("3s"), "{error}");

    // The next request is answered, and gets its own answer (sequence 2), not a stale one.
    assert_eq!(client.publish_confirmed("orders", b"kept").await.unwrap(), 2);
    client.close().await;
    broker.abort();
}

/// A pipelined publish's wait is counted from its send, not from when it is first awaited: the
/// unanswered one, awaited 2 s after it was sent, times out 3 s after the send; the answered one
/// sent after it resolves on its own.
#[tokio::test(start_paused = true)]
async fn a_pipelined_confirm_times_out_counted_from_the_send() {
    let (_dir, broker, client, _) = connect_scripted().await;

    let started = tokio::time::Instant::now();
    let lost = client.publish_pipelined("orders", b"lost").await.unwrap();
    let kept = client.publish_pipelined("orders", b"kept").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(kept.await.unwrap().sequence, 2, "its own answer");
    let error = tokio::time::timeout(Duration::from_secs(60), lost)
        .await
        .expect("the client's own request timeout fires first")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3_500),
        "timed out {waited:?} after the send (3 s expected, not 3 s after the first await)"
    );
    client.close().await;
    broker.abort();
}

/// Giving up a wait leaves nothing behind: a dropped pipelined confirm and a confirmed publish
/// cancelled from outside (its future dropped) are no longer pending; answered and timed-out
/// requests are not either.
#[tokio::test(start_paused = true)]
async fn a_wait_given_up_leaves_no_pending_request() {
    let (_dir, broker, client, _) = connect_scripted().await;
    // Never answered: given up by dropping the pending confirm.
    let lost = client.publish_pipelined("orders", b"lost").await.unwrap();
    assert_eq!(client.requests_pending(), 1);
    drop(lost);
    assert_eq!(client.requests_pending(), 0, "a dropped confirm is forgotten");
    // Answered (the peer confirms every later publish).
    assert_eq!(client.publish_confirmed("orders", b"kept").await.unwrap(), 2);
    assert_eq!(client.requests_pending(), 0);
    // A confirmed publish cancelled before its answer is read: its future is dropped.
    let cancelled = tokio::time::timeout(Duration::ZERO, client.publish_confirmed("orders", b"x")).await;
    assert!(cancelled.is_err(), "cancelled before the answer");
    assert_eq!(client.requests_pending(), 0, "a cancelled wait is forgotten");
    client.close().await;
    broker.abort();
}

/// A subscribe given up before its answer (its future dropped) leaves no subscription on the
/// broker: the late SUBSCRIBE_OK is answered with an UNSUBSCRIBE.
#[tokio::test(start_paused = true)]
async fn a_subscribe_given_up_before_its_answer_is_undone_on_the_broker() {
    let (_dir, broker, client, mut unsubscribed) = connect_scripted().await;
    let cancelled = tokio::time::timeout(Duration::ZERO, client.subscribe("orders")).await;
    assert!(cancelled.is_err(), "cancelled before the answer");
    let undone = tokio::time::timeout(Duration::from_secs(60), unsubscribed.recv())
        .await
        .expect("the client unsubscribes");
    assert_eq!(undone, Some(7), "the subscription the broker made");
    assert_eq!(client.requests_pending(), 0, "the SUBSCRIBE's answer came");
    client.close().await;
    broker.abort();
}
