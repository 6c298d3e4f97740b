//! What starts a reload besides the two doors' requests: SIGHUP, and a change of the
//! configuration file. The file's parent directory is watched, not the file: editors save by
//! writing a new file and renaming it over the old one, and Kubernetes swaps a ConfigMap's files
//! through a `..data` symlink; both replace the file a watch on it would follow. Events are
//! gathered for a short quiet period, and a reload runs only when the file's contents differ
//! from those last seen (a `touch` or a save without changes reloads nothing).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::Reloader;

/// How long the directory must stay quiet after an event before the file is read.
const QUIET: Duration = Duration::from_millis(300);

/// Reloads on SIGHUP until `stop`.
///
/// # Errors
/// The signal handler could not be installed.
pub(crate) fn on_sighup(reloader: Arc<Reloader>, stop: CancellationToken) -> std::io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = reloader.reload(false).await;
                }
            }
        }
    });
    Ok(())
}

/// Reloads when the contents of `file` change, until `stop`.
///
/// # Errors
/// The directory cannot be watched.
pub(crate) fn on_change(reloader: Arc<Reloader>, file: &Path, stop: CancellationToken) -> notify::Result<()> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let dir = file.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    let (events, mut received) = tokio::sync::mpsc::channel::<()>(1);
    let name = file.file_name().map(std::ffi::OsStr::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // The file itself, or a Kubernetes-style `..data` swap that replaces what it points to.
        let relevant = event.paths.iter().any(|p| {
            let n = p.file_name();
            n == name.as_deref() || n.is_some_and(|n| n.to_string_lossy().starts_with(".."))
        });
        if relevant {
            let _ = events.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut last = std::fs::read(&file).ok();
    tokio::spawn(async move {
        // Dropping the watcher stops it: it lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = received.recv() => if event.is_none() { return },
            }
            // Gather the burst an editor's save makes.
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(QUIET) => break,
                    more = received.recv() => if more.is_none() { return },
                }
            }
            let path = file.clone();
            let now = mycelium_broker::blocking(move || std::fs::read(path).ok()).await;
            if now.is_none() || now == last {
                // Gone for a moment (a rename in progress) or unchanged: nothing to do.
                continue;
            }
            last = now;
            tracing::info!(file = %file.display(), "the configuration file changed: reloading");
            let _ = reloader.reload(false).await;
        }
    });
    Ok(())
}
