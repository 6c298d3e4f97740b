//! Broker addresses: `unix:///path/to/socket`, `tcp://host:port` or `tls://host:port`.

use std::fmt;
use std::path::PathBuf;

use crate::{Error, ErrorKind};

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
    /// A TCP `host:port` with TLS (the certificate must name `host`).
    Tls(String),
}

impl std::str::FromStr for Endpoint {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if let Some(path) = url.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!("`{url}`: no socket path after unix://"),
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        for (scheme, tls) in [("tcp://", false), ("tls://", true)] {
            let Some(addr) = url.strip_prefix(scheme) else {
                continue;
            };
            let valid = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!("`{url}`: expected {scheme}host:port"),
                ));
            }
            return Ok(if tls {
                Endpoint::Tls(addr.to_owned())
            } else {
                Endpoint::Tcp(addr.to_owned())
            });
        }
        Err(Error::new(
            ErrorKind::InvalidUrl,
            format!("`{url}`: use unix:///path/to.sock, tcp://host:port or tls://host:port"),
        ))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::Tls(addr) => write!(f, "tls://{addr}"),
        }
    }
}
