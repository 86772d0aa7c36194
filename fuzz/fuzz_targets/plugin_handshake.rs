//! Fuzzes the external-plugin handshake reader: bytes 0..4 are the plugin's ABI version, 4..8 its
//! method count, and the rest its C strings separated by NUL (a lone 0xFF byte stands for a null
//! pointer): kvcore version, libtorch version, then five method-info fields per method.
#![no_main]

use kvformats::plugin_header::{c_text, check_handshake, method_info, parse_params, Expected, HandshakeError};
use libfuzzer_sys::fuzz_target;

const HOST: Expected<'static> = Expected { abi_version: 1, kvcore_version: "0.1.0", libtorch_version: "2.13.0" };

fuzz_target!(|data: &[u8]| {
    let (Some(abi), Some(n), Some(rest)) = (data.get(0..4), data.get(4..8), data.get(8..)) else { return };
    let abi = u32::from_le_bytes([abi[0], abi[1], abi[2], abi[3]]);
    let n_methods = u32::from_le_bytes([n[0], n[1], n[2], n[3]]);
    let strings: Vec<Option<&[u8]>> = rest.split(|&b| b == 0).map(|s| if s == [0xff] { None } else { Some(s) }).collect();
    let field = |i: usize| strings.get(i).copied().flatten();
    for s in &strings {
        assert!(!c_text(*s).contains('\0'));
    }
    match check_handshake(abi, field(0), field(1), n_methods, &HOST) {
        Ok(()) => {
            // The host asks for every declared method; fields past the input are null.
            let asked = (n_methods as usize).min(strings.len() / 5 + 1);
            for i in 0..asked {
                let f = |k: usize| field(2 + 5 * i + k);
                match method_info(i as u32, [f(0), f(1), f(2), f(3), f(4)]) {
                    Ok(m) => assert!(!m.name.is_empty()),
                    Err(e) => assert!(matches!(e, HandshakeError::Malformed(_))),
                }
            }
        }
        Err(HandshakeError::Incompatible { field, .. }) => assert!(field.ends_with("version")),
        Err(HandshakeError::Malformed(m)) => assert!(m.contains("methods")),
    }
    for s in &strings {
        let _ = parse_params(&c_text(*s));
    }
});
