//! Fuzzes the safetensors header reader (every input, as a whole file) and the
//! `model.safetensors.index.json` reader (every input that is UTF-8).
#![no_main]

use kvformats::safetensors_header::{read_header, shard_names_from_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_header(data, "fuzz.safetensors") {
        Ok(h) => {
            assert_eq!(h.data_start + h.data_len, data.len() as u64);
            let mut covered = 0u64;
            for t in &h.tensors {
                // Every accepted range is inside the file and exactly the shape's size.
                let bytes = h.tensor_data(data, t, "fuzz.safetensors").expect("an accepted tensor has its bytes");
                assert_eq!(bytes.len() as u64, t.end - t.begin);
                assert_eq!(t.n_elements().checked_mul(t.dtype.bits()), Some(8 * (t.end - t.begin)));
                assert_eq!(h.tensor(&t.name), Some(t));
                covered += t.end - t.begin;
            }
            assert_eq!(covered, h.data_len);
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.safetensors: "), "{e}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(names) = shard_names_from_json(text, "index.json") {
            assert!(names.windows(2).all(|w| w[0] < w[1]));
            assert!(names.iter().all(|n| !n.contains('/') && !n.contains("..")));
        }
    }
});
