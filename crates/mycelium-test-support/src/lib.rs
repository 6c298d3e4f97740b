//! Test support shared by Mycelium's crates. It is a dev-dependency only: no crate's normal
//! dependencies may name it (the tidy test `crate_graph_is_the_documented_one` checks).
//!
//! - [`TestServer`]: the broker in-process, on a temporary socket and TCP port 0.
//! - [`Spawned`]: the real binary as a process (signals, SIGKILL, restarts), killed on drop.
//! - [`available`] and [`Need`]: tests that need root, NATS or Redis.
//!
//! Its own tests are the repository's tidy checks (`tests/tidy.rs`): the crate graph drawn in
//! ARCHITECTURE.md, dependencies used by the code that lists them, and the broker's layers.

mod server;
mod spawned;
mod tls;

use std::path::{Path, PathBuf};

pub use server::{TEST_TOKEN, TestServer};
pub use spawned::Spawned;
pub use tls::{TlsFixture, tls_fixture};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Every `.rs` file under `dir`, sorted (empty if `dir` does not exist).
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Something a test needs beyond `cargo test` on any machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (mounting a small tmpfs for full-disk tests).
    Root,
    /// nats-server with JetStream on 127.0.0.1:4222.
    Nats,
    /// Redis on 127.0.0.1:6379.
    Redis,
}

/// The environment variable `./scripts/test` sets: every test runs, and a missing need fails.
pub const REQUIRE_ALL: &str = "MYCELIUM_TEST_ALL";

impl Need {
    /// Why this machine lacks it, or `None` when it has it.
    pub fn missing(self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let port_open = |port: u16| {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(500)).is_ok()
        };
        match self {
            // /proc/self belongs to the process's effective user.
            Need::Root => match std::fs::metadata("/proc/self") {
                Ok(meta) if meta.uid() == 0 => None,
                _ => Some("root (it mounts a small tmpfs)".into()),
            },
            Need::Nats => (!port_open(4222)).then(|| "nats-server on 127.0.0.1:4222".into()),
            Need::Redis => (!port_open(6379)).then(|| "Redis on 127.0.0.1:6379".into()),
        }
    }
}

/// Whether the calling test may run here. When something it needs is missing, it says so on
/// stderr and returns `false` (the test returns early: skipped, with its reason printed), unless
/// [`REQUIRE_ALL`] is set, as `./scripts/test` does: then it panics, so the suite fails rather
/// than skip a test silently.
///
/// # Panics
/// A need is missing and [`REQUIRE_ALL`] is set.
pub fn available(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_owned();
    let reason = missing.join(", ");
    assert!(
        std::env::var_os(REQUIRE_ALL).is_none(),
        "{test} needs {reason}, and {REQUIRE_ALL} is set: ./scripts/test provides these"
    );
    eprintln!("skipped {test}: it needs {reason} (./scripts/test provides it)");
    false
}
