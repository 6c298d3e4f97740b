//! An in-process server for client tests.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};

use mycelium_server::{Config, Server};
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub socket: PathBuf,
    /// The HTTP API's address, when the test turned it on.
    pub http: Option<std::net::SocketAddr>,
    /// The TCP listener's address, when the test turned it on.
    pub tcp: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start_at(socket: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        // The HTTP API has its own tests; these need no port of their own.
        config.http.enabled = false;
        config.server.socket_path = socket.display().to_string();
        config.server.tcp = String::new();
        adjust(&mut config);
        let server = Server::bind(config).await.unwrap();
        let http = server.http_addr();
        let tcp = server.tcp_addr();
        let shutdown = server.shutdown_token();
        let task = tokio::spawn(server.run());
        TestServer {
            socket: socket.to_owned(),
            http,
            tcp,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp.expect("the test turned TCP on"))
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
