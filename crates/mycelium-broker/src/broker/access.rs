//! Authorization at the facade: the one check both doors call ([`Broker::authorize`]), the
//! refusal counters `/metrics` shows by door and reason, and the audit trail (every refusal and
//! every admin action, as JSON lines).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::Serialize;

use super::{Broker, ConnectionInfo};
use crate::routing::access::{Denied, DenyReason, Door, Principal};
use crate::routing::name::Pattern;

/// What a principal asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Publish to a topic.
    Publish(&'a str),
    /// Subscribe (plain, queue group or durable) to a pattern.
    Subscribe(&'a Pattern),
    /// Acknowledge or pull a message of a topic.
    Consume(&'a str),
    /// Use a durable subscription (`owner`: who created it, if recorded).
    Durable {
        /// Its topic.
        topic: &'a str,
        /// Its name.
        name: &'a str,
        /// Its owner.
        owner: Option<&'a str>,
    },
    /// An admin operation (`what`: the operation, `target`: what it acts on).
    Admin {
        /// The operation, e.g. `dlq.purge`, `stats`, `topics.create`.
        what: &'a str,
        /// What it acts on (a topic, a subscription), or "".
        target: &'a str,
    },
}

impl Action<'_> {
    fn label(&self) -> &str {
        match self {
            Action::Publish(_) => "publish",
            Action::Subscribe(_) => "subscribe",
            Action::Consume(_) => "consume",
            Action::Durable { .. } => "durable",
            Action::Admin { what, .. } => what,
        }
    }

    fn target(&self) -> &str {
        match self {
            Action::Publish(topic) | Action::Consume(topic) => topic,
            Action::Subscribe(pattern) => pattern.as_str(),
            Action::Durable { topic, .. } => topic,
            Action::Admin { target, .. } => target,
        }
    }
}

/// Refusals by door and reason, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counts: [[AtomicU64; DenyReason::ALL.len()]; Door::ALL.len()],
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
struct AuditRecord<'a> {
    time: String,
    principal: &'a str,
    door: &'static str,
    action: &'a str,
    topic: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Where audit lines go: always the log (target `mycelium::audit`), and a JSON-lines file when
/// one is configured, appended by a thread of its own so no async worker waits on the disk.
#[derive(Debug)]
pub struct AuditLog {
    file: Option<mpsc::SyncSender<String>>,
    dropped: AtomicU64,
    path: Option<PathBuf>,
}

/// Audit lines queued for the file, at most; past it lines are counted as dropped.
const AUDIT_QUEUE: usize = 16_384;

impl AuditLog {
    /// Audit lines to the log only.
    pub const fn log_only() -> AuditLog {
        AuditLog {
            file: None,
            dropped: AtomicU64::new(0),
            path: None,
        }
    }

    /// Audit lines to the log and appended to `path` (created 0600).
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn to_file(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(mycelium_storage::FILE_MODE)
            .open(path)?;
        let (tx, rx) = mpsc::sync_channel::<String>(AUDIT_QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("mycelium-audit".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let mut batch = line;
                    batch.push('\n');
                    while let Ok(more) = rx.try_recv() {
                        batch.push_str(&more);
                        batch.push('\n');
                    }
                    if let Err(error) = file.write_all(batch.as_bytes()) {
                        tracing::error!(file = %shown, %error, "cannot append to the audit log");
                    }
                }
            })?;
        Ok(AuditLog {
            file: Some(tx),
            dropped: AtomicU64::new(0),
            path: Some(path.to_owned()),
        })
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Lines that did not fit the file's queue.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn record(&self, record: &AuditRecord<'_>) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        tracing::info!(target: "mycelium::audit", "{line}");
        if let Some(file) = &self.file
            && file.try_send(line).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Broker {
    /// The one authorization check: may `principal`, who came through `door`, do `action`?
    /// A refusal is counted (by door and reason) and audited; an allowed admin action is
    /// audited.
    ///
    /// # Errors
    /// [`Denied`], with a message that names what is missing and never whether a message,
    /// topic or subscription exists.
    pub fn authorize(&self, door: Door, principal: &Principal, action: Action<'_>) -> Result<(), Denied> {
        let verdict = match action {
            Action::Publish(topic) => principal.may_publish(topic),
            Action::Subscribe(pattern) => principal.may_subscribe(pattern),
            Action::Consume(topic) => principal.may_consume(topic),
            Action::Durable { name, owner, .. } => principal.may_use_durable(name, owner),
            Action::Admin { .. } => principal.require(crate::routing::access::Role::Admin),
        };
        match &verdict {
            Err(denied) => self.refused(
                door,
                Some(&principal.name),
                action.label(),
                action.target(),
                denied,
            ),
            Ok(()) if matches!(action, Action::Admin { .. }) => {
                self.audit().record(&AuditRecord {
                    time: now_rfc3339(),
                    principal: &principal.name,
                    door: door.as_str(),
                    action: action.label(),
                    topic: action.target(),
                    outcome: "allowed",
                    reason: None,
                    detail: None,
                });
            }
            Ok(()) => {}
        }
        verdict
    }

    /// [`Broker::authorize`] for the principal of a native connection (refused when it has not
    /// authenticated).
    ///
    /// # Errors
    /// As [`Broker::authorize`].
    pub fn authorize_connection(
        &self,
        connection: &ConnectionInfo,
        action: Action<'_>,
    ) -> Result<(), Denied> {
        let door = connection.door();
        match connection.principal() {
            Some(principal) => self.authorize(door, principal, action),
            None => {
                let denied = Denied::new(
                    DenyReason::Unauthenticated,
                    "the connection has not authenticated",
                );
                self.refused(door, None, action.label(), action.target(), &denied);
                Err(denied)
            }
        }
    }

    /// Counts and audits a refusal (also used by the doors for failed authentication).
    pub fn refused(&self, door: Door, principal: Option<&str>, action: &str, target: &str, denied: &Denied) {
        let (d, r) = (door as usize, denied.reason as usize);
        self.refusals.counts[d][r].fetch_add(1, Ordering::Relaxed);
        self.audit().record(&AuditRecord {
            time: now_rfc3339(),
            principal: principal.unwrap_or("-"),
            door: door.as_str(),
            action,
            topic: target,
            outcome: "denied",
            reason: Some(denied.reason.as_str()),
            detail: Some(&denied.message),
        });
    }

    /// Refusals so far, by door and reason (every pair, zeros included).
    pub fn refusal_counts(&self) -> Vec<(Door, DenyReason, u64)> {
        let mut out = Vec::with_capacity(Door::ALL.len() * DenyReason::ALL.len());
        for door in Door::ALL {
            for reason in DenyReason::ALL {
                let count = self.refusals.counts[door as usize][reason as usize].load(Ordering::Relaxed);
                out.push((door, reason, count));
            }
        }
        out
    }

    /// Sends audit lines to `log` from now on (set once, at start-up).
    pub fn set_audit(&self, log: AuditLog) {
        let _ = self.audit.set(log);
    }

    /// Where audit lines go.
    pub fn audit(&self) -> &AuditLog {
        static LOG_ONLY: AuditLog = AuditLog::log_only();
        self.audit.get().unwrap_or(&LOG_ONLY)
    }
}
