//! The PROXY protocol parser (v1 text and v2 binary): a header, `Truncated`, or a refusal;
//! never a panic, never a length past the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::pipeline::proxy_protocol::{self, V2_FIXED};

fuzz_target!(|data: &[u8]| {
    if let Ok((_, len)) = proxy_protocol::parse(data) {
        assert!(len <= data.len());
    }
    let _ = proxy_protocol::parse_v1(data);
    if data.len() >= V2_FIXED {
        let mut fixed = [0u8; V2_FIXED];
        fixed.copy_from_slice(&data[..V2_FIXED]);
        if let Ok(len) = proxy_protocol::v2_length(&fixed) {
            if let Some(body) = data.get(V2_FIXED..V2_FIXED + len) {
                let _ = proxy_protocol::parse_v2(&fixed, body);
            }
        }
    }
});
