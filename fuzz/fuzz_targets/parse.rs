//! Fuzzes the parser: arbitrary bytes must never panic or read out of bounds, and every message
//! that validates must rebuild to exactly the same bytes (the builder and the parser agree).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycelium_codec::{Message, MessageBuilder, RelayDomain, validate, validate_structure};

fuzz_target!(|data: &[u8]| {
    let _ = validate_structure(data);
    if let Ok((first, _rest)) = Message::split_first(data) {
        for tlv in first.tlvs() {
            if tlv.is_err() {
                break;
            }
        }
    }
    let Ok(message) = validate(data) else { return };
    let domain: RelayDomain = message.relay_domain().expect("validated");
    let mut rebuilt = Vec::with_capacity(data.len());
    let mut builder = MessageBuilder::new(&mut rebuilt, domain, message.source())
        .flags(message.flags())
        .sequence(message.sequence())
        .timestamp_ns(message.timestamp_ns())
        .payload_bytes_max(u32::MAX as usize);
    let mut standard_form = true;
    for tlv in message.tlvs() {
        let tlv = tlv.expect("validated");
        // An extended record may carry a short value; the builder always picks the short form,
        // so only messages written in the canonical form must come back byte for byte.
        let header_len = if data[tlv.offset] == 255 { 5 } else { 2 };
        standard_form &= (header_len == 5) == (tlv.value.len() > 255);
        builder.add_tlv(tlv.tlv_type, tlv.value).expect("validated record is accepted by the builder");
    }
    builder.finish();
    if standard_form {
        assert_eq!(rebuilt, data, "validated message does not rebuild to the same bytes");
    }
});
