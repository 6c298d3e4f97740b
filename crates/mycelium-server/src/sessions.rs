//! The credentials native connections authenticated with, kept for as long as each connection
//! lives, so that a reload that changes `[auth]` can check every open connection again: a
//! connection whose credential no longer gives the principal it was admitted as (a user removed,
//! a token or key replaced, its grants changed) is closed with `NotAuthenticated` and connects
//! again under the new rules. (The HTTP door checks every request, so it needs nothing here.)

use std::collections::HashMap;
use std::sync::Arc;

use mycelium_broker::{Outbound, Principal};
use mycelium_protocol::{ErrorCode, ErrorFrame, Frame, encode};
use parking_lot::Mutex;

/// What a connection presented at HELLO.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credential {
    pub(crate) token: Vec<u8>,
    pub(crate) uid: Option<u32>,
    pub(crate) common_name: Option<String>,
}

#[derive(Debug)]
struct Session {
    credential: Credential,
    principal: Principal,
    outbound: Arc<Outbound>,
}

/// Every authenticated native connection, by connection id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<u64, Session>>,
}

impl Sessions {
    /// Records a connection admitted as `principal`.
    pub(crate) fn admit(
        &self,
        id: u64,
        credential: Credential,
        principal: Principal,
        outbound: Arc<Outbound>,
    ) {
        self.open.lock().insert(
            id,
            Session {
                credential,
                principal,
                outbound,
            },
        );
    }

    /// Forgets a connection that ended.
    pub(crate) fn leave(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    /// Checks every open connection's credential with `auth`; closes those it no longer admits
    /// as the same principal. Returns how many were closed.
    pub(crate) fn revalidate(&self, auth: &mycelium_auth::Authenticator) -> usize {
        let mut open = self.open.lock();
        let mut closed = Vec::new();
        for (id, session) in open.iter() {
            let c = &session.credential;
            let peer = mycelium_auth::Peer {
                uid: c.uid,
                common_name: c.common_name.as_deref(),
            };
            let why = match auth.connection(&c.token, &peer) {
                Ok(principal) if principal == session.principal => continue,
                Ok(principal) => format!(
                    "the credential now names `{}` with other grants than `{}` had",
                    principal.name, session.principal.name
                ),
                Err(error) => error.to_string(),
            };
            let text =
                format!("credentials no longer accepted after a configuration reload ({why}); connect again");
            tracing::info!(connection = id, principal = %session.principal.name, %why, "closing a connection whose credentials changed");
            session.outbound.append_final(|buf| {
                let _ = encode(
                    buf,
                    0,
                    &Frame::Error(ErrorFrame::new(ErrorCode::NotAuthenticated, &text)),
                );
            });
            session.outbound.close();
            closed.push(*id);
        }
        for id in &closed {
            open.remove(id);
        }
        closed.len()
    }
}
