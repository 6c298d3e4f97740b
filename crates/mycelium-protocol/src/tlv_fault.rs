//! Stable detail codes for [`ErrorCode::InvalidTlv`](crate::ErrorCode::InvalidTlv): which
//! validation rule a TLV payload broke.

use mycelium_codec::CodecError;

/// Which codec rule failed. Append-only, like the error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
#[allow(missing_docs)]
#[non_exhaustive]
pub enum TlvFault {
    Other = 0,
    UnexpectedEof = 1,
    BadMagic = 2,
    UnsupportedVersion = 3,
    UnknownDomain = 4,
    PayloadSizeMismatch = 5,
    ChecksumMismatch = 6,
    InvalidTlvType = 7,
    BadExtendedMarker = 8,
    TlvOverrun = 9,
    WrongDomain = 10,
    WrongSize = 11,
}

impl From<&CodecError> for TlvFault {
    fn from(error: &CodecError) -> Self {
        match error {
            CodecError::UnexpectedEof { .. } => TlvFault::UnexpectedEof,
            CodecError::BadMagic { .. } => TlvFault::BadMagic,
            CodecError::UnsupportedVersion { .. } => TlvFault::UnsupportedVersion,
            CodecError::UnknownDomain { .. } => TlvFault::UnknownDomain,
            CodecError::PayloadSizeMismatch { .. } => TlvFault::PayloadSizeMismatch,
            CodecError::ChecksumMismatch { .. } => TlvFault::ChecksumMismatch,
            CodecError::InvalidTlvType { .. } => TlvFault::InvalidTlvType,
            CodecError::BadExtendedMarker { .. } => TlvFault::BadExtendedMarker,
            CodecError::TlvOverrun { .. } => TlvFault::TlvOverrun,
            CodecError::WrongDomain { .. } => TlvFault::WrongDomain,
            CodecError::WrongSize { .. } => TlvFault::WrongSize,
            _ => TlvFault::Other,
        }
    }
}
