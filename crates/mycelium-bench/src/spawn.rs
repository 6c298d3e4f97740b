//! The broker a bench run measures when no `--url` is given: this executable (or
//! `--broker-bin`) spawned on fresh ports and a temporary data directory, and the credentials the
//! bench's clients show it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A spawned broker, killed on drop.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) tcp: String,
    pub(crate) http: String,
    /// The HTTP API's Unix socket.
    pub(crate) http_unix: PathBuf,
}

/// The spawned broker's HTTP API secret (a bench-only broker on loopback).
const BENCH_JWT_SECRET: &str = "mycelium-bench-only-secret-0123456789abcdef";

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn_broker(binary: Option<PathBuf>, tls: Option<&Path>) -> anyhow::Result<Spawned> {
    let binary = match binary {
        Some(path) => path,
        None => std::env::current_exe().context("locating the mycelium binary")?,
    };
    // The ports are picked free and then handed to the broker: another process may take one in
    // between. A broker that exits at start-up is tried again on new ports.
    for _ in 0..3 {
        if let Some(spawned) = try_spawn_broker(&binary, tls)? {
            return Ok(spawned);
        }
    }
    bail!("the spawned broker did not come up (Unix socket, TCP and HTTP listeners)")
}

/// One start: `None` when the broker exited before listening (a port taken meanwhile).
fn try_spawn_broker(binary: &Path, tls: Option<&Path>) -> anyhow::Result<Option<Spawned>> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("bench.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let tcp = format!("127.0.0.1:{port}");
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let http = format!("127.0.0.1:{http_port}");
    let http_unix = dir.path().join("http.sock");
    // Stored topics for `bench durable`, with their log on the data disk like any deployment.
    let config = dir.path().join("bench.toml");
    let data = dir.path().join("data");
    let mut text = format!(
        "[server]\nmax_connections = 100000\nmax_connections_per_ip = 100000\n[storage]\ndata_dir = \"{}\"\n[auth]\njwt_secret = \"{BENCH_JWT_SECRET}\"\n[http]\nunix_socket = \"{}\"\n",
        data.display(),
        http_unix.display()
    );
    if let Some(tls) = tls {
        // TLS on the native TCP listener only: the HTTP bench stays comparable.
        text.push_str(&format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nplain_http = true\n",
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ));
    }
    for fsync in ["batch", "always", "never"] {
        text.push_str(&format!(
            "[[topics]]\nname = \"{}\"\ndelivery = \"at_least_once\"\nfsync = \"{fsync}\"\nretention = \"work_queue\"\n",
            crate::durable::topic(fsync)
        ));
    }
    std::fs::write(&config, text)?;
    let child = Command::new(binary)
        .args([
            "serve",
            "--config",
            &config.display().to_string(),
            "--socket",
            &socket.display().to_string(),
            "--tcp",
            &tcp,
            "--http",
            &http,
        ])
        .env("MYCELIUM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {} serve", binary.display()))?;
    let mut spawned = Spawned {
        child,
        _dir: dir,
        socket,
        tcp,
        http,
        http_unix,
    };
    // Up once every listener accepts (they bind one after another).
    for _ in 0..500 {
        let up = std::os::unix::net::UnixStream::connect(&spawned.socket).is_ok()
            && std::net::TcpStream::connect(&spawned.tcp).is_ok()
            && std::net::TcpStream::connect(&spawned.http).is_ok()
            && std::os::unix::net::UnixStream::connect(&spawned.http_unix).is_ok();
        if up {
            return Ok(Some(spawned));
        }
        if spawned.child.try_wait()?.is_some() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the spawned broker did not come up (Unix socket, TCP and HTTP listeners)")
}

/// A token for the spawned broker's HTTP API: HS256 over the secret the bench gives that broker,
/// with the claims its doors read (`sub`, `exp`, the `roles` claim).
pub(crate) fn bench_token() -> anyhow::Result<String> {
    bench_token_with(&["producer"])
}

/// The credential the bench's native clients send the spawned broker (both doors check it).
pub(crate) fn native_bench_token() -> anyhow::Result<mycelium_client::Token> {
    Ok(mycelium_client::Token::new(bench_token_with(&["admin"])?))
}

fn bench_token_with(roles: &[&str]) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "sub": "mycelium-bench",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "roles": roles,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(BENCH_JWT_SECRET.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )?)
}
