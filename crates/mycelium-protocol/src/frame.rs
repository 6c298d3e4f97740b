//! The frame header, the kind table, and decode/encode dispatch.

use bytes::{BufMut, BytesMut};

use crate::ack::{Ack, Nack, Term};
use crate::deliver::Deliver;
use crate::handshake::{Hello, Welcome};
use crate::publish::{Publish, PublishBatch, PublishOk};
use crate::stats::StatsSnapshot;
use crate::subscribe::{Subscribe, SubscriptionRef};
use crate::wire::Reader;
use crate::{ErrorFrame, ProtocolError};

/// Bytes of the length prefix.
pub const LENGTH_LEN: usize = 4;
/// Bytes of the whole frame header: length, kind, flags, request id.
pub const FRAME_HEADER_LEN: usize = 10;
/// Default limit on one frame (length prefix included): 16 MiB.
pub const DEFAULT_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

macro_rules! kinds {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal,)*) => {
        /// Frame kinds. Append-only: a retired kind stays reserved.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind {
            $($(#[doc = $doc])* $name = $value,)*
        }

        impl Kind {
            /// The kind for a wire byte.
            ///
            /// # Errors
            /// [`ProtocolError::UnknownKind`].
            pub fn from_u8(kind: u8) -> Result<Kind, ProtocolError> {
                match kind {
                    $($value => Ok(Kind::$name),)*
                    _ => Err(ProtocolError::UnknownKind { kind }),
                }
            }

            /// The frame's name as the docs write it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Kind::$name => stringify!($name),)*
                }
            }
        }
    };
}

kinds! {
    /// Client -> server: first frame, version range and name.
    Hello = 0x01,
    /// Server -> client: the chosen version and limits.
    Welcome = 0x02,
    /// Either way: liveness probe.
    Ping = 0x03,
    /// Answer to PING.
    Pong = 0x04,
    /// Server -> client: a request failed, or the connection is being closed.
    Error = 0x05,
    /// Client -> server: one message.
    Publish = 0x10,
    /// Client -> server: many messages in one frame.
    PublishBatch = 0x11,
    /// Server -> client: publisher confirm.
    PublishOk = 0x12,
    /// Client -> server: subscribe to a pattern.
    Subscribe = 0x20,
    /// Server -> client: the subscription's id.
    SubscribeOk = 0x21,
    /// Client -> server: end a subscription.
    Unsubscribe = 0x22,
    /// Server -> client: the subscription is gone; nothing more is delivered for it.
    UnsubscribeOk = 0x23,
    /// Server -> client: a message for a subscription.
    Deliver = 0x30,
    /// Client -> server: a delivery is done.
    Ack = 0x40,
    /// Client -> server: a delivery failed; redeliver after a delay.
    Nack = 0x41,
    /// Client -> server: still working on a delivery; extend its deadline.
    InProgress = 0x42,
    /// Client -> server: give up on a delivery; dead-letter it.
    Term = 0x43,
    /// Server -> client: an ACK sent with a request id is durable.
    AckOk = 0x44,
    /// Client -> server: ask for statistics.
    Stats = 0x50,
    /// Server -> client: statistics.
    StatsOk = 0x51,
    /// Client -> server: an administrative request (JSON body; see docs/PROTOCOL.md).
    Admin = 0x60,
    /// Server -> client: the answer to ADMIN (JSON body).
    AdminOk = 0x61,
}

/// One decoded frame, borrowing from the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    Welcome(Welcome<'a>),
    Ping,
    Pong,
    Error(ErrorFrame<'a>),
    Publish(Publish<'a>),
    PublishBatch(PublishBatch<'a>),
    PublishOk(PublishOk),
    Subscribe(Subscribe<'a>),
    SubscribeOk(SubscriptionRef),
    Unsubscribe(SubscriptionRef),
    UnsubscribeOk(SubscriptionRef),
    Deliver(Deliver<'a>),
    Ack(Ack),
    Nack(Nack<'a>),
    InProgress(Ack),
    Term(Term<'a>),
    AckOk(Ack),
    Stats,
    StatsOk(StatsSnapshot),
    Admin(&'a [u8]),
    AdminOk(&'a [u8]),
}

impl Frame<'_> {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Welcome(_) => Kind::Welcome,
            Frame::Ping => Kind::Ping,
            Frame::Pong => Kind::Pong,
            Frame::Error(_) => Kind::Error,
            Frame::Publish(_) => Kind::Publish,
            Frame::PublishBatch(_) => Kind::PublishBatch,
            Frame::PublishOk(_) => Kind::PublishOk,
            Frame::Subscribe(_) => Kind::Subscribe,
            Frame::SubscribeOk(_) => Kind::SubscribeOk,
            Frame::Unsubscribe(_) => Kind::Unsubscribe,
            Frame::UnsubscribeOk(_) => Kind::UnsubscribeOk,
            Frame::Deliver(_) => Kind::Deliver,
            Frame::Ack(_) => Kind::Ack,
            Frame::Nack(_) => Kind::Nack,
            Frame::InProgress(_) => Kind::InProgress,
            Frame::Term(_) => Kind::Term,
            Frame::AckOk(_) => Kind::AckOk,
            Frame::Stats => Kind::Stats,
            Frame::StatsOk(_) => Kind::StatsOk,
            Frame::Admin(_) => Kind::Admin,
            Frame::AdminOk(_) => Kind::AdminOk,
        }
    }
}

/// A decoded frame and the request id it carries (0: none).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'a> {
    /// The request id; replies carry the id of the request they answer.
    pub request_id: u32,
    /// The frame.
    pub frame: Frame<'a>,
}

/// Length of the first frame in `buf`, once its length prefix is there.
///
/// Check -> parse -> advance: `Ok(None)` means "need more bytes", not an error. The length is
/// checked against `frame_bytes_max` before the caller allocates or waits for the body.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`], [`ProtocolError::FrameTooShort`].
#[inline]
pub fn frame_len(buf: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_LEN>() else {
        return Ok(None);
    };
    let total = u32::from_le_bytes(*prefix) as usize + LENGTH_LEN;
    if total > frame_bytes_max {
        return Err(ProtocolError::FrameTooLarge {
            len: total,
            max: frame_bytes_max,
        });
    }
    if total < FRAME_HEADER_LEN {
        return Err(ProtocolError::FrameTooShort {
            len: total,
            min: FRAME_HEADER_LEN,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// The whole frames of `buf`, in order (a trailing partial frame is left out; a malformed frame
/// is the last item).
pub fn frames(buf: &[u8]) -> Frames<'_> {
    Frames { rest: buf }
}

/// Iterator of [`frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Decoded<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        match decode(self.rest, usize::MAX) {
            Ok(Some((decoded, used))) => {
                self.rest = &self.rest[used..];
                Some(Ok(decoded))
            }
            Ok(None) => None,
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

/// Decodes the first frame of `buf`; returns it and the bytes it used, or `None` when `buf` does
/// not yet hold a whole frame.
///
/// # Errors
/// Any [`ProtocolError`]: the frame is malformed and the stream cannot be trusted past it.
#[inline]
pub fn decode(buf: &[u8], frame_bytes_max: usize) -> Result<Option<(Decoded<'_>, usize)>, ProtocolError> {
    let Some(total) = frame_len(buf, frame_bytes_max)? else {
        return Ok(None);
    };
    let frame = &buf[..total];
    let kind = Kind::from_u8(frame[4])?;
    let flags = frame[5];
    let request_id = u32::from_le_bytes([frame[6], frame[7], frame[8], frame[9]]);
    let mut body = Reader::new(&frame[FRAME_HEADER_LEN..]);
    let frame = match kind {
        Kind::Hello => Frame::Hello(Hello::decode(&mut body)?),
        Kind::Welcome => Frame::Welcome(Welcome::decode(&mut body)?),
        Kind::Ping => empty(&body, Frame::Ping, "PING")?,
        Kind::Pong => empty(&body, Frame::Pong, "PONG")?,
        Kind::Error => Frame::Error(ErrorFrame::decode(&mut body)?),
        Kind::Publish => Frame::Publish(Publish::decode(flags, &mut body)?),
        Kind::PublishBatch => Frame::PublishBatch(PublishBatch::decode(&mut body)?),
        Kind::PublishOk => Frame::PublishOk(PublishOk::decode(flags, &mut body)?),
        Kind::Subscribe => Frame::Subscribe(Subscribe::decode(flags, &mut body)?),
        Kind::SubscribeOk => Frame::SubscribeOk(SubscriptionRef::decode(&mut body, "SUBSCRIBE_OK")?),
        Kind::Unsubscribe => Frame::Unsubscribe(SubscriptionRef::decode(&mut body, "UNSUBSCRIBE")?),
        Kind::UnsubscribeOk => Frame::UnsubscribeOk(SubscriptionRef::decode(&mut body, "UNSUBSCRIBE_OK")?),
        Kind::Deliver => Frame::Deliver(Deliver::decode(flags, &mut body)?),
        Kind::Ack => Frame::Ack(Ack::decode(&mut body, "ACK")?),
        Kind::Nack => Frame::Nack(Nack::decode(&mut body)?),
        Kind::InProgress => Frame::InProgress(Ack::decode(&mut body, "IN_PROGRESS")?),
        Kind::Term => Frame::Term(Term::decode(&mut body)?),
        Kind::AckOk => Frame::AckOk(Ack::decode(&mut body, "ACK_OK")?),
        Kind::Admin => Frame::Admin(body.rest()),
        Kind::AdminOk => Frame::AdminOk(body.rest()),
        Kind::Stats => empty(&body, Frame::Stats, "STATS")?,
        Kind::StatsOk => Frame::StatsOk(StatsSnapshot::decode(&mut body)?),
    };
    Ok(Some((Decoded { request_id, frame }, total)))
}

fn empty<'a>(body: &Reader<'_>, frame: Frame<'a>, name: &'static str) -> Result<Frame<'a>, ProtocolError> {
    body.finish(name)?;
    Ok(frame)
}

/// Appends `frame` to `buf`.
///
/// # Errors
/// [`ProtocolError::FieldTooLong`] when a field does not fit its length prefix; `buf` is left as
/// it was.
pub fn encode(buf: &mut BytesMut, request_id: u32, frame: &Frame<'_>) -> Result<(), ProtocolError> {
    let start = buf.len();
    let result = encode_inner(buf, request_id, frame);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn encode_inner(buf: &mut BytesMut, request_id: u32, frame: &Frame<'_>) -> Result<(), ProtocolError> {
    let flags = match frame {
        Frame::Publish(p) => p.flags(),
        Frame::PublishOk(p) => p.flags(),
        Frame::Subscribe(s) => s.flags(),
        Frame::Deliver(d) => d.flags(),
        _ => 0,
    };
    let start = begin(buf, frame.kind(), flags, request_id);
    match frame {
        Frame::Hello(f) => f.encode_body(buf)?,
        Frame::Welcome(f) => f.encode_body(buf)?,
        Frame::Ping | Frame::Pong | Frame::Stats => {}
        Frame::Error(f) => f.encode_body(buf)?,
        Frame::Publish(f) => f.encode_body(buf)?,
        Frame::PublishBatch(f) => f.encode_body(buf),
        Frame::PublishOk(f) => f.encode_body(buf),
        Frame::Subscribe(f) => f.encode_body(buf)?,
        Frame::SubscribeOk(f) | Frame::Unsubscribe(f) | Frame::UnsubscribeOk(f) => f.encode_body(buf),
        Frame::Deliver(f) => f.encode_body(buf)?,
        Frame::Ack(f) | Frame::InProgress(f) | Frame::AckOk(f) => f.encode_body(buf),
        Frame::Admin(body) | Frame::AdminOk(body) => buf.extend_from_slice(body),
        Frame::Nack(f) => f.encode_body(buf)?,
        Frame::Term(f) => f.encode_body(buf)?,
        Frame::StatsOk(f) => f.encode_body(buf)?,
    }
    end(buf, start)
}

/// Writes a frame header with a placeholder length; returns where the frame starts. Pair with
/// [`end`]. Used directly by hot paths that write a body without building a [`Frame`].
#[inline]
pub fn begin(buf: &mut BytesMut, kind: Kind, flags: u8, request_id: u32) -> usize {
    let start = buf.len();
    buf.put_u32_le(0);
    buf.put_u8(kind as u8);
    buf.put_u8(flags);
    buf.put_u32_le(request_id);
    start
}

/// Patches the length of the frame that [`begin`] started at `start`.
///
/// # Errors
/// [`ProtocolError::FieldTooLong`] if the frame exceeds `u32::MAX` bytes.
#[inline]
pub fn end(buf: &mut BytesMut, start: usize) -> Result<(), ProtocolError> {
    let len = buf.len() - start - LENGTH_LEN;
    let len32 = u32::try_from(len).map_err(|_| ProtocolError::FieldTooLong {
        field: "frame",
        len,
        max: u32::MAX as usize,
    })?;
    buf[start..start + LENGTH_LEN].copy_from_slice(&len32.to_le_bytes());
    Ok(())
}
