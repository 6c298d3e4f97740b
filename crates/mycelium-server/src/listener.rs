//! Binding the Unix and TCP listeners.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::ServerError;

/// Binds the Unix socket at `path`. A socket file left by a dead broker is replaced; a socket a
/// live broker answers on, or a path that is not a socket, is refused.
pub(crate) fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    let bind_error = |source: io::Error| ServerError::Bind {
        what: format!("unix socket {}", path.display()),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::SocketPathTaken {
                path: path.to_owned(),
                reason: "it exists and is not a socket; not touching it".into(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(ServerError::SocketPathTaken {
                    path: path.to_owned(),
                    reason: "a running broker is listening on it".into(),
                });
            }
            Err(_) => {
                tracing::warn!(path = %path.display(), "removing stale socket file left by a broker that is gone");
                std::fs::remove_file(path).map_err(bind_error)?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(listener)
}

/// Binds the TCP listener.
pub(crate) async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
        what: format!("tcp {addr}"),
        source,
    })
}

/// Removes our socket file on shutdown (only if it is still a socket).
pub(crate) fn remove_socket(path: &PathBuf) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove socket file");
    }
}
