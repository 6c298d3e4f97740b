//! A raw frame client for protocol-level tests (the in-process server is
//! `mycelium_test_support::TestServer`).
#![allow(dead_code, missing_docs)]

use mycelium_test_support::TestServer;
use std::time::Duration;

use bytes::BytesMut;
use mycelium_protocol::{Frame, Hello, decode, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Either socket a client can reach the broker by.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A client that speaks raw frames, for protocol-level tests.
pub struct Raw {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

/// An owned copy of the frames tests look at.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Welcome,
    Error {
        request_id: u32,
        code: u16,
        message: String,
    },
    SubscribeOk {
        request_id: u32,
        id: u32,
    },
    UnsubscribeOk(u32),
    Deliver {
        sub: u32,
        sequence: u64,
        topic: String,
        payload: Vec<u8>,
    },
    PublishOk {
        request_id: u32,
        sequence: u64,
    },
    Pong(u32),
    AdminOk {
        request_id: u32,
        json: Vec<u8>,
    },
    Other(String),
}

impl Raw {
    pub async fn connect(server: &TestServer) -> Raw {
        let stream = UnixStream::connect(&server.socket).await.unwrap();
        Raw {
            stream: Box::new(stream),
            buf: BytesMut::new(),
        }
    }

    /// Connected to the TCP listener, nothing sent yet.
    pub async fn connect_tcp(server: &TestServer) -> Raw {
        let stream = tokio::net::TcpStream::connect(server.tcp_addr()).await.unwrap();
        Raw {
            stream: Box::new(stream),
            buf: BytesMut::new(),
        }
    }

    /// Sends HELLO with `token`; the broker's first answer (WELCOME, or the ERROR that closes).
    pub async fn hello_with(mut self, token: &[u8]) -> (Raw, Option<Got>) {
        self.send(
            0,
            &Frame::Hello(Hello {
                version_min: 1,
                version_max: 1,
                client_name: "raw",
                token,
            }),
        )
        .await;
        let got = self.recv().await;
        (self, got)
    }

    pub async fn hello(server: &TestServer) -> Raw {
        let mut raw = Raw::connect(server).await;
        raw.send(
            0,
            &Frame::Hello(Hello {
                version_min: 1,
                version_max: 1,
                client_name: "raw",
                token: b"",
            }),
        )
        .await;
        assert_eq!(raw.recv().await, Some(Got::Welcome));
        raw
    }

    pub async fn send(&mut self, request_id: u32, frame: &Frame<'_>) {
        let mut buf = BytesMut::new();
        encode(&mut buf, request_id, frame).unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` when the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Got> {
        loop {
            if let Some((decoded, used)) = decode(&self.buf, usize::MAX).unwrap() {
                let got = match decoded.frame {
                    Frame::Welcome(_) => Got::Welcome,
                    Frame::Error(e) => Got::Error {
                        request_id: decoded.request_id,
                        code: e.code,
                        message: e.message.to_owned(),
                    },
                    Frame::SubscribeOk(s) => Got::SubscribeOk {
                        request_id: decoded.request_id,
                        id: s.subscription_id,
                    },
                    Frame::UnsubscribeOk(s) => Got::UnsubscribeOk(s.subscription_id),
                    Frame::Deliver(d) => Got::Deliver {
                        sub: d.subscription_id,
                        sequence: d.sequence,
                        topic: d.topic.to_owned(),
                        payload: d.payload.to_vec(),
                    },
                    Frame::PublishOk(p) => Got::PublishOk {
                        request_id: decoded.request_id,
                        sequence: p.sequence,
                    },
                    Frame::Pong => Got::Pong(decoded.request_id),
                    Frame::AdminOk(json) => Got::AdminOk {
                        request_id: decoded.request_id,
                        json: json.to_vec(),
                    },
                    other => Got::Other(format!("{other:?}")),
                };
                let _ = self.buf.split_to(used);
                return Some(got);
            }
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
                .expect("no frame within 10 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the broker closes the connection; returns what came before.
    pub async fn recv_until_closed(&mut self) -> Vec<Got> {
        let mut all = Vec::new();
        while let Some(got) = self.recv().await {
            all.push(got);
        }
        all
    }
}
