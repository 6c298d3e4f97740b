//! The data directory: the one place that knows every path under `data_dir`, and the one atomic
//! write every state file goes through.
//!
//! ```text
//! <data_dir>/topics/<topic>/...                 a stored topic's log (segments, `start`)
//! <data_dir>/subscriptions/<topic>/<name>.state a durable subscription's state (JSON)
//! <data_dir>/dlq/<dlq topic>.json               a dead-letter queue's removal marks
//! <data_dir>/topics.json                        topics created at run time (the topic registry)
//! <data_dir>/http-jwt.secret                    the generated HS256 secret (mode 0600)
//! ```

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Extension of a durable subscription's state file.
const STATE_EXTENSION: &str = "state";

/// The paths under one data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where every stored topic's log directory lives.
    pub fn topics_dir(&self) -> PathBuf {
        self.root.join("topics")
    }

    /// One stored topic's log directory.
    pub fn topic_log(&self, topic: &str) -> PathBuf {
        self.topics_dir().join(topic)
    }

    /// The state files of `topic`'s durable subscriptions.
    pub fn subscriptions_dir(&self, topic: &str) -> PathBuf {
        self.root.join("subscriptions").join(topic)
    }

    /// The state file of durable subscription `name` on `topic`.
    pub fn subscription_state(&self, topic: &str, name: &str) -> PathBuf {
        self.subscriptions_dir(topic)
            .join(format!("{name}.{STATE_EXTENSION}"))
    }

    /// The durable subscriptions of `topic` that have a state file, as (name, path), sorted.
    pub fn persisted_subscriptions(&self, topic: &str) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.subscriptions_dir(topic)) else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                if path.extension()? != STATE_EXTENSION {
                    return None;
                }
                Some((path.file_stem()?.to_str()?.to_owned(), path))
            })
            .collect();
        found.sort();
        found
    }

    /// The removal marks of the dead-letter queue `dlq`.
    pub fn dlq_marks(&self, dlq: &str) -> PathBuf {
        self.root.join("dlq").join(format!("{dlq}.json"))
    }

    /// The topics created at run time (HTTP, CLI, ADMIN), kept across restarts.
    pub fn topic_registry(&self) -> PathBuf {
        self.root.join("topics.json")
    }

    /// The HS256 secret generated for a broker without a configured key.
    pub fn jwt_secret(&self) -> PathBuf {
        self.root.join("http-jwt.secret")
    }

    /// Writes, syncs and removes a probe file (health checks: can the disk take a write now?).
    /// Each call uses a file of its own, so concurrent probes never remove each other's.
    ///
    /// # Errors
    /// The write or the sync failed (the probe file is removed either way).
    pub fn probe_write(&self) -> std::io::Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let probe = self.root.join(format!(".probe-{}-{n}", std::process::id()));
        let result = std::fs::File::create(&probe).and_then(|mut file| {
            file.write_all(b"probe")?;
            file.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        result
    }
}

/// Moves an unreadable file out of the way, to `<path>.corrupt` (replacing an earlier one), so it
/// can be looked at and is not read again; returns where it went.
///
/// # Errors
/// I/O errors; the file is then where it was.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_os_string();
    name.push(".corrupt");
    let kept = PathBuf::from(name);
    std::fs::rename(path, &kept)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    Ok(kept)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, whole:
/// a temporary file beside it, fsync, rename over `path`, fsync of the directory (without it the
/// rename itself may be lost). Missing parent directories are created, each fsynced in its own
/// parent.
///
/// # Errors
/// I/O errors; `path` is then unchanged (the temporary file is removed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durable(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(error) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    sync_dir(dir)
}

/// Files the broker creates in the data directory: its user only.
pub const FILE_MODE: u32 = 0o600;
/// Directories the broker creates for its data: its user only.
pub const DIR_MODE: u32 = 0o700;

/// Reads a file holding a secret, refusing one that someone else could have read or replaced: a
/// symbolic link, not a regular file, owned by another user than this process's, or with any
/// permission for group or others. `Ok(None)`: there is no such file.
///
/// # Errors
/// `PermissionDenied` with the reason for a refused file; other I/O errors.
pub fn read_private(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    // Opened without following a link, then checked through the open file: nothing can be
    // swapped in between the check and the read.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(refuse(
                "is a symbolic link; a secret must be a regular file".into(),
            ));
        }
        Err(error) => return Err(error),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, not by the broker's user (uid {me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "has mode {mode:04o}: others may read it (`chmod 600` it)"
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Creates `dir` and any missing parents (mode [`DIR_MODE`]), fsyncing each new directory's
/// parent so that the new entry survives a crash.
///
/// # Errors
/// I/O errors.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        // Another thread made it meanwhile.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(error) => return Err(error),
    }
    sync_dir(
        dir.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// fsyncs a directory (its entries: new files, renames, removals).
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    tests::SYNCED.with(|synced| synced.borrow_mut().push(dir.to_path_buf()));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use super::{DataDir, create_dir_durable, write_atomic};

    thread_local! {
        /// Directories this thread fsynced, in order.
        pub(super) static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    fn synced() -> Vec<PathBuf> {
        SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_replaces_the_file_whole_and_syncs_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.json");
        synced();
        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let a = dir.path().join("a");
        assert_eq!(
            synced(),
            vec![dir.path().to_path_buf(), a.clone(), a.join("b")],
            "each new directory is synced in its parent, then the file's directory after the rename"
        );
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(synced(), vec![a.join("b")]);
        assert_eq!(names(&a.join("b")), vec!["state.json"], "no temporary file left");
    }

    #[test]
    fn a_failed_write_atomic_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("marks.json");
        write_atomic(&path, b"old").unwrap();
        // The temporary file's name is taken by a directory: the write fails before the rename.
        std::fs::create_dir(dir.path().join("marks.json.tmp")).unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        // A target that is a directory: the rename fails, the temporary file is removed.
        std::fs::remove_dir(dir.path().join("marks.json.tmp")).unwrap();
        let taken = dir.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("x"), b"x").unwrap();
        assert!(write_atomic(&taken, b"new").is_err());
        assert_eq!(names(dir.path()), vec!["marks.json", "taken"]);
    }

    #[test]
    fn create_dir_durable_syncs_each_new_directory_in_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let topic = DataDir::new(dir.path()).topic_log("orders");
        synced();
        create_dir_durable(&topic).unwrap();
        assert!(topic.is_dir());
        let topics = dir.path().join("topics");
        assert_eq!(synced(), vec![dir.path().to_path_buf(), topics]);
        create_dir_durable(&topic).unwrap();
        assert!(synced().is_empty(), "nothing new, nothing synced");
    }

    #[test]
    fn new_directories_and_state_files_are_the_broker_users_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let state = data.join("subscriptions/orders/workers.state");
        write_atomic(&state, b"{}").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(state.parent().unwrap()), 0o700);
        assert_eq!(mode(&state), 0o600);
    }

    #[test]
    fn a_secret_file_others_could_read_or_replace_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        assert!(super::read_private(&secret).unwrap().is_none(), "none yet");
        write_atomic(&secret, b"s3cret").unwrap();
        assert_eq!(super::read_private(&secret).unwrap().unwrap(), b"s3cret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = super::read_private(&secret).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("mode 0644"), "{error}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let error = super::read_private(&link).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        let error = super::read_private(dir.path()).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }

    #[test]
    fn concurrent_probes_never_remove_each_others_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        data.probe_write().expect("every probe succeeds");
                    }
                });
            }
        });
        assert!(names(dir.path()).is_empty(), "no probe file left behind");
    }

    #[test]
    fn the_layout_names_every_state_file_in_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.topic_log("t"), dir.path().join("topics/t"));
        assert_eq!(
            data.subscription_state("t", "s"),
            dir.path().join("subscriptions/t/s.state")
        );
        assert_eq!(data.dlq_marks("t.dlq"), dir.path().join("dlq/t.dlq.json"));
        assert_eq!(data.jwt_secret(), dir.path().join("http-jwt.secret"));
        assert_eq!(data.topic_registry(), dir.path().join("topics.json"));
        write_atomic(&data.subscription_state("t", "b"), b"{}").unwrap();
        write_atomic(&data.subscription_state("t", "a"), b"{}").unwrap();
        write_atomic(&data.subscriptions_dir("t").join("notes.txt"), b"").unwrap();
        let found: Vec<String> = data
            .persisted_subscriptions("t")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(found, vec!["a", "b"]);
        assert!(data.persisted_subscriptions("none").is_empty());
    }
}
