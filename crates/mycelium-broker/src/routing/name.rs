//! Topic names and subscription patterns.
//!
//! A topic name is 1 to 255 bytes of dot-separated tokens (`signals.arbitrage.eth`); each token is
//! non-empty and made of ASCII letters, digits, `_` and `-`. A pattern is a topic name whose tokens
//! may also be `*` (exactly one token) or, as the last token, `>` (one or more tokens), as in NATS.

use std::fmt;

/// Longest topic name or pattern, in bytes (it travels as a `str8`).
pub const NAME_BYTES_MAX: usize = 255;
/// Most tokens in a topic name or pattern.
pub const TOKENS_MAX: usize = 32;

/// Why a topic name or pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{name}`: {reason}")]
pub struct NameError {
    /// "topic name" or "pattern".
    pub what: &'static str,
    /// The offending input.
    pub name: String,
    /// What rule it breaks.
    pub reason: String,
}

fn error(what: &'static str, name: &str, reason: impl Into<String>) -> NameError {
    NameError {
        what,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn check_shape(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(error(what, name, "is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(error(
            what,
            name,
            format!("is {} bytes, the maximum is {NAME_BYTES_MAX}", name.len()),
        ));
    }
    if name.split('.').count() > TOKENS_MAX {
        return Err(error(what, name, format!("has more than {TOKENS_MAX} tokens")));
    }
    Ok(())
}

fn check_token(what: &'static str, name: &str, index: usize, token: &str) -> Result<(), NameError> {
    if token.is_empty() {
        return Err(error(
            what,
            name,
            format!("token {} is empty (leading, trailing or doubled `.`)", index + 1),
        ));
    }
    if let Some(bad) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(error(
            what,
            name,
            format!(
                "token {} contains `{bad}` (allowed: letters, digits, `_`, `-`)",
                index + 1
            ),
        ));
    }
    Ok(())
}

/// Whether `name` is a valid queue-group or durable-subscription name: 1 to `max_bytes` of
/// `[A-Za-z0-9_-]`.
pub fn is_member_name(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Longest durable subscription name, in bytes.
pub const DURABLE_NAME_BYTES_MAX: usize = 128;

/// Longest queue-group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// Checks a concrete topic name (no wildcards).
///
/// # Errors
/// [`NameError`] naming the rule broken.
pub fn validate_topic(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "topic name";
    if is_plain_topic(name.as_bytes()) {
        return Ok(());
    }
    check_shape(WHAT, name)?;
    for (index, token) in name.split('.').enumerate() {
        if token == "*" || token == ">" {
            return Err(error(
                WHAT,
                name,
                "wildcards `*` and `>` are for subscriptions, not topic names",
            ));
        }
        check_token(WHAT, name, index, token)?;
    }
    Ok(())
}

/// Whether `name` is a valid topic name, in one pass over its bytes: the common case on every
/// publish over HTTP. [`validate_topic`] runs the rule-by-rule checks, which say what is wrong,
/// only when this says no.
fn is_plain_topic(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return false;
    }
    let (mut tokens, mut token_len) = (1, 0);
    for &b in name {
        if b == b'.' {
            if token_len == 0 {
                return false;
            }
            tokens += 1;
            token_len = 0;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            token_len += 1;
        } else {
            return false;
        }
    }
    token_len > 0 && tokens <= TOKENS_MAX
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more trailing tokens.
    Tail,
}

/// The last token of a dead-letter queue's topic: `jobs` dead-letters into `jobs.dlq`.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// Whether `name` (a topic, or a pattern) names a dead-letter queue.
pub fn is_dead_letter_topic(name: &str) -> bool {
    name.ends_with(DEAD_LETTER_SUFFIX)
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    raw: Box<str>,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses and checks a pattern.
    ///
    /// # Errors
    /// [`NameError`] naming the rule broken.
    pub fn parse(raw: &str) -> Result<Pattern, NameError> {
        const WHAT: &str = "pattern";
        check_shape(WHAT, raw)?;
        let count = raw.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (index, token) in raw.split('.').enumerate() {
            tokens.push(match token {
                "*" => Token::One,
                ">" if index + 1 == count => Token::Tail,
                ">" => return Err(error(WHAT, raw, "`>` may only be the last token")),
                _ => {
                    check_token(WHAT, raw, index, token)?;
                    Token::Literal(token.into())
                }
            });
        }
        Ok(Pattern {
            raw: raw.into(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern has no wildcard (it names exactly one topic).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether `topic` (a valid topic name) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match token {
                Token::Tail => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(literal) => {
                    if parts.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl Pattern {
    /// Whether every topic `other` matches is matched by `self` (`a.>` covers `a.*.c` and
    /// `a.b`; `a.*` does not cover `a.>`): what a grant must do for a subscription it allows.
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut asked = other.tokens.iter();
        for token in &self.tokens {
            let next = asked.next();
            match (token, next) {
                // `>` takes one or more tokens, and `other` has at least one here.
                (Token::Tail, Some(_)) => return true,
                (_, None) => return false,
                (Token::One, Some(Token::Literal(_) | Token::One)) => {}
                (Token::One, Some(Token::Tail)) => return false,
                (Token::Literal(mine), Some(Token::Literal(theirs))) if mine == theirs => {}
                (Token::Literal(_), Some(_)) => return false,
            }
        }
        asked.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Pattern {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rule-by-rule checks alone (what `validate_topic` was before its one-pass fast path).
    fn by_rules(name: &str) -> bool {
        check_shape("topic name", name).is_ok()
            && name
                .split('.')
                .enumerate()
                .all(|(i, t)| t != "*" && t != ">" && check_token("topic name", name, i, t).is_ok())
    }

    proptest! {
        /// The one-pass check accepts exactly the names the rules accept.
        #[test]
        fn the_fast_path_agrees_with_the_rules(name in "[a-c0-9_.*>é -]{0,12}|[a.]{250,260}|a{250,260}|(a\\.){30,34}a") {
            prop_assert_eq!(is_plain_topic(name.as_bytes()), by_rules(&name), "{:?}", name);
        }

        /// A grant that covers a pattern matches every topic the pattern matches.
        #[test]
        fn a_covering_grant_matches_what_the_pattern_matches(
            grant in "[ab*](\\.[ab*]){0,3}(\\.>)?",
            asked in "[ab*](\\.[ab*]){0,3}(\\.>)?",
            topic in "[ab](\\.[ab]){0,5}",
        ) {
            let (grant, asked) = (Pattern::parse(&grant).unwrap(), Pattern::parse(&asked).unwrap());
            if grant.covers(&asked) && asked.matches(&topic) {
                prop_assert!(grant.matches(&topic), "{} covers {} but not {}", grant, asked, topic);
            }
        }
    }

    #[test]
    fn covers_follows_the_wildcards() {
        let covers = |grant: &str, asked: &str| {
            Pattern::parse(grant)
                .unwrap()
                .covers(&Pattern::parse(asked).unwrap())
        };
        assert!(covers("a.>", "a.b"));
        assert!(covers("a.>", "a.*.c"));
        assert!(covers("a.>", "a.>"));
        assert!(covers(">", "a.>"));
        assert!(covers("a.*", "a.b"));
        assert!(covers("a.*", "a.*"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.*", "a.>"), "`>` reaches deeper than `*`");
        assert!(!covers("a.b", "a.*"));
        assert!(!covers("a.>", "a"), "`>` needs one more token");
        assert!(!covers("a.>", ">"));
        assert!(!covers("a.b", "a.b.c"));
        assert!(!covers("a.b.c", "a.b"));
        assert!(!covers("orders.>", "payments.>"));
    }
}
