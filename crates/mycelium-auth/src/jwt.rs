//! JWT bearer tokens: HS256 with a shared secret, RS256 / ES256 with a public key file; roles
//! from a configurable claim, and optional topic patterns in the token (`pub`, `subscribe`)
//! that restrict further. Also `issue`, which `mycelium token issue` signs with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mycelium_broker::{Principal, Role, name::Pattern};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{AuthError, KeyError};

/// The key tokens are signed with.
#[derive(Debug, Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret.
    Hs256(Vec<u8>),
    /// RS256: verify with the PEM public key; sign (token issue) with the private key if given.
    Rs256 {
        /// PEM public key file.
        public_key: PathBuf,
        /// PEM private key file (only for `mycelium token issue`).
        private_key: Option<PathBuf>,
    },
    /// ES256 (P-256).
    Es256 {
        /// PEM public key file.
        public_key: PathBuf,
        /// PEM private key file (only for `mycelium token issue`).
        private_key: Option<PathBuf>,
    },
}

/// JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The key.
    pub key: JwtKey,
    /// The claim holding the role(s): a string or an array of strings.
    pub role_claim: String,
    /// Clock skew allowed on `exp` / `nbf`.
    pub leeway: Duration,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Verified tokens remembered by their exact text (0: every request checked in full).
    pub cache_tokens: usize,
}

/// The claims of a Mycelium token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Topics it may publish to.
    #[serde(default, rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Topics it may consume from.
    #[serde(default, rename = "subscribe", skip_serializing_if = "Option::is_none")]
    pub consume: Option<Vec<String>>,
    /// Everything else, including the role claim.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Checks bearer tokens.
pub struct Verifier {
    config: JwtConfig,
    key: DecodingKey,
    validation: Validation,
    /// Tokens already verified, by their exact text: a client sends the same token on every
    /// request, and checking its signature and claims each time was a visible share of a
    /// publish's cost. Only the expiry can change a cached verdict; it is checked on every hit.
    /// At most `config.cache_tokens`; it starts over when full.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

/// A verified token: its principal and when it stops being accepted (`exp` + leeway).
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    valid_until: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the key.
    ///
    /// # Errors
    /// An unreadable or invalid key file.
    pub fn new(config: JwtConfig) -> Result<Verifier, KeyError> {
        let read = |path: &PathBuf| std::fs::read(path).map_err(|e| key_error(path, e));
        let (key, algorithm) = match &config.key {
            JwtKey::Hs256(secret) => {
                if secret.len() < 32 {
                    return Err(KeyError::ShortSecret);
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            JwtKey::Rs256 { public_key, .. } => (
                DecodingKey::from_rsa_pem(&read(public_key)?).map_err(|e| key_error(public_key, e))?,
                Algorithm::RS256,
            ),
            JwtKey::Es256 { public_key, .. } => (
                DecodingKey::from_ec_pem(&read(public_key)?).map_err(|e| key_error(public_key, e))?,
                Algorithm::ES256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            config,
            key,
            validation,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The principal of `token`; a token verified before is remembered (by its exact text)
    /// until it expires.
    ///
    /// # Errors
    /// Malformed, badly signed, expired or not yet valid token; no known role.
    pub fn principal(&self, token: &str) -> Result<Principal, AuthError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.principal_at(token, now)
    }

    /// [`Verifier::principal`] at `now` (seconds since the Unix epoch) for a token seen before;
    /// a new token is checked in full against the system clock.
    pub(crate) fn principal_at(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let cached = self.verified.lock().get(token).cloned();
        if let Some(cached) = cached {
            if now > cached.valid_until {
                self.verified.lock().remove(token);
                return Err(AuthError::Invalid("the token has expired".into()));
            }
            return Ok(cached.principal);
        }
        let (principal, exp) = self.verify(token)?;
        if self.config.cache_tokens == 0 {
            return Ok(principal);
        }
        let mut verified = self.verified.lock();
        if verified.len() >= self.config.cache_tokens {
            verified.clear();
        }
        verified.insert(
            token.into(),
            Verified {
                principal: principal.clone(),
                valid_until: exp.saturating_add(self.validation.leeway),
            },
        );
        Ok(principal)
    }

    /// Checks `token` in full; returns its principal and `exp`.
    fn verify(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let unauthorized = AuthError::Invalid;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as E;
            unauthorized(match e.kind() {
                E::ExpiredSignature => "the token has expired".into(),
                E::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                E::InvalidSignature => "the token's signature is invalid".into(),
                E::InvalidAlgorithm => "the token is signed with another algorithm".into(),
                other => format!("the token is invalid: {other:?}"),
            })
        })?;
        let claims = data.claims;
        let exp = claims.exp;
        let roles: Vec<Role> = match claims.other.get(&self.config.role_claim) {
            Some(serde_json::Value::String(role)) => role.parse().ok().into_iter().collect(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().and_then(|r| r.parse().ok()))
                .collect(),
            _ => Vec::new(),
        };
        if roles.is_empty() {
            return Err(AuthError::NoRole(format!(
                "the token's `{}` claim names no known role",
                self.config.role_claim
            )));
        }
        let patterns = |list: Option<Vec<String>>, claim: &str| -> Result<Option<Vec<Pattern>>, AuthError> {
            list.map(|items| {
                items
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| unauthorized(format!("the token's `{claim}` claim: {e}")))
            })
            .transpose()
        };
        let principal = Principal {
            name: claims.sub,
            roles,
            publish: patterns(claims.publish, "pub")?,
            consume: patterns(claims.consume, "subscribe")?,
        };
        Ok((principal, exp))
    }
}

/// What `mycelium token issue` asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Lifetime.
    pub ttl: Duration,
    /// Topics it may publish to.
    pub publish: Option<Vec<String>>,
    /// Topics it may consume from.
    pub consume: Option<Vec<String>>,
}

/// Signs a token with the configured key (HS256 secret, or the private key file for RS256/ES256).
///
/// # Errors
/// No signing key, an unreadable key, a bad topic pattern.
pub fn issue(config: &JwtConfig, request: &TokenRequest) -> Result<String, KeyError> {
    for pattern in request.publish.iter().chain(&request.consume).flatten() {
        Pattern::parse(pattern).map_err(|e| KeyError::Pattern {
            what: "topic pattern",
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut other = serde_json::Map::new();
    let roles: Vec<String> = request.roles.iter().map(ToString::to_string).collect();
    other.insert(config.role_claim.clone(), serde_json::json!(roles));
    if let Some(issuer) = &config.issuer {
        other.insert("iss".into(), serde_json::json!(issuer));
    }
    if let Some(audience) = &config.audience {
        other.insert("aud".into(), serde_json::json!(audience));
    }
    let claims = Claims {
        sub: request.subject.clone(),
        exp: now + request.ttl.as_secs().max(1),
        nbf: Some(now),
        iat: Some(now),
        publish: request.publish.clone(),
        consume: request.consume.clone(),
        other,
    };
    let private = |path: &Option<PathBuf>| -> Result<(Vec<u8>, PathBuf), KeyError> {
        let path = path.as_ref().ok_or(KeyError::NoPrivateKey)?;
        let bytes = std::fs::read(path).map_err(|e| key_error(path, e))?;
        Ok((bytes, path.clone()))
    };
    let pem = |(bytes, path): (Vec<u8>, PathBuf),
               parse: fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>| {
        parse(&bytes).map_err(|e| key_error(&path, e))
    };
    let (key, algorithm) = match &config.key {
        JwtKey::Hs256(secret) => (EncodingKey::from_secret(secret), Algorithm::HS256),
        JwtKey::Rs256 { private_key, .. } => (
            pem(private(private_key)?, EncodingKey::from_rsa_pem)?,
            Algorithm::RS256,
        ),
        JwtKey::Es256 { private_key, .. } => (
            pem(private(private_key)?, EncodingKey::from_ec_pem)?,
            Algorithm::ES256,
        ),
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).map_err(|e| KeyError::Sign(e.to_string()))
}

fn key_error(path: &std::path::Path, error: impl std::fmt::Display) -> KeyError {
    KeyError::Key {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwtConfig {
        JwtConfig {
            key: JwtKey::Hs256(b"a test secret of at least thirty-two bytes".to_vec()),
            role_claim: "roles".into(),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            cache_tokens: 4096,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(roles: Vec<Role>, publish: Option<Vec<String>>) -> String {
        let request = TokenRequest {
            subject: "svc".into(),
            roles,
            ttl: Duration::from_secs(60),
            publish,
            consume: None,
        };
        issue(&config(), &request).unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let verifier = Verifier::new(config()).unwrap();
        let token = token(vec![Role::Producer], Some(vec!["orders.>".into()]));
        let first = verifier.principal(&token).unwrap();
        let until = verifier.verified.lock()[token.as_str()].valid_until;
        let again = verifier.principal_at(&token, until).unwrap();
        assert_eq!(again.name, first.name);
        assert_eq!(again.roles, vec![Role::Producer]);
        assert!(again.may_publish("orders.new").is_ok());
        assert!(again.may_publish("payments.new").is_err());
        // `exp` + leeway is the last second it is accepted; after it, refused and forgotten.
        assert!(until >= now() + 89, "exp (60 s from issue) + leeway (30 s)");
        let expired = verifier.principal_at(&token, until + 1).unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired:?}");
        assert!(verifier.verified.lock().is_empty());
    }

    #[test]
    fn only_the_exact_verified_token_is_remembered() {
        let verifier = Verifier::new(config()).unwrap();
        let token = token(vec![Role::Consumer], None);
        verifier.principal(&token).unwrap();
        // Same header and claims, another signature: checked in full and refused.
        let (rest, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{rest}.{flipped}{}", &signature[1..]);
        let error = verifier.principal(&forged).unwrap_err();
        assert!(error.to_string().contains("signature"), "{error:?}");
        assert_eq!(verifier.verified.lock().len(), 1, "a refused token is not kept");
        let garbage = verifier.principal("not a token").unwrap_err();
        assert!(garbage.to_string().contains("invalid"), "{garbage:?}");
    }

    #[test]
    fn the_cache_keeps_at_most_its_limit_and_zero_turns_it_off() {
        let limited = Verifier::new(JwtConfig {
            cache_tokens: 2,
            ..config()
        })
        .unwrap();
        let tokens: Vec<String> = ["a.>", "b.>", "c.>"]
            .iter()
            .map(|p| token(vec![Role::Producer], Some(vec![(*p).into()])))
            .collect();
        for token in &tokens[..2] {
            limited.principal(token).unwrap();
        }
        assert_eq!(limited.verified.lock().len(), 2);
        // Full: it starts over with the new token.
        limited.principal(&tokens[2]).unwrap();
        assert_eq!(limited.verified.lock().len(), 1);
        assert!(limited.verified.lock().contains_key(tokens[2].as_str()));

        let off = Verifier::new(JwtConfig {
            cache_tokens: 0,
            ..config()
        })
        .unwrap();
        let principal = off.principal(&tokens[0]).unwrap();
        assert!(principal.may_publish("a.x").is_ok());
        assert!(off.verified.lock().is_empty(), "every request checked in full");
    }
}
