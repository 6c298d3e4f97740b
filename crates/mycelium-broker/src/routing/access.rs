//! Who may do what: principals, their roles and topic grants, and the one authorization rule
//! set both doors use. Authentication (checking a token, a peer's uid) is the `mycelium-auth`
//! crate's; this module decides what an authenticated principal may do.
//!
//! The rules:
//! - publish needs `producer` and a `publish` grant matching the topic; nobody publishes into a
//!   dead-letter queue (`*.dlq`: the broker writes those);
//! - subscribe (plain, queue group, durable) needs `consumer` and a `consume` grant that
//!   *covers* the pattern: `orders.>` allows `orders.eu.*`, `orders.*` does not allow `orders.>`;
//! - acknowledging a message is consuming from its topic;
//! - a durable subscription belongs to the principal that created it;
//! - stats, admin requests and dead-letter queues need `admin` (admin has every role and grant).

use serde::{Deserialize, Serialize};

use crate::routing::name::Pattern;

/// A role, from least to most allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May publish.
    Producer,
    /// May consume, ack, nack.
    Consumer,
    /// May do everything: topics, subscriptions, stats, dead letters.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "producer" => Ok(Role::Producer),
            "consumer" => Ok(Role::Consumer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("`{other}` is not a role (producer, consumer, admin)")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
            Role::Admin => "admin",
        })
    }
}

/// The door a request came through (a label on refusals and audit records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// The native protocol on the Unix socket.
    Unix,
    /// The native protocol on TCP.
    Tcp,
    /// The HTTP API.
    Http,
}

impl Door {
    /// Every door, in label order.
    pub const ALL: [Door; 3] = [Door::Unix, Door::Tcp, Door::Http];

    /// The label: `unix`, `tcp`, `http`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Door::Unix => "unix",
            Door::Tcp => "tcp",
            Door::Http => "http",
        }
    }
}

/// Why a request was refused (a label on `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No credential, or one that does not check out (bad signature, expired, unknown).
    Unauthenticated,
    /// The principal lacks the role the action needs.
    Role,
    /// The principal's grants do not reach the topic or pattern.
    Topic,
    /// A publish into a dead-letter queue.
    DeadLetterQueue,
    /// Someone else's durable subscription.
    Owner,
}

impl DenyReason {
    /// Every reason, in label order.
    pub const ALL: [DenyReason; 5] = [
        DenyReason::Unauthenticated,
        DenyReason::Role,
        DenyReason::Topic,
        DenyReason::DeadLetterQueue,
        DenyReason::Owner,
    ];

    /// The label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::Role => "role",
            DenyReason::Topic => "topic",
            DenyReason::DeadLetterQueue => "dlq",
            DenyReason::Owner => "owner",
        }
    }
}

/// A refused request: why, and a message for the caller that says what is missing without
/// saying whether the thing asked for exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not permitted: {message}")]
pub struct Denied {
    /// Why.
    pub reason: DenyReason,
    /// What was missing.
    pub message: String,
}

impl Denied {
    /// A refusal for `reason`.
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Denied {
        Denied {
            reason,
            message: message.into(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name: a JWT's `sub`, a configured user's name, `uid:<n>` for a local peer.
    pub name: String,
    /// Roles granted.
    pub roles: Vec<Role>,
    /// Topics it may publish to (`None`: any its role allows).
    pub publish: Option<Vec<Pattern>>,
    /// Topics it may consume from (`None`: any its role allows).
    pub consume: Option<Vec<Pattern>>,
}

impl Principal {
    /// The caller when authentication is off: an admin named `anonymous`.
    pub fn anonymous_admin() -> Principal {
        Principal::admin("anonymous")
    }

    /// An admin called `name`.
    pub fn admin(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            roles: vec![Role::Admin],
            publish: None,
            consume: None,
        }
    }

    /// Whether it has `role` (admin has every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r == role || *r == Role::Admin)
    }

    /// Whether it is an admin.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// The strongest role (for rate limits).
    pub fn top_role(&self) -> Role {
        self.roles.iter().copied().max().unwrap_or(Role::Producer)
    }

    /// Refuses unless it has `role`.
    ///
    /// # Errors
    /// [`DenyReason::Role`].
    pub fn require(&self, role: Role) -> Result<(), Denied> {
        if self.has(role) {
            return Ok(());
        }
        let held: Vec<String> = self.roles.iter().map(ToString::to_string).collect();
        Err(Denied::new(
            DenyReason::Role,
            format!(
                "this needs the `{role}` role; `{}` has [{}]",
                self.name,
                held.join(", ")
            ),
        ))
    }

    /// Refuses unless it may publish to `topic`.
    ///
    /// # Errors
    /// Not a producer, no grant for the topic, or a dead-letter queue.
    pub fn may_publish(&self, topic: &str) -> Result<(), Denied> {
        if crate::routing::name::is_dead_letter_topic(topic) {
            return Err(Denied::new(
                DenyReason::DeadLetterQueue,
                format!("`{topic}` is a dead-letter queue: only the broker writes to it"),
            ));
        }
        self.require(Role::Producer)?;
        if self.is_admin() {
            return Ok(());
        }
        match &self.publish {
            Some(grants) if !grants.iter().any(|p| p.matches(topic)) => Err(Denied::new(
                DenyReason::Topic,
                format!("`{}` may not publish to `{topic}`", self.name),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses unless it may consume from `topic` (a topic name: acknowledgements, pulls).
    ///
    /// # Errors
    /// Not a consumer, or no grant for the topic.
    pub fn may_consume(&self, topic: &str) -> Result<(), Denied> {
        self.require(Role::Consumer)?;
        if self.is_admin() {
            return Ok(());
        }
        match &self.consume {
            Some(grants) if !grants.iter().any(|p| p.matches(topic)) => Err(Denied::new(
                DenyReason::Topic,
                format!("`{}` may not consume from `{topic}`", self.name),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses unless it may subscribe to `pattern`: one of its grants must cover every topic
    /// the pattern matches. Dead-letter queues are admin only.
    ///
    /// # Errors
    /// Not a consumer, a pattern wider than its grants, or a dead-letter queue.
    pub fn may_subscribe(&self, pattern: &Pattern) -> Result<(), Denied> {
        self.require(Role::Consumer)?;
        if self.is_admin() {
            return Ok(());
        }
        if crate::routing::name::is_dead_letter_topic(pattern.as_str()) {
            return Err(Denied::new(
                DenyReason::Role,
                format!("`{pattern}` is a dead-letter queue: reading it needs the `admin` role"),
            ));
        }
        match &self.consume {
            Some(grants) if !grants.iter().any(|g| g.covers(pattern)) => Err(Denied::new(
                DenyReason::Topic,
                format!(
                    "`{}` may not subscribe to `{pattern}` (wider than its grants)",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses unless it may use the durable subscription owned by `owner` (`None`: one made
    /// before owners were recorded, or by the broker itself: admin only).
    ///
    /// # Errors
    /// [`DenyReason::Owner`].
    pub fn may_use_durable(&self, name: &str, owner: Option<&str>) -> Result<(), Denied> {
        if self.is_admin() || owner == Some(self.name.as_str()) {
            return Ok(());
        }
        Err(Denied::new(
            DenyReason::Owner,
            format!("durable subscription `{name}` belongs to another principal"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[Role], publish: Option<&[&str]>, consume: Option<&[&str]>) -> Principal {
        let patterns = |list: Option<&[&str]>| {
            list.map(|items| items.iter().map(|p| Pattern::parse(p).unwrap()).collect())
        };
        Principal {
            name: "svc".into(),
            roles: roles.to_vec(),
            publish: patterns(publish),
            consume: patterns(consume),
        }
    }

    #[test]
    fn roles_and_grants_decide_publish_and_subscribe() {
        let producer = principal(&[Role::Producer], Some(&["orders.>"]), None);
        assert!(producer.may_publish("orders.eu").is_ok());
        assert_eq!(
            producer.may_publish("payments.eu").unwrap_err().reason,
            DenyReason::Topic
        );
        let pattern = Pattern::parse("orders.>").unwrap();
        assert_eq!(
            producer.may_subscribe(&pattern).unwrap_err().reason,
            DenyReason::Role
        );

        let consumer = principal(&[Role::Consumer], None, Some(&["orders.*"]));
        assert!(
            consumer
                .may_subscribe(&Pattern::parse("orders.eu").unwrap())
                .is_ok()
        );
        assert!(
            consumer
                .may_subscribe(&Pattern::parse("orders.*").unwrap())
                .is_ok()
        );
        let wider = consumer
            .may_subscribe(&Pattern::parse("orders.>").unwrap())
            .unwrap_err();
        assert_eq!(wider.reason, DenyReason::Topic);
        assert!(consumer.may_subscribe(&Pattern::parse(">").unwrap()).is_err());
        assert!(consumer.may_consume("orders.eu").is_ok());
        assert!(consumer.may_consume("orders.eu.x").is_err());
        assert_eq!(
            consumer.may_publish("orders.eu").unwrap_err().reason,
            DenyReason::Role
        );
    }

    #[test]
    fn dead_letter_queues_are_written_by_the_broker_and_read_by_admins() {
        let admin = Principal::admin("root");
        assert_eq!(
            admin.may_publish("jobs.dlq").unwrap_err().reason,
            DenyReason::DeadLetterQueue
        );
        assert!(admin.may_subscribe(&Pattern::parse("jobs.dlq").unwrap()).is_ok());
        let open = principal(&[Role::Producer, Role::Consumer], None, None);
        assert!(open.may_publish("jobs").is_ok());
        assert!(open.may_publish("jobs.dlq").is_err());
        assert!(open.may_subscribe(&Pattern::parse("jobs.dlq").unwrap()).is_err());
    }

    #[test]
    fn durable_subscriptions_belong_to_their_creator() {
        let svc = principal(&[Role::Consumer], None, None);
        assert!(svc.may_use_durable("w", Some("svc")).is_ok());
        assert_eq!(
            svc.may_use_durable("w", Some("other")).unwrap_err().reason,
            DenyReason::Owner
        );
        assert!(svc.may_use_durable("w", None).is_err());
        assert!(Principal::admin("root").may_use_durable("w", Some("svc")).is_ok());
    }
}
