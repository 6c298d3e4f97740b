//! An in-process broker for tests: [`TestServer`] binds the real server (`Server::bind`) to a
//! Unix socket (in a temporary directory, or a path the test gives) and, when asked, TCP port 0,
//! runs it on the test's runtime, and shuts it down when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mycelium_server::units::HumanDuration;
use mycelium_server::{Config, ConfigSource, Reloader, Server};
use tokio_util::sync::CancellationToken;

/// A broker running in this process.
#[derive(Debug)]
pub struct TestServer {
    /// Its Unix socket.
    pub socket: PathBuf,
    /// Its TCP listener, when on ([`TestServer::start`] turns it on).
    pub tcp: Option<SocketAddr>,
    /// Its HTTP API, when the test turned it on.
    pub http: Option<SocketAddr>,
    /// Its broker core.
    pub broker: Arc<mycelium_broker::Broker>,
    /// Its reload machinery (reloads read the file of [`TestServer::start_file`]).
    pub reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// The token of the admin user every test server knows (`test-admin`): what a test sends in
/// HELLO over TCP, where a credential is required.
pub const TEST_TOKEN: &str = "myc_test-support-admin-token";

impl TestServer {
    /// A broker with defaults, on a socket in a temporary directory and TCP port 0.
    ///
    /// # Panics
    /// The server cannot start.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// As [`TestServer::start`], with the configuration adjusted first.
    ///
    /// # Panics
    /// The server cannot start.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("broker.sock");
        let mut server = TestServer::start_at(&socket, |config| {
            config.server.tcp = "127.0.0.1:0".into();
            adjust(config);
        })
        .await;
        server._dir = Some(dir);
        server
    }

    /// A broker on the Unix socket `socket` (TCP off unless `adjust` turns it on; the HTTP API
    /// off unless `adjust` turns it on: it has tests of its own).
    ///
    /// # Panics
    /// The server cannot start.
    pub async fn start_at(socket: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.http.enabled = false;
        config.server.socket_path = socket.display().to_string();
        config.server.tcp = String::new();
        config.server.shutdown_timeout = HumanDuration(Duration::from_secs(2));
        config.auth.users.push(mycelium_server::UserSection {
            name: "test-admin".into(),
            token_sha256: mycelium_auth::token_hash_hex(TEST_TOKEN),
            roles: vec!["admin".into()],
            ..mycelium_server::UserSection::default()
        });
        adjust(&mut config);
        let server = Server::bind(config).await.expect("the test server starts");
        TestServer::running(server, socket)
    }

    /// A broker configured by the file `file`, as `mycelium serve -c file` is (without the
    /// SIGHUP and file-watch triggers: the test calls `reloader.reload`). The file names the
    /// socket.
    ///
    /// # Panics
    /// The file is invalid or the server cannot start.
    pub async fn start_file(file: &Path) -> TestServer {
        let config = Config::load(Some(file), Vec::new()).expect("a valid configuration file");
        let socket = PathBuf::from(&config.server.socket_path);
        let server = Server::bind(config).await.expect("the test server starts");
        let source = ConfigSource {
            file: Some(file.to_owned()),
            ..ConfigSource::default()
        };
        server
            .watch(source, false, false)
            .expect("reloads can read the file");
        TestServer::running(server, &socket)
    }

    fn running(server: Server, socket: &Path) -> TestServer {
        let http = server.http_addr();
        let tcp = server.tcp_addr();
        let shutdown = server.shutdown_token();
        let broker = Arc::clone(server.broker());
        let reloader = Arc::clone(server.reloader());
        let task = tokio::spawn(server.run());
        TestServer {
            socket: socket.to_owned(),
            tcp,
            http,
            broker,
            reloader,
            shutdown,
            task: Some(task),
            _dir: None,
        }
    }

    /// The client URL of its Unix socket.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its TCP address.
    ///
    /// # Panics
    /// TCP is off.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp.expect("the test turned TCP on")
    }

    /// The client URL of its TCP listener.
    ///
    /// # Panics
    /// TCP is off.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp_addr())
    }

    /// Shuts it down and waits until it has stopped.
    ///
    /// # Panics
    /// The server task panicked.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the server task ends cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
