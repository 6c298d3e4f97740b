//! What changed between two configurations, key by key, and which changes a running broker can
//! take. Sections are compared as TOML trees (so every key is covered without listing it twice);
//! `[[topics]]` are compared by name, one topic at a time, by the reloader.

use std::collections::BTreeMap;

use crate::config::Config;

/// One key whose value changed (values as TOML text; `None`: not set).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub(crate) key: String,
    pub(crate) before: Option<toml::Value>,
    pub(crate) after: Option<toml::Value>,
}

impl Change {
    /// `key: before -> after`, secrets shown as "changed".
    pub(crate) fn line(&self) -> String {
        if is_secret(&self.key) {
            return format!("{}: changed", self.key);
        }
        format!(
            "{}: {} -> {}",
            self.key,
            shown(self.before.as_ref()),
            shown(self.after.as_ref())
        )
    }
}

fn shown(value: Option<&toml::Value>) -> String {
    match value {
        None => "(unset)".to_owned(),
        Some(toml::Value::String(s)) => format!("{s:?}"),
        Some(other) => {
            let text = other.to_string();
            if text.len() > 120 {
                format!("{}...", &text[..text.floor_char_boundary(117)])
            } else {
                text
            }
        }
    }
}

/// Keys whose values are never printed.
fn is_secret(key: &str) -> bool {
    key == "auth.jwt_secret" || key == "auth.users"
}

/// Where a change can take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Connection admission limits (both doors' native listener).
    Admission,
    /// Native connection settings (new connections use them).
    Connections,
    /// The broker's adjustable settings (limits, auto-create, domain mapping).
    Broker,
    /// Authentication: users, keys, mode.
    Auth,
    /// TLS material.
    Tls,
    /// The HTTP door's rate limits.
    RateLimits,
    /// The health monitor's thresholds and interval.
    Health,
    /// The log filter.
    Log,
    /// Only after a restart.
    Restart,
}

/// Where a change of `key` takes effect, given whether TLS is on before and after.
pub(crate) fn effect(key: &str, tls_on_both: bool, http_on: bool) -> Effect {
    match key {
        "server.max_connections" | "server.max_connections_per_ip" => Effect::Admission,
        "server.connection_timeout"
        | "server.idle_timeout"
        | "server.frame_timeout"
        | "server.shutdown_timeout" => Effect::Connections,
        "server.auto_create_topics"
        | "server.max_topics"
        | "server.max_subscriptions_per_connection"
        | "server.max_durables_per_topic"
        | "server.max_outbound_bytes" => Effect::Broker,
        k if k.starts_with("domains.") => Effect::Broker,
        "auth.audit_log" => Effect::Restart,
        k if k.starts_with("auth.") => Effect::Auth,
        "tls.cert_file" | "tls.key_file" | "tls.client_ca_file" if tls_on_both => Effect::Tls,
        k if k.starts_with("http.rate_limits") && http_on => Effect::RateLimits,
        k if k.starts_with("health.") => Effect::Health,
        "log.level" => Effect::Log,
        _ => Effect::Restart,
    }
}

/// Every key outside `[[topics]]` whose value differs, in key order.
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let (old, new) = (flat(old), flat(new));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| Change {
            key: k.clone(),
            before: old.get(k).cloned(),
            after: new.get(k).cloned(),
        })
        .collect()
}

/// The keys of one value that differ between two serialisable values (a topic's section).
pub(crate) fn section_changes<T: serde::Serialize>(prefix: &str, old: &T, new: &T) -> Vec<Change> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    if let Ok(value) = toml::Value::try_from(old) {
        flatten(prefix, &value, &mut a);
    }
    if let Ok(value) = toml::Value::try_from(new) {
        flatten(prefix, &value, &mut b);
    }
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            before: a.get(k).cloned(),
            after: b.get(k).cloned(),
        })
        .collect()
}

/// `config` with the value at each key of `keys` taken from `from` (the running value of a change
/// that waits for a restart). Keys are those [`changes`] produced.
pub(crate) fn keep(config: &Config, from: &Config, keys: &[&str]) -> Config {
    if keys.is_empty() {
        return config.clone();
    }
    let (Ok(toml::Value::Table(mut table)), Ok(toml::Value::Table(source))) =
        (toml::Value::try_from(config), toml::Value::try_from(from))
    else {
        return config.clone();
    };
    for key in keys {
        let path: Vec<&str> = key.split('.').collect();
        // Unset in the running configuration: remove the outermost part it lacks (a whole
        // `per_ip = { ... }`, not only the leaf, which would leave a table missing its keys).
        let end = (1..=path.len())
            .find(|&n| lookup(&source, &path[..n]).is_none())
            .unwrap_or(path.len());
        let path = &path[..end];
        let value = lookup(&source, path).cloned();
        set(&mut table, path, value);
    }
    serde::Deserialize::deserialize(toml::Value::Table(table)).unwrap_or_else(|_| config.clone())
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(*key)?.as_table()?;
    }
    current.get(*last)
}

fn set(table: &mut toml::Table, path: &[&str], value: Option<toml::Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry((*key).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(next) = entry.as_table_mut() else { return };
        current = next;
    }
    match value {
        Some(value) => {
            current.insert((*last).to_owned(), value);
        }
        None => {
            current.remove(*last);
        }
    }
}

/// Every leaf of the configuration but `[[topics]]`, by dotted key (arrays are leaves).
fn flat(config: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(table)) = toml::Value::try_from(config) {
        for (key, value) in &table {
            if key != "topics" {
                flatten(key, value, &mut out);
            }
        }
    }
    out
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                flatten(&format!("{prefix}.{key}"), value, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_each_key_and_keep_restores_the_running_value() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.max_connections = 7;
        new.server.socket_path = "/tmp/elsewhere.sock".into();
        new.health.max_memory = Some(crate::units::ByteSize(1 << 30));
        new.http.rate_limits.per_ip = Some(crate::config::QuotaSection {
            per_second: 5,
            burst: None,
        });
        let found = changes(&old, &new);
        let keys: Vec<&str> = found.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "health.max_memory",
                "http.rate_limits.per_ip.per_second",
                "server.max_connections",
                "server.socket_path"
            ]
        );
        assert_eq!(found[2].line(), "server.max_connections: 10000 -> 7");
        assert_eq!(found[0].before, None);
        assert_eq!(effect("server.socket_path", true, true), Effect::Restart);
        assert_eq!(effect("server.max_connections", true, true), Effect::Admission);
        let kept = keep(
            &new,
            &old,
            &[
                "server.socket_path",
                "health.max_memory",
                "http.rate_limits.per_ip.per_second",
            ],
        );
        assert_eq!(kept.server.socket_path, old.server.socket_path);
        assert_eq!(kept.health.max_memory, None);
        assert_eq!(kept.http.rate_limits.per_ip, None);
        assert_eq!(kept.server.max_connections, 7);
    }

    #[test]
    fn secrets_are_not_printed() {
        let old = Config::default();
        let mut new = old.clone();
        new.auth.jwt_secret = "a secret of at least thirty-two bytes!".into();
        let found = changes(&old, &new);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line(), "auth.jwt_secret: changed");
    }
}
