//! Arbitrary frontend frame bodies through the seams (Query, Parse, Close,
//! FunctionCall, Sync) and arbitrary backend bodies: no panic on any input.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pgward::policy::{Policy, PolicyConfig, SessionScope};
use pgward::proxy::seams::SessionSeams;

fuzz_target!(|data: &[u8]| {
    let policy = Policy::from_config(&PolicyConfig::default()).expect("policy");
    let policy = Arc::new(arc_swap::ArcSwap::from_pointee(policy));
    let mut seams = SessionSeams::new(policy, SessionScope::default(), 1);
    seams.startup_complete();
    for chunk in data.split(|&b| b == 0xff) {
        let Some((&tag, body)) = chunk.split_first() else {
            continue;
        };
        let frontend = [b'Q', b'P', b'C', b'F', b'S'];
        let backend = [b'C', b'E', b'Z', b'S'];
        if tag & 0x80 == 0 {
            let _ = seams.on_frontend(frontend[tag as usize % frontend.len()], body);
        } else {
            let _ = seams.on_backend(backend[tag as usize % backend.len()], body);
        }
    }
});
