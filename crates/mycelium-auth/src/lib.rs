//! Who is calling: one model for both doors. A credential is a JWT (see [`jwt`]) or the token of
//! a configured service user ([`User`]: a name, the SHA-256 of its token, roles, topic
//! patterns), so a service needs no JWT issuer; on the Unix socket a peer's uid may stand for a
//! credential. The result is a [`Principal`] of `mycelium-broker`, whose `access` module decides
//! what it may do.
//!
//! The native door checks the credential of HELLO once per connection; the HTTP door checks the
//! bearer token of every request (verified JWTs are remembered until they expire).

pub mod jwt;
pub mod tls;

use std::collections::HashMap;
use std::path::PathBuf;

use mycelium_broker::name::Pattern;
use mycelium_broker::{Principal, Role};
use sha2::{Digest, Sha256};

pub use jwt::{Claims, JwtConfig, JwtKey, TokenRequest, Verifier, issue};

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential where one is required.
    #[error("{0}")]
    Missing(String),
    /// A credential that does not check out: malformed, badly signed, expired, unknown.
    #[error("{0}")]
    Invalid(String),
    /// A valid token that names no known role.
    #[error("{0}")]
    NoRole(String),
}

/// A key or secret that cannot be used, or a token that cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file cannot be read, or does not hold a key of the configured kind.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The HS256 secret is too short to be safe.
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    /// RS256 / ES256 tokens are issued with the private key, and none is configured.
    #[error("issuing RS256/ES256 tokens needs the private key file (auth.jwt_private_key)")]
    NoPrivateKey,
    /// A topic pattern (in a token request or a user's grants) does not parse.
    #[error("{what} `{pattern}`: {reason}")]
    Pattern {
        /// Where the pattern was given.
        what: &'static str,
        /// The pattern.
        pattern: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Signing the token failed.
    #[error("signing the token: {0}")]
    Sign(String),
}

/// A configured service credential (`[[auth.users]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The principal's name.
    pub name: String,
    /// SHA-256 of its token (none: it authenticates only by `uid`).
    pub token_sha256: Option<[u8; 32]>,
    /// On the Unix socket, a peer with this uid is this user without a token.
    pub uid: Option<u32>,
    /// Over mutual TLS, a client certificate with this subject common name is this user.
    pub cert_common_name: Option<String>,
    /// Roles.
    pub roles: Vec<Role>,
    /// Topics it may publish to (`None`: any).
    pub publish: Option<Vec<Pattern>>,
    /// Topics it may consume from (`None`: any).
    pub consume: Option<Vec<Pattern>>,
}

impl User {
    fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            roles: self.roles.clone(),
            publish: self.publish.clone(),
            consume: self.consume.clone(),
        }
    }
}

/// Whether credentials are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every door checks credentials (the Unix socket may map peer uids instead).
    Required,
    /// Nobody is checked: every caller is an admin named `anonymous`.
    None,
}

/// Everything the authenticator needs.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required or none.
    pub mode: Mode,
    /// JWT settings (`None`: JWTs are not accepted).
    pub jwt: Option<JwtConfig>,
    /// Service users.
    pub users: Vec<User>,
    /// On the Unix socket, the broker's own uid and root are admins without a token.
    pub local_admins: bool,
}

impl AuthConfig {
    /// Nobody is checked.
    pub fn none() -> AuthConfig {
        AuthConfig {
            mode: Mode::None,
            jwt: None,
            users: Vec::new(),
            local_admins: true,
        }
    }
}

/// Checks credentials into principals. Both doors share one; a configuration reload
/// [`replace`](Authenticator::replace)s its keys and users while it is shared.
#[derive(Debug)]
pub struct Authenticator {
    keys: arc_swap::ArcSwap<Keys>,
}

/// The keys and users an [`Authenticator`] checks against now.
#[derive(Debug)]
struct Keys {
    mode: Mode,
    verifier: Option<Verifier>,
    by_token: HashMap<[u8; 32], Principal>,
    by_uid: HashMap<u32, Principal>,
    by_common_name: HashMap<String, Principal>,
    local_admins: bool,
    own_uid: u32,
}

impl Authenticator {
    /// Loads the keys.
    ///
    /// # Errors
    /// An unreadable or invalid key file, a short secret.
    pub fn new(config: AuthConfig) -> Result<Authenticator, KeyError> {
        Ok(Authenticator::of(Keys::new(config)?))
    }

    fn of(keys: Keys) -> Authenticator {
        Authenticator {
            keys: arc_swap::ArcSwap::from_pointee(keys),
        }
    }

    /// Takes `other`'s keys and users: credentials are checked against them from now on
    /// (connections already admitted keep the principal they were given).
    pub fn replace(&self, other: Authenticator) {
        self.keys.store(other.keys.load_full());
    }

    /// An authenticator that checks nobody (`Mode::None`).
    pub fn none() -> Authenticator {
        Authenticator::of(Keys::none())
    }

    /// Whether credentials are required.
    pub fn mode(&self) -> Mode {
        self.keys.load().mode
    }

    /// The principal of a token (a service user's token, or a JWT).
    ///
    /// # Errors
    /// An empty, unknown, malformed, badly signed or expired token; with `Mode::None` every
    /// token (and none) is accepted as the anonymous admin.
    pub fn token(&self, token: &str) -> Result<Principal, AuthError> {
        self.keys.load().token(token)
    }

    /// The principal of a connection: its token if it sent one; else the user mapped to its
    /// verified client certificate's common name (mutual TLS); else (on the Unix socket,
    /// `peer.uid` known) the user mapped to its uid, or an admin when the uid is the broker's own
    /// or root and `local_admins` is on.
    ///
    /// # Errors
    /// As [`Authenticator::token`]; no token and nothing else that names a principal.
    pub fn connection(&self, token: &[u8], peer: &Peer<'_>) -> Result<Principal, AuthError> {
        self.keys.load().connection(token, peer)
    }
}

impl Keys {
    fn new(config: AuthConfig) -> Result<Keys, KeyError> {
        let verifier = config.jwt.map(Verifier::new).transpose()?;
        let by_token = config
            .users
            .iter()
            .filter_map(|u| u.token_sha256.map(|h| (h, u.principal())))
            .collect();
        let by_uid = config
            .users
            .iter()
            .filter_map(|u| u.uid.map(|uid| (uid, u.principal())))
            .collect();
        let by_common_name = config
            .users
            .iter()
            .filter_map(|u| u.cert_common_name.clone().map(|cn| (cn, u.principal())))
            .collect();
        Ok(Keys {
            mode: config.mode,
            verifier,
            by_token,
            by_uid,
            by_common_name,
            local_admins: config.local_admins,
            own_uid: effective_uid(),
        })
    }

    fn none() -> Keys {
        Keys {
            mode: Mode::None,
            verifier: None,
            by_token: HashMap::new(),
            by_uid: HashMap::new(),
            by_common_name: HashMap::new(),
            local_admins: true,
            own_uid: effective_uid(),
        }
    }

    /// See [`Authenticator::token`].
    fn token(&self, token: &str) -> Result<Principal, AuthError> {
        if self.mode == Mode::None {
            return Ok(Principal::anonymous_admin());
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing("no credential: send a token".into()));
        }
        if let Some(user) = self.by_token.get(&sha256(token.as_bytes())) {
            return Ok(user.clone());
        }
        match &self.verifier {
            Some(verifier) if token.matches('.').count() == 2 => verifier.principal(token),
            _ => Err(AuthError::Invalid("the token is not valid".into())),
        }
    }

    /// See [`Authenticator::connection`].
    fn connection(&self, token: &[u8], peer: &Peer<'_>) -> Result<Principal, AuthError> {
        if self.mode == Mode::None {
            return Ok(Principal::anonymous_admin());
        }
        if !token.is_empty() {
            let text = std::str::from_utf8(token)
                .map_err(|_| AuthError::Invalid("the token is not UTF-8".into()))?;
            return self.token(text);
        }
        if let Some(name) = peer.common_name {
            return self.by_common_name.get(name).cloned().ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the client certificate's common name `{name}` is not mapped to a principal; send a token"
                ))
            });
        }
        let Some(uid) = peer.uid else {
            return Err(AuthError::Missing(
                "no credential: this door needs a token (--token, MYCELIUM_TOKEN or --token-file)".into(),
            ));
        };
        if let Some(user) = self.by_uid.get(&uid) {
            return Ok(user.clone());
        }
        if self.local_admins && (uid == self.own_uid || uid == 0) {
            return Ok(Principal::admin(format!("uid:{uid}")));
        }
        Err(AuthError::Missing(format!(
            "no credential: uid {uid} is not mapped to a principal; send a token"
        )))
    }
}

/// What the transport says of a peer, beside any token it sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    /// Its uid (Unix socket, `SO_PEERCRED`).
    pub uid: Option<u32>,
    /// The common name of its verified client certificate (mutual TLS).
    pub common_name: Option<&'a str>,
}

impl Peer<'_> {
    /// A peer the transport says nothing about (TCP without client certificates).
    pub const UNKNOWN: Peer<'static> = Peer {
        uid: None,
        common_name: None,
    };

    /// A Unix socket peer with `uid`.
    pub fn uid(uid: Option<u32>) -> Peer<'static> {
        Peer {
            uid,
            common_name: None,
        }
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The hex form of a token's SHA-256, as `[[auth.users]] token_sha256` takes it.
pub fn token_hash_hex(token: &str) -> String {
    sha256(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses `token_sha256` (64 hex digits).
///
/// # Errors
/// Not 64 hex digits.
pub fn parse_token_hash(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "must be the 64 hex digits of the token's SHA-256 (`mycelium token user` prints it)".into(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A new service token: 32 random bytes, hex (256 bits: a fast hash stores it safely).
///
/// # Errors
/// The system has no randomness to give.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!(
        "myc_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, token: &str, roles: Vec<Role>) -> User {
        User {
            name: name.into(),
            token_sha256: Some(parse_token_hash(&token_hash_hex(token)).unwrap()),
            uid: None,
            cert_common_name: None,
            roles,
            publish: Some(vec![Pattern::parse("md.>").unwrap()]),
            consume: None,
        }
    }

    #[test]
    fn service_users_are_known_by_the_hash_of_their_token() {
        let token = new_token().unwrap();
        assert!(token.starts_with("myc_") && token.len() == 68, "{token}");
        let auth = Authenticator::new(AuthConfig {
            mode: Mode::Required,
            jwt: None,
            users: vec![user("adapter", &token, vec![Role::Producer])],
            local_admins: true,
        })
        .unwrap();
        let principal = auth.token(&token).unwrap();
        assert_eq!(principal.name, "adapter");
        assert!(principal.may_publish("md.trades").is_ok());
        assert!(principal.may_publish("orders").is_err());
        assert!(matches!(auth.token("myc_wrong"), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.token(""), Err(AuthError::Missing(_))));
        assert!(matches!(
            auth.connection(b"", &Peer::UNKNOWN),
            Err(AuthError::Missing(_))
        ));
        assert_eq!(
            auth.connection(token.as_bytes(), &Peer::UNKNOWN).unwrap().name,
            "adapter"
        );
    }

    #[test]
    fn local_peers_map_by_uid() {
        let mut mapped = user("ops", "unused", vec![Role::Consumer]);
        mapped.token_sha256 = None;
        mapped.uid = Some(4242);
        mapped.cert_common_name = Some("ops.example".into());
        let config = AuthConfig {
            mode: Mode::Required,
            jwt: None,
            users: vec![mapped],
            local_admins: true,
        };
        let auth = Authenticator::new(config.clone()).unwrap();
        let own = effective_uid();
        assert!(auth.connection(b"", &Peer::uid(Some(own))).unwrap().is_admin());
        assert!(auth.connection(b"", &Peer::uid(Some(0))).unwrap().is_admin());
        assert_eq!(auth.connection(b"", &Peer::uid(Some(4242))).unwrap().name, "ops");
        assert!(auth.connection(b"", &Peer::uid(Some(4243))).is_err());
        let by_cert = Peer {
            uid: None,
            common_name: Some("ops.example"),
        };
        assert_eq!(auth.connection(b"", &by_cert).unwrap().name, "ops");
        let unknown_cert = Peer {
            uid: None,
            common_name: Some("stranger"),
        };
        assert!(matches!(
            auth.connection(b"", &unknown_cert),
            Err(AuthError::Invalid(_))
        ));
        let strict = Authenticator::new(AuthConfig {
            local_admins: false,
            ..config
        })
        .unwrap();
        assert!(strict.connection(b"", &Peer::uid(Some(own))).is_err());
        assert!(strict.connection(b"", &Peer::uid(Some(0))).is_err());
    }

    #[test]
    fn with_mode_none_everyone_is_the_anonymous_admin() {
        let auth = Authenticator::new(AuthConfig::none()).unwrap();
        assert!(auth.token("").unwrap().is_admin());
        assert!(auth.connection(b"garbage", &Peer::UNKNOWN).unwrap().is_admin());
    }

    #[test]
    fn token_hashes_must_be_64_hex_digits() {
        assert!(parse_token_hash("abc").is_err());
        assert!(parse_token_hash(&"g".repeat(64)).is_err());
        assert_eq!(parse_token_hash(&"00".repeat(32)).unwrap(), [0u8; 32]);
    }
}
