//! A broker process started from the real binary, for tests that kill, signal or restart it.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus};
use std::time::Duration;

/// A spawned broker, killed (SIGKILL) and reaped when dropped, so a failing assertion never
/// leaves one running.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    socket: PathBuf,
}

impl Spawned {
    /// Spawns `command` and waits until `socket` accepts connections (start-up, not a timing
    /// assertion).
    ///
    /// # Panics
    /// When the process cannot be spawned, or exits or does not listen within 5 s.
    pub fn start(mut command: Command, socket: &Path) -> Spawned {
        let child = command.spawn().expect("spawn the broker");
        let mut spawned = Spawned {
            child,
            socket: socket.to_owned(),
        };
        spawned.wait_ready();
        spawned
    }

    /// Waits until the socket accepts connections.
    ///
    /// # Panics
    /// When the process exits first, or after 5 s.
    pub fn wait_ready(&mut self) {
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the broker exited ({status}) before listening on {}",
                    self.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the broker did not come up on {}", self.socket.display());
    }

    /// `unix://<socket>`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a number, as `kill -<n>` takes it).
    ///
    /// # Panics
    /// When `kill` fails.
    pub fn signal(&self, signal: i32) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// The process's resident memory now (`VmRSS` in `/proc/<pid>/status`), in bytes.
    ///
    /// # Panics
    /// When the process is gone.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("the broker runs");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    /// When waiting fails.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for the broker")
    }

    /// The process's stderr, when it was spawned with `Stdio::piped()`.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}
