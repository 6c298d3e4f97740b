//! One connection served from bytes in memory, for the fuzzer (`fuzz/fuzz_targets/connection.rs`)
//! and the property test that runs the same path in the test command: the real handshake
//! (HELLO, credential check), frame decoding and dispatch, against an in-process broker with
//! authentication on. Not an API for anything else.

use std::sync::Arc;
use std::time::Duration;

use mycelium_broker::{Broker, Door};

use crate::connection::{self, Peer, Settings, SocketWrite};

/// The token of the harness's one service user (`fuzz`: producer and consumer of `f.>`).
pub const TOKEN: &str = "myc_fuzz";

/// An in-memory connection's write half: keeps everything the broker sends (each run has a
/// broker of its own, so what one input makes the broker hold never grows the next one's answers).
struct Sink(std::sync::Mutex<Vec<u8>>);

impl SocketWrite for Sink {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The settings of the harness's brokers and connections.
pub struct Harness {
    broker_config: mycelium_broker::BrokerConfig,
    settings: Arc<Settings>,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    /// Brokers with authentication on (one user, [`TOKEN`]) and default topics.
    ///
    /// # Panics
    /// The runtime or the broker cannot start (not input-dependent).
    pub fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut config = crate::Config::default();
        config.auth.users.push(crate::UserSection {
            name: "fuzz".into(),
            token_sha256: mycelium_auth::token_hash_hex(TOKEN),
            roles: vec!["producer".into(), "consumer".into()],
            publish: Some(vec!["f.>".into()]),
            subscribe: Some(vec!["f.>".into()]),
            ..crate::UserSection::default()
        });
        config.http.enabled = false;
        let auth = config.auth_config().expect("the harness's auth settings");
        let auth = Arc::new(mycelium_auth::Authenticator::new(auth).expect("the harness's keys"));
        let broker_config = config.broker_config().expect("defaults");
        let settings = Arc::new(Settings {
            server_name: "mycelium-harness".into(),
            frame_bytes_max: 1 << 20,
            connection_timeout: Duration::from_millis(50),
            buffer_capacity: 64 << 10,
            batch_size: 64,
            flush_interval: Duration::ZERO,
            inline_flush_bytes: 0,
            shutdown_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(60),
            auth,
            sessions: Arc::default(),
        });
        Harness {
            broker_config,
            settings,
            runtime,
        }
    }

    /// Serves one connection that sends `input` and closes; returns what the broker sent back.
    /// The first byte picks the peer: even, a TCP client (a credential needed); odd, a Unix
    /// client of the broker's own uid (an admin).
    pub fn serve(&self, input: &[u8]) -> Vec<u8> {
        let (first, rest) = input.split_first().map_or((0, input), |(f, r)| (*f, r));
        let peer = if first % 2 == 0 {
            Peer {
                door: Door::Tcp,
                address: "tcp:harness".into(),
                uid: None,
                common_name: None,
            }
        } else {
            Peer {
                door: Door::Unix,
                address: "unix".into(),
                uid: Some(rustix::process::geteuid().as_raw()),
                common_name: None,
            }
        };
        let sink = Sink(std::sync::Mutex::new(Vec::new()));
        let shared = Arc::new(sink);
        let writer = Shared(Arc::clone(&shared));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let broker = {
            let _entered = self.runtime.enter();
            Broker::new(self.broker_config.clone()).expect("a broker of defaults")
        };
        self.runtime.block_on(connection::serve(
            std::io::Cursor::new(rest.to_vec()),
            writer,
            peer,
            broker,
            Arc::clone(&self.settings),
            shutdown,
        ));
        std::mem::take(&mut *shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// The sink, shared with the harness that reads it afterwards.
struct Shared(Arc<Sink>);

impl SocketWrite for Shared {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn writable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}
