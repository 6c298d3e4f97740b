//! One client connection from arbitrary bytes: handshake (with the credential check), frame
//! decoding and dispatch against an in-process broker (`mycelium_server::harness`). The first
//! byte picks the peer (TCP, needing the token; or the broker's own uid on the Unix socket).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mycelium_server::harness::Harness;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(Harness::new);
    let answers = harness.serve(data);
    // Whatever came in, what goes out is whole frames.
    let mut rest = &answers[..];
    while !rest.is_empty() {
        let (_, used) = mycelium_protocol::decode(rest, usize::MAX)
            .expect("the broker's answers decode")
            .expect("no torn frame");
        rest = &rest[used..];
    }
});
