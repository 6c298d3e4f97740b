//! HELLO / WELCOME: version negotiation, names, limits.

use bytes::{BufMut, BytesMut};

use crate::ProtocolError;
use crate::wire::{Reader, put_bytes16, put_str8};

/// The protocol versions this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest version this crate accepts.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// `HELLO`: `version_min u16 | version_max u16 | client_name str8 | token bytes16`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Oldest version the client speaks.
    pub version_min: u16,
    /// Newest version the client speaks.
    pub version_max: u16,
    /// Free-form name shown in stats and logs.
    pub client_name: &'a str,
    /// Credentials (a JWT) when the server requires them; empty otherwise.
    pub token: &'a [u8],
}

impl<'a> Hello<'a> {
    pub(crate) fn decode(body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let hello = Hello {
            version_min: body.u16("version_min")?,
            version_max: body.u16("version_max")?,
            client_name: body.str8("client_name")?,
            token: body.bytes16("token")?,
        };
        body.finish("HELLO")?;
        Ok(hello)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        buf.put_u16_le(self.version_min);
        buf.put_u16_le(self.version_max);
        put_str8(buf, self.client_name, "client_name")?;
        put_bytes16(buf, self.token, "token")
    }

    /// The version both sides speak, if any: the newest in the overlap of the two ranges.
    pub fn negotiate(&self) -> Option<u16> {
        let high = self.version_max.min(PROTOCOL_VERSION);
        let low = self.version_min.max(PROTOCOL_VERSION_MIN);
        (low <= high).then_some(high)
    }
}

/// `WELCOME`: `version u16 | connection_id u64 | frame_bytes_max u32 | server_name str8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome<'a> {
    /// The version chosen for this connection.
    pub version: u16,
    /// The server's id for this connection (shown in stats).
    pub connection_id: u64,
    /// The largest frame the server accepts.
    pub frame_bytes_max: u32,
    /// The server's name and version.
    pub server_name: &'a str,
}

impl<'a> Welcome<'a> {
    pub(crate) fn decode(body: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let welcome = Welcome {
            version: body.u16("version")?,
            connection_id: body.u64("connection_id")?,
            frame_bytes_max: body.u32("frame_bytes_max")?,
            server_name: body.str8("server_name")?,
        };
        body.finish("WELCOME")?;
        Ok(welcome)
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        buf.put_u16_le(self.version);
        buf.put_u64_le(self.connection_id);
        buf.put_u32_le(self.frame_bytes_max);
        put_str8(buf, self.server_name, "server_name")
    }
}
