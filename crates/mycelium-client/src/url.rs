//! Broker addresses: `unix:///path/to/socket` or `tcp://host:port`.

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
        if let Some(addr) = url.strip_prefix("tcp://") {
            let valid = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!("`{url}`: expected tcp://host:port"),
                ));
            }
            return Ok(Endpoint::Tcp(addr.to_owned()));
        }
        Err(Error::new(
            ErrorKind::InvalidUrl,
            format!("`{url}`: use unix:///path/to.sock or tcp://host:port"),
        ))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}
