//! Hot reload: the configuration file read again, validated in full, and what may change live
//! applied without dropping a connection. Triggered by SIGHUP, by a change of the file (see
//! `watch.rs`), by `mycelium reload` (an ADMIN request) and by `POST /api/v1/admin/reload`; all
//! four end in [`Reloader::reload`], one reload at a time.
//!
//! A reload first builds everything the new file asks for (topic specs, keys, TLS material, rate
//! limits, the log filter); on any error nothing changes and the error names file, key and
//! reason. Then it applies, part by part, and reports each change: applied, waiting for a
//! restart (listeners, the data directory, storage and threads), or refused (a removed topic still
//! in use, unless forced). The configuration in effect (`GET /api/v1/admin/config`) is the new
//! file with every change that waits for a restart left at its running value.

mod diff;
pub(crate) mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use mycelium_broker::{Adjustable, Broker, Control, Kept, ReloadFailure, ReloadFuture};
use mycelium_protocol::admin::{ConfigView, ReloadReport};
use parking_lot::Mutex;

use crate::config::{Config, ConfigError, TopicSection};
use crate::connection::Settings;
use diff::Effect;

/// Where the configuration comes from, so that it can be read again the same way.
#[derive(Clone, Default)]
pub struct ConfigSource {
    /// The file (`None`: the embedded defaults; a reload then only re-reads the environment).
    pub file: Option<PathBuf>,
    /// The environment overrides (`MYCELIUM_*`), as at start-up.
    pub env: Vec<(String, String)>,
    /// Command-line flags applied over the file (`serve --socket` and the like).
    #[allow(clippy::type_complexity)]
    pub overrides: Option<Arc<dyn Fn(&mut Config) + Send + Sync>>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl ConfigSource {
    fn name(&self) -> String {
        self.file
            .as_ref()
            .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string())
    }

    /// Reads, overrides and validates. Blocking (reads the file).
    fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.file.as_deref(), self.env.clone())?;
        if let Some(overrides) = &self.overrides {
            overrides(&mut config);
            config.validate().map_err(|problems| ConfigError::Invalid {
                file: format!("{} (with command-line flags)", self.name()),
                problems,
            })?;
        }
        Ok(config)
    }
}

/// Changes the log filter of the running process (the binary installs the log, so it lends this).
pub trait LogFilter: Send + Sync {
    /// Whether `filter` is a valid filter.
    ///
    /// # Errors
    /// Why not.
    fn check(&self, filter: &str) -> Result<(), String>;
    /// Uses `filter` from now on.
    ///
    /// # Errors
    /// Why it could not.
    fn apply(&self, filter: &str) -> Result<(), String>;
}

/// The running parts a reload changes.
pub(crate) struct Parts {
    pub(crate) broker: Arc<Broker>,
    pub(crate) auth: Arc<mycelium_auth::Authenticator>,
    pub(crate) tls: Option<Arc<mycelium_auth::tls::LiveTls>>,
    pub(crate) limiter: Option<Arc<mycelium_http::limits::Limiter>>,
    pub(crate) settings: Arc<ArcSwap<Settings>>,
    pub(crate) admission: Arc<mycelium_net::admission::Admission>,
    pub(crate) health: Arc<mycelium_broker::health::Health>,
}

struct State {
    /// The configuration in effect.
    config: Config,
    version: u64,
    applied_ns: u64,
    restart_needed: Vec<String>,
    /// A hash of the TLS files' contents as last loaded (a renewed certificate keeps its path).
    tls_fingerprint: Option<u64>,
}

/// What a new file asks for, built before anything is applied.
struct Prepared {
    specs: HashMap<String, mycelium_broker::spec::TopicSpec>,
    auth: mycelium_auth::Authenticator,
    tls: Option<(Arc<rustls::ServerConfig>, u64)>,
    limits: mycelium_http::RateLimits,
}

/// The server's reload machinery; lent to the broker as its [`Control`].
pub struct Reloader {
    parts: Parts,
    source: Mutex<Option<ConfigSource>>,
    log: Mutex<Option<Arc<dyn LogFilter>>>,
    state: Mutex<State>,
    /// One reload at a time.
    serial: tokio::sync::Mutex<()>,
    me: std::sync::Weak<Reloader>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("version", &self.state.lock().version)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(parts: Parts, config: Config) -> Arc<Reloader> {
        let tls_fingerprint = config.tls_files().map(|files| fingerprint(&files));
        parts.broker.reloads.version.store(1, Ordering::Relaxed);
        Arc::new_cyclic(|me| Reloader {
            parts,
            source: Mutex::new(None),
            log: Mutex::new(None),
            state: Mutex::new(State {
                config,
                version: 1,
                applied_ns: mycelium_codec::now_ns(),
                restart_needed: Vec::new(),
                tls_fingerprint,
            }),
            serial: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }

    /// Says where the configuration came from; until then a reload is refused.
    pub fn set_source(&self, source: ConfigSource) {
        *self.source.lock() = Some(source);
    }

    /// Lends the process's log filter (without one, `log.level` waits for a restart).
    pub fn set_log_filter(&self, filter: Arc<dyn LogFilter>) {
        *self.log.lock() = Some(filter);
    }

    /// The file reloads read, if any.
    pub fn file(&self) -> Option<PathBuf> {
        self.source.lock().as_ref().and_then(|s| s.file.clone())
    }

    /// Reads the configuration again and applies what may change live.
    ///
    /// # Errors
    /// The file is unreadable or invalid, or no source was set: nothing changed.
    pub async fn reload(&self, force: bool) -> Result<ReloadReport, ReloadFailure> {
        let _one_at_a_time = self.serial.lock().await;
        let result = self.reload_serial(force).await;
        let reloads = &self.parts.broker.reloads;
        match &result {
            Ok(report) => {
                reloads.applied.fetch_add(1, Ordering::Relaxed);
                reloads.last_failed.store(0, Ordering::Relaxed);
                reloads.version.store(report.version, Ordering::Relaxed);
                reloads
                    .restart_pending
                    .store(report.restart_needed.len() as u64, Ordering::Relaxed);
                for line in &report.applied {
                    tracing::info!(change = %line, version = report.version, "configuration reload: applied");
                }
                for line in &report.restart_needed {
                    tracing::warn!(change = %line, "configuration reload: takes effect after a restart");
                }
                for line in &report.refused {
                    tracing::warn!(change = %line, "configuration reload: refused");
                }
                tracing::info!(
                    file = %report.file,
                    version = report.version,
                    applied = report.applied.len(),
                    restart_needed = report.restart_needed.len(),
                    refused = report.refused.len(),
                    "configuration reloaded"
                );
            }
            Err(failure) => {
                reloads.failed.fetch_add(1, Ordering::Relaxed);
                reloads.last_failed.store(1, Ordering::Relaxed);
                tracing::error!(error = %failure, "configuration reload refused; the running configuration is unchanged");
            }
        }
        result
    }

    async fn reload_serial(&self, force: bool) -> Result<ReloadReport, ReloadFailure> {
        let Some(source) = self.source.lock().clone() else {
            return Err(ReloadFailure {
                file: "(none)".into(),
                problems: vec![(
                    String::new(),
                    "this broker was not started from a configuration it can read again".into(),
                )],
            });
        };
        let file = source.name();
        let log = self.log.lock().clone();
        let (new, prepared) = mycelium_broker::blocking(move || {
            let new = source.load().map_err(|e| failure_of(&e))?;
            let prepared = prepare(&new, log.as_deref())?;
            Ok::<_, ReloadFailure>((new, prepared))
        })
        .await?;
        Ok(self.apply(file, new, prepared, force).await)
    }

    async fn apply(&self, file: String, new: Config, prepared: Prepared, force: bool) -> ReloadReport {
        let old = self.state.lock().config.clone();
        let mut report = ReloadReport {
            file,
            ..ReloadReport::default()
        };
        let tls_on_both = old.tls_files().is_some() && new.tls_files().is_some();
        let http_on = old.http.enabled && new.http.enabled;
        let changes = diff::changes(&old, &new);
        let mut effects = Vec::new();
        let mut waiting: Vec<&str> = Vec::new();
        for change in &changes {
            let effect = diff::effect(&change.key, tls_on_both, http_on);
            let effect = match effect {
                Effect::Log if self.log.lock().is_none() => Effect::Restart,
                other => other,
            };
            if effect == Effect::Restart {
                report.restart_needed.push(change.line());
                waiting.push(&change.key);
            } else {
                report.applied.push(change.line());
                effects.push(effect);
            }
        }
        let mut effective = diff::keep(&new, &old, &waiting);
        let p = &self.parts;
        // Topics before the settings that name them (domain mapping).
        self.apply_topics(&old, &mut effective, &prepared, force, &mut report)
            .await;
        if effects.contains(&Effect::Broker) {
            let limits = mycelium_broker::Limits {
                topics_max: effective.server.max_topics,
                subscriptions_per_connection_max: effective.server.max_subscriptions_per_connection,
                durables_per_topic_max: effective.server.max_durables_per_topic,
                outbound_bytes_max: effective.server.max_outbound_bytes.bytes(),
            };
            let d = &effective.domains;
            let adjustable = Adjustable {
                auto_create_topics: effective.server.auto_create_topics,
                domain_topics: vec![
                    (mycelium_codec::RelayDomain::MarketData, d.market_data.clone()),
                    (mycelium_codec::RelayDomain::Signal, d.signal.clone()),
                    (mycelium_codec::RelayDomain::Execution, d.execution.clone()),
                    (mycelium_codec::RelayDomain::System, d.system.clone()),
                ],
                limits,
            };
            if let Err(error) = p.broker.set_adjustable(adjustable) {
                report.refused.push(format!("domains: {error}"));
            }
        }
        if effects.contains(&Effect::Admission) {
            p.admission.set_limits(
                effective.server.max_connections,
                effective.server.max_connections_per_ip,
            );
        }
        if effects.contains(&Effect::Auth) {
            p.auth.replace(prepared.auth);
            let closed = p.settings.load().sessions.revalidate(&p.auth);
            if closed > 0 {
                report.applied.push(format!(
                    "auth: {closed} native connection(s) whose credentials no longer hold were closed"
                ));
            }
        }
        if effects.contains(&Effect::Connections) {
            let current = p.settings.load_full();
            p.settings.store(Arc::new(crate::settings_of(
                &effective,
                &current.auth,
                &current.sessions,
            )));
        }
        let mut tls_fingerprint = self.state.lock().tls_fingerprint;
        if let (Some(live), Some((config, print))) = (&p.tls, prepared.tls)
            && tls_on_both
            && tls_fingerprint != Some(print)
        {
            live.replace(config);
            if !effects.contains(&Effect::Tls) {
                report
                    .applied
                    .push("tls: the certificate files changed on disk; reloaded".into());
            }
            tls_fingerprint = Some(print);
        }
        if effects.contains(&Effect::RateLimits)
            && let Some(limiter) = &p.limiter
            && let Err(error) = limiter.replace(&prepared.limits)
        {
            report.refused.push(format!("http.rate_limits: {error}"));
        }
        if effects.contains(&Effect::Health) {
            p.health.set_config(effective.health_config());
        }
        if effects.contains(&Effect::Log)
            && let Some(filter) = self.log.lock().clone()
            && let Err(error) = filter.apply(&effective.log.level)
        {
            report.refused.push(format!("log.level: {error}"));
        }
        let mut state = self.state.lock();
        if !report.applied.is_empty() {
            state.version += 1;
            state.applied_ns = mycelium_codec::now_ns();
        }
        state.config = effective;
        state.restart_needed = report.restart_needed.clone();
        state.tls_fingerprint = tls_fingerprint;
        report.version = state.version;
        report
    }

    /// Adds, changes and removes topics; `effective` keeps what did not change.
    async fn apply_topics(
        &self,
        old: &Config,
        effective: &mut Config,
        prepared: &Prepared,
        force: bool,
        report: &mut ReloadReport,
    ) {
        let broker = &self.parts.broker;
        let before: HashMap<&str, &TopicSection> = old.topics.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut kept: Vec<TopicSection> = Vec::new();
        for section in &mut effective.topics {
            let name = section.name.clone();
            let Some(spec) = prepared.specs.get(&name).cloned() else {
                continue;
            };
            match before.get(name.as_str()) {
                Some(previous) if *previous == section => {}
                Some(previous) => {
                    let lines = diff::section_changes(&format!("topics.{name}"), *previous, &*section);
                    match broker.update_topic(&name, spec) {
                        Ok(_) => report.applied.extend(lines.iter().map(diff::Change::line)),
                        Err(error) => {
                            report.restart_needed.extend(lines.iter().map(diff::Change::line));
                            tracing::debug!(topic = %name, %error, "topic change waits for a restart");
                            *section = (*previous).clone();
                        }
                    }
                }
                None => match broker.topic(&name) {
                    Some(_) => match broker.update_topic(&name, spec) {
                        Ok(_) => report.applied.push(format!(
                            "topics.{name}: now configured (it existed; the file's settings apply)"
                        )),
                        Err(error) => report.restart_needed.push(format!("topics.{name}: {error}")),
                    },
                    None => match broker.create_topic(&name, spec) {
                        Ok(_) => report.applied.push(format!("topics.{name}: added")),
                        Err(error) => report.refused.push(format!("topics.{name}: {error}")),
                    },
                },
            }
        }
        let named: std::collections::HashSet<String> =
            effective.topics.iter().map(|t| t.name.clone()).collect();
        for section in &old.topics {
            if named.contains(&section.name) {
                continue;
            }
            let (b, name) = (Arc::clone(broker), section.name.clone());
            let removed = mycelium_broker::blocking(move || b.remove_topic(&name, force)).await;
            match removed {
                Ok(()) => report.applied.push(format!("topics.{}: removed", section.name)),
                Err(Kept::Missing) => report
                    .applied
                    .push(format!("topics.{}: removed (it was already gone)", section.name)),
                Err(Kept::InUse(uses)) => {
                    report.refused.push(format!(
                        "topics.{}: not removed: it has {uses}; reload with force to remove it",
                        section.name
                    ));
                    kept.push(section.clone());
                }
            }
        }
        effective.topics.extend(kept);
    }

    /// The configuration in effect.
    pub fn effective(&self) -> ConfigView {
        let state = self.state.lock();
        let redacted: Config = toml::from_str(&state.config.to_string()).unwrap_or_default();
        ConfigView {
            version: state.version,
            file: self.file().map(|p| p.display().to_string()),
            applied_ns: state.applied_ns,
            restart_needed: state.restart_needed.clone(),
            config: serde_json::to_value(&redacted).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl Control for Reloader {
    fn reload(&self, force: bool) -> ReloadFuture {
        let me = self.me.upgrade();
        Box::pin(async move {
            match me {
                Some(me) => Reloader::reload(&me, force).await,
                None => Err(ReloadFailure {
                    file: "(none)".into(),
                    problems: vec![(String::new(), "the server is stopping".into())],
                }),
            }
        })
    }

    fn effective(&self) -> ConfigView {
        Reloader::effective(self)
    }
}

/// Builds what `new` asks for; any problem refuses the whole reload. Blocking (key files).
fn prepare(new: &Config, log: Option<&dyn LogFilter>) -> Result<Prepared, ReloadFailure> {
    let file = "configuration".to_owned();
    let fail = |key: &str, reason: String| ReloadFailure {
        file: file.clone(),
        problems: vec![(key.to_owned(), reason)],
    };
    let broker_config = new.broker_config().map_err(|problems| ReloadFailure {
        file: file.clone(),
        problems: problems.into_iter().map(|p| (p.key, p.reason)).collect(),
    })?;
    let specs = broker_config.topics.into_iter().collect();
    let auth_config = new.auth_config().map_err(|e| failure_of(&e))?;
    let auth = mycelium_auth::Authenticator::new(auth_config).map_err(|e| fail("auth", e.to_string()))?;
    let tls = match new.tls_files() {
        Some(files) => {
            let config = mycelium_auth::tls::server_config(&files).map_err(|e| fail("tls", e.to_string()))?;
            Some((config, fingerprint(&files)))
        }
        None => None,
    };
    let limits = new.rate_limits();
    mycelium_http::limits::Limiter::new(&limits).map_err(|e| fail("http.rate_limits", e.to_string()))?;
    if let Some(log) = log {
        log.check(&new.log.level).map_err(|e| fail("log.level", e))?;
    }
    Ok(Prepared {
        specs,
        auth,
        tls,
        limits,
    })
}

/// A hash of the TLS files' contents (unreadable files hash as empty: loading reports them).
fn fingerprint(files: &mycelium_auth::tls::TlsFiles) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
    {
        std::fs::read(path).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// A configuration error as the reload's answer names it.
fn failure_of(error: &ConfigError) -> ReloadFailure {
    match error {
        ConfigError::Invalid { file, problems } => ReloadFailure {
            file: file.clone(),
            problems: problems
                .iter()
                .map(|p| (p.key.clone(), p.reason.clone()))
                .collect(),
        },
        ConfigError::Parse { file, message } => ReloadFailure {
            file: file.clone(),
            problems: vec![(String::new(), message.clone())],
        },
        ConfigError::Read { file, source } => ReloadFailure {
            file: file.clone(),
            problems: vec![(String::new(), format!("cannot read: {source}"))],
        },
        ConfigError::Env { var, reason } => ReloadFailure {
            file: "environment".into(),
            problems: vec![(var.clone(), reason.clone())],
        },
        ConfigError::Secret { path, reason } => ReloadFailure {
            file: path.display().to_string(),
            problems: vec![("auth.jwt_secret".into(), reason.clone())],
        },
    }
}
