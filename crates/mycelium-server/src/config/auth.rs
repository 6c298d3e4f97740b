//! `[auth]`: who may connect through either door. JWT settings, service users
//! (`[[auth.users]]`), the Unix socket's peer uids, the audit log, and whether probes need a token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};
use crate::units::HumanDuration;

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// `required` (every door checks credentials; the Unix socket may map peer uids instead) or
    /// `none` (every caller is an admin; a warning at start-up).
    pub mode: String,
    /// On the Unix socket, the broker's own uid and root are admins without a token.
    pub local_admins: bool,
    /// `HS256`, `RS256` or `ES256`.
    pub jwt_algorithm: String,
    /// HS256 shared secret (at least 32 bytes). Empty: a random one is generated once and kept in
    /// the data directory (mode 0600), where `mycelium token issue` finds it.
    pub jwt_secret: String,
    /// RS256 / ES256: PEM public key file (verifies tokens).
    pub jwt_public_key: String,
    /// RS256 / ES256: PEM private key file (only `mycelium token issue` needs it).
    pub jwt_private_key: String,
    /// The claim with the role(s): `producer`, `consumer`, `admin`.
    pub jwt_role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway: HumanDuration,
    /// Required `iss` (empty: not checked).
    pub jwt_issuer: String,
    /// Required `aud` (empty: not checked).
    pub jwt_audience: String,
    /// Verified tokens remembered (by their exact text) so their signature is not checked again
    /// on every HTTP request; 0 checks every request in full.
    pub jwt_cache_tokens: usize,
    /// Append the audit log (JSON lines: every refusal, every admin action) to this file ("":
    /// the log only, target `mycelium::audit`).
    pub audit_log: String,
    /// Who may read `/metrics` and the health probes without a token: `loopback` (default),
    /// `always`, `never`.
    pub open_probes: String,
    /// Service credentials.
    pub users: Vec<UserSection>,
}

/// `[[auth.users]]`: a service that needs no JWT issuer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UserSection {
    /// The principal's name (owner of its durable subscriptions, shown in the audit log).
    pub name: String,
    /// SHA-256 of its token, 64 hex digits (`mycelium token user NAME` makes both).
    pub token_sha256: String,
    /// On the Unix socket, a peer with this uid is this user without a token.
    pub uid: Option<u32>,
    /// Over mutual TLS, a client certificate with this subject common name is this user.
    pub cert_common_name: Option<String>,
    /// `producer`, `consumer`, `admin`.
    pub roles: Vec<String>,
    /// Topics it may publish to (patterns; absent: any).
    pub publish: Option<Vec<String>>,
    /// Topics it may subscribe to (patterns; absent: any).
    pub subscribe: Option<Vec<String>>,
}

/// The most verified tokens `[auth] jwt_cache_tokens` may keep.
pub const JWT_CACHE_TOKENS_MAX: usize = 1_000_000;

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: "required".into(),
            local_admins: true,
            jwt_algorithm: "HS256".into(),
            jwt_secret: String::new(),
            jwt_public_key: String::new(),
            jwt_private_key: String::new(),
            jwt_role_claim: "roles".into(),
            jwt_leeway: HumanDuration(Duration::from_secs(30)),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_cache_tokens: 4096,
            audit_log: String::new(),
            open_probes: "loopback".into(),
            users: Vec::new(),
        }
    }
}

/// Keys that moved to `[auth]`: (old, new).
pub(super) fn moved_key(section: &str, key: &str) -> Option<String> {
    match (section, key) {
        ("http", "auth") => Some("auth.mode".into()),
        ("http", jwt) if jwt.starts_with("jwt_") => Some(format!("auth.{jwt}")),
        _ => None,
    }
}

impl Config {
    /// Checks `[auth]`, reporting through `bad(key, reason)`.
    pub(super) fn validate_auth(&self, bad: &mut impl FnMut(String, String)) {
        let a = &self.auth;
        match a.mode.as_str() {
            "required" | "none" => {}
            other => bad(
                "auth.mode".into(),
                format!("`{other}` is not one of: required, none"),
            ),
        }
        match a.jwt_algorithm.as_str() {
            "HS256" => {
                if !a.jwt_secret.is_empty() && a.jwt_secret.len() < 32 {
                    bad(
                        "auth.jwt_secret".into(),
                        "must be at least 32 bytes (or empty: generated)".into(),
                    );
                }
            }
            "RS256" | "ES256" => {
                if a.jwt_public_key.is_empty() {
                    bad(
                        "auth.jwt_public_key".into(),
                        format!("{} needs the PEM public key file", a.jwt_algorithm),
                    );
                }
            }
            other => bad(
                "auth.jwt_algorithm".into(),
                format!("`{other}` is not one of: HS256, RS256, ES256"),
            ),
        }
        if a.jwt_role_claim.is_empty() {
            bad("auth.jwt_role_claim".into(), "must not be empty".into());
        }
        if a.jwt_cache_tokens > JWT_CACHE_TOKENS_MAX {
            bad(
                "auth.jwt_cache_tokens".into(),
                format!("must be at most {JWT_CACHE_TOKENS_MAX} (0 turns the cache off)"),
            );
        }
        match a.open_probes.as_str() {
            "loopback" | "always" | "never" => {}
            other => bad(
                "auth.open_probes".into(),
                format!("`{other}` is not one of: loopback, always, never"),
            ),
        }
        let mut names = std::collections::HashSet::new();
        for (i, user) in a.users.iter().enumerate() {
            let at = |field: &str| format!("auth.users[{i}].{field}");
            if user.name.is_empty() || user.name.len() > 255 || user.name.chars().any(char::is_control) {
                bad(at("name"), "must be 1-255 printable characters".into());
            } else if !names.insert(user.name.as_str()) {
                bad(at("name"), format!("`{}` is given twice", user.name));
            }
            if user.token_sha256.is_empty() && user.uid.is_none() && user.cert_common_name.is_none() {
                bad(
                    at("token_sha256"),
                    "give the token's SHA-256 (`mycelium token user NAME`), a uid or a cert_common_name"
                        .into(),
                );
            }
            if !user.token_sha256.is_empty()
                && let Err(reason) = mycelium_auth::parse_token_hash(&user.token_sha256)
            {
                bad(at("token_sha256"), reason);
            }
            if user.roles.is_empty() {
                bad(
                    at("roles"),
                    "give at least one of: producer, consumer, admin".into(),
                );
            }
            for role in &user.roles {
                if let Err(reason) = role.parse::<mycelium_broker::Role>() {
                    bad(at("roles"), reason);
                }
            }
            for (field, list) in [("publish", &user.publish), ("subscribe", &user.subscribe)] {
                for pattern in list.iter().flatten() {
                    if let Err(e) = mycelium_broker::name::Pattern::parse(pattern) {
                        bad(at(field), e.to_string());
                    }
                }
            }
        }
    }

    /// Who may read the probes without a token.
    pub fn open_probes(&self) -> mycelium_http::OpenProbes {
        match self.auth.open_probes.as_str() {
            "always" => mycelium_http::OpenProbes::Always,
            "never" => mycelium_http::OpenProbes::Never,
            _ => mycelium_http::OpenProbes::Loopback,
        }
    }

    /// The JWT settings. An empty HS256 secret is read from (or, the first time, generated
    /// into) the data directory's generated secret file.
    ///
    /// # Errors
    /// The secret file cannot be read or written.
    pub fn jwt_config(&self) -> Result<mycelium_auth::JwtConfig, ConfigError> {
        let a = &self.auth;
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        let key = match a.jwt_algorithm.as_str() {
            "RS256" => mycelium_auth::JwtKey::Rs256 {
                public_key: PathBuf::from(&a.jwt_public_key),
                private_key: path(&a.jwt_private_key),
            },
            "ES256" => mycelium_auth::JwtKey::Es256 {
                public_key: PathBuf::from(&a.jwt_public_key),
                private_key: path(&a.jwt_private_key),
            },
            _ if !a.jwt_secret.is_empty() => mycelium_auth::JwtKey::Hs256(a.jwt_secret.clone().into_bytes()),
            _ => mycelium_auth::JwtKey::Hs256(generated_secret(Path::new(&self.storage.data_dir))?),
        };
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(mycelium_auth::JwtConfig {
            key,
            role_claim: a.jwt_role_claim.clone(),
            leeway: a.jwt_leeway.0,
            issuer: text(&a.jwt_issuer),
            audience: text(&a.jwt_audience),
            cache_tokens: a.jwt_cache_tokens,
        })
    }

    /// Everything the authenticator needs (`mode = "none"`: nothing is read).
    ///
    /// # Errors
    /// As [`Config::jwt_config`].
    pub fn auth_config(&self) -> Result<mycelium_auth::AuthConfig, ConfigError> {
        let a = &self.auth;
        if a.mode == "none" {
            return Ok(mycelium_auth::AuthConfig::none());
        }
        let patterns = |list: &Option<Vec<String>>| {
            list.as_ref().map(|items| {
                items
                    .iter()
                    .filter_map(|p| mycelium_broker::name::Pattern::parse(p).ok())
                    .collect()
            })
        };
        let users = a
            .users
            .iter()
            .map(|u| mycelium_auth::User {
                name: u.name.clone(),
                token_sha256: mycelium_auth::parse_token_hash(&u.token_sha256).ok(),
                uid: u.uid,
                cert_common_name: u.cert_common_name.clone(),
                roles: u.roles.iter().filter_map(|r| r.parse().ok()).collect(),
                publish: patterns(&u.publish),
                consume: patterns(&u.subscribe),
            })
            .collect();
        // A generated HS256 secret is made for the HTTP API (where JWTs are the usual
        // credential); without it, the native door accepts JWTs only when a key is configured
        // or the secret was generated before.
        let generated = a.jwt_algorithm == "HS256" && a.jwt_secret.is_empty();
        let jwt = if !generated || self.http.enabled {
            Some(self.jwt_config()?)
        } else {
            let path = mycelium_storage::DataDir::new(&self.storage.data_dir).jwt_secret();
            match mycelium_storage::read_private(&path) {
                Ok(Some(_)) => Some(self.jwt_config()?),
                Ok(None) => None,
                Err(error) => {
                    return Err(ConfigError::Secret {
                        path,
                        reason: error.to_string(),
                    });
                }
            }
        };
        Ok(mycelium_auth::AuthConfig {
            mode: mycelium_auth::Mode::Required,
            jwt,
            users,
            local_admins: a.local_admins,
        })
    }
}

/// The generated HS256 secret of `data_dir`, created (64 hex characters, mode 0600) the first
/// time.
fn generated_secret(data_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = mycelium_storage::DataDir::new(data_dir).jwt_secret();
    let failed = |at: &Path, reason: String| ConfigError::Secret {
        path: at.to_owned(),
        reason,
    };
    // Refused when it is a link, someone else's, or readable by others.
    if let Some(bytes) = mycelium_storage::read_private(&path).map_err(|e| failed(&path, e.to_string()))? {
        let secret = String::from_utf8_lossy(&bytes).trim().to_owned();
        if secret.len() >= 32 {
            return Ok(secret.into_bytes());
        }
        return Err(failed(&path, "the secret is shorter than 32 bytes".into()));
    }
    mycelium_storage::create_dir_durable(data_dir).map_err(|e| failed(data_dir, e.to_string()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| failed(&path, format!("no randomness for the JWT secret: {e}")))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Written whole under a name of its own, then linked into place: a broker starting at the
    // same moment either wins the link or reads the winner's complete secret.
    let temp = path.with_extension(format!("{}.{}.tmp", std::process::id(), &secret[..8]));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mycelium_storage::FILE_MODE)
        .open(&temp)
        .and_then(|mut file| file.write_all(secret.as_bytes()).and_then(|()| file.sync_all()));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(failed(&temp, error.to_string()));
    }
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            return generated_secret(data_dir);
        }
        Err(error) => return Err(failed(&path, error.to_string())),
    }
    mycelium_storage::sync_dir(data_dir).map_err(|e| failed(data_dir, e.to_string()))?;
    tracing::info!(path = %path.display(), "generated the JWT secret (mint tokens with `mycelium token issue`)");
    Ok(secret.into_bytes())
}

/// `[tls]`: TLS on the TCP listeners of both doors.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first ("": TLS off).
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
    /// PEM CA certificates: when set, every TLS client must present a certificate they signed
    /// (mutual TLS); `[[auth.users]] cert_common_name` maps its subject to a principal.
    pub client_ca_file: String,
    /// Leave the native TCP listener in plain text even with a certificate.
    pub plain_tcp: bool,
    /// Leave the HTTP listener in plain text even with a certificate.
    pub plain_http: bool,
}

impl Config {
    /// Checks `[tls]`.
    pub(super) fn validate_tls(&self, bad: &mut impl FnMut(String, String)) {
        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            bad("tls".into(), "set both cert_file and key_file, or neither".into());
        }
        if !t.client_ca_file.is_empty() && t.cert_file.is_empty() {
            bad(
                "tls.client_ca_file".into(),
                "mutual TLS needs cert_file and key_file too".into(),
            );
        }
        for (key, path) in [
            ("cert_file", &t.cert_file),
            ("key_file", &t.key_file),
            ("client_ca_file", &t.client_ca_file),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                bad(format!("tls.{key}"), format!("`{path}` is not a readable file"));
            }
        }
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<mycelium_auth::tls::TlsFiles> {
        let t = &self.tls;
        (!t.cert_file.is_empty()).then(|| mycelium_auth::tls::TlsFiles {
            cert: PathBuf::from(&t.cert_file),
            key: PathBuf::from(&t.key_file),
            client_ca: (!t.client_ca_file.is_empty()).then(|| PathBuf::from(&t.client_ca_file)),
        })
    }
}
