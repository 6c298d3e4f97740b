//! Validation in levels. Each level is its own function, so a hot path can pay for exactly what it
//! needs:
//!
//! 1. [`validate_structure`]: magic, version, domain byte, `payload_size` matches the slice, and
//!    every TLV record lies inside the payload with a legal type byte.
//! 2. [`verify_checksum`]: CRC-32 over everything but the checksum field.
//! 3. [`validate_domain`]: every TLV type belongs to the header's domain or to the system/vendor
//!    ranges, and each type with a fixed layout has exactly its size.
//!
//! [`validate`] runs all three in one walk, checksum before the TLV walk, so corrupted bytes are
//! reported as [`CodecError::ChecksumMismatch`] rather than as whatever they happen to look like.

use crate::header::{MAGIC, VERSION, compute_checksum};
use crate::records::fixed_size;
use crate::{CodecError, Message, RelayDomain};

/// Level 1: the message is well formed.
///
/// # Errors
/// The first structural fault found: `UnexpectedEof`, `BadMagic`, `UnsupportedVersion`,
/// `UnknownDomain`, `PayloadSizeMismatch`, `InvalidTlvType`, `BadExtendedMarker`, `TlvOverrun`.
pub fn validate_structure(bytes: &[u8]) -> Result<Message<'_>, CodecError> {
    let message = validate_header(bytes)?;
    for tlv in message.tlvs() {
        tlv?;
    }
    Ok(message)
}

/// Level 2: the stored checksum matches the bytes.
///
/// # Errors
/// [`CodecError::ChecksumMismatch`].
#[inline]
pub fn verify_checksum(message: &Message<'_>) -> Result<(), CodecError> {
    let stored = message.checksum();
    let computed = compute_checksum(message.as_bytes());
    if stored == computed {
        Ok(())
    } else {
        Err(CodecError::ChecksumMismatch { stored, computed })
    }
}

/// Level 3: the TLV types fit the header's domain and the fixed layouts.
///
/// # Errors
/// `UnknownDomain`, `WrongDomain`, `WrongSize`, or a structural fault met while walking.
pub fn validate_domain(message: &Message<'_>) -> Result<(), CodecError> {
    let domain = message.relay_domain()?;
    for tlv in message.tlvs() {
        let tlv = tlv?;
        check_domain_rules(domain, tlv.tlv_type, tlv.value.len())?;
    }
    Ok(())
}

/// All three levels, in one walk over the TLVs.
///
/// # Errors
/// The first fault found; see the level functions.
#[inline]
pub fn validate(bytes: &[u8]) -> Result<Message<'_>, CodecError> {
    let message = validate_header(bytes)?;
    verify_checksum(&message)?;
    let domain = message.relay_domain()?;
    for tlv in message.tlvs() {
        let tlv = tlv?;
        check_domain_rules(domain, tlv.tlv_type, tlv.value.len())?;
    }
    Ok(message)
}

#[inline]
fn validate_header(bytes: &[u8]) -> Result<Message<'_>, CodecError> {
    let message = Message::new(bytes)?;
    let header = message.header();
    if header.magic.get() != MAGIC {
        return Err(CodecError::BadMagic {
            found: header.magic.get(),
        });
    }
    if header.version != VERSION {
        return Err(CodecError::UnsupportedVersion {
            found: header.version,
        });
    }
    RelayDomain::try_from(header.relay_domain)?;
    Ok(message)
}

/// The domain and size rule for one record; shared by the builder and the validators.
#[inline]
pub(crate) fn check_domain_rules(domain: RelayDomain, tlv_type: u8, length: usize) -> Result<(), CodecError> {
    if !domain.allows(tlv_type) {
        return Err(CodecError::WrongDomain { tlv_type, domain });
    }
    match fixed_size(tlv_type) {
        Some(expected) if expected != length => Err(CodecError::WrongSize {
            tlv_type,
            expected,
            found: length,
        }),
        _ => Ok(()),
    }
}
