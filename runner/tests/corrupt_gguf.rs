//! The real SmolLM2 GGUF, damaged on purpose: truncated at 20 offsets and with a byte flipped at 20
//! structural places of its header and tensor table. Every `kvbench generate` on a damaged copy
//! must exit with a message and a non-zero code: no panic, no death by signal, no silent success.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cached SmolLM2 GGUF (`scripts/test.sh` fetches it before the tests), found through
/// `kvbench model list`.
fn smollm2_gguf() -> PathBuf {
    let o = Command::new(env!("CARGO_BIN_EXE_kvbench")).args(["model", "list"]).output().expect("run kvbench");
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("smollm2-135m") && l.trim_end().ends_with(".gguf"))
        .unwrap_or_else(|| panic!("smollm2-135m is not cached; run `kvbench model fetch smollm2-135m` first:\n{text}"));
    PathBuf::from(line.split_whitespace().last().unwrap())
}

/// Byte positions of structural fields in a GGUF (little-endian, v2/v3), found by walking it with
/// a parser written for this test only (independent of `kvformats::gguf`).
#[derive(Debug, Default)]
struct Layout {
    /// (position, what) of fields whose change the reader must notice.
    fields: Vec<(usize, String)>,
    /// Where the tensor table starts and ends.
    table: (usize, usize),
}

fn walk(b: &[u8]) -> Layout {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let mut l = Layout::default();
    l.fields.push((0, "magic".into()));
    l.fields.push((4, "version".into()));
    l.fields.push((8, "tensor count".into()));
    l.fields.push((16, "metadata count".into()));
    let n_tensors = u64_at(8);
    let n_kv = u64_at(16);
    let mut p = 24;
    // Skips one value of type `t` at `p`, returning the position after it.
    fn skip(b: &[u8], t: u32, p: usize, fields: &mut Vec<(usize, String)>, key: &str) -> usize {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match t {
            0 | 1 | 7 => p + 1,
            2 | 3 => p + 2,
            4..=6 => p + 4,
            10..=12 => p + 8,
            8 => p + 8 + u64_at(p),
            9 => {
                let et = u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
                let n = u64_at(p + 4);
                fields.push((p, format!("element type of {key}")));
                fields.push((p + 4, format!("element count of {key}")));
                let mut q = p + 12;
                for _ in 0..n {
                    q = skip(b, et, q, &mut Vec::new(), key);
                }
                q
            }
            _ => panic!("unknown metadata type {t} at {p}"),
        }
    }
    for _ in 0..n_kv {
        let klen = u64_at(p);
        let key = String::from_utf8_lossy(&b[p + 8..p + 8 + klen]).into_owned();
        l.fields.push((p, format!("key length of {key}")));
        l.fields.push((p + 8, format!("first key byte of {key}")));
        let tpos = p + 8 + klen;
        l.fields.push((tpos, format!("value type of {key}")));
        p = skip(b, u32_at(tpos), tpos + 4, &mut l.fields, &key);
    }
    l.table.0 = p;
    for _ in 0..n_tensors {
        let nlen = u64_at(p);
        let name = String::from_utf8_lossy(&b[p + 8..p + 8 + nlen]).into_owned();
        l.fields.push((p, format!("name length of tensor {name}")));
        l.fields.push((p + 8 + nlen / 2, format!("a name byte of tensor {name}")));
        let q = p + 8 + nlen;
        let n_dims = u32_at(q) as usize;
        l.fields.push((q, format!("dimension count of tensor {name}")));
        for d in 0..n_dims {
            l.fields.push((q + 4 + 8 * d, format!("dimension {d} of tensor {name}")));
        }
        let t = q + 4 + 8 * n_dims;
        l.fields.push((t, format!("type of tensor {name}")));
        l.fields.push((t + 4, format!("offset (low byte) of tensor {name}")));
        l.fields.push((t + 4 + 2, format!("offset (third byte) of tensor {name}")));
        p = t + 12;
    }
    l.table.1 = p;
    l
}

/// Runs `kvbench generate` on `model`; asserts a clean failure and returns its message.
fn assert_clean_failure(model: &Path, what: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu", "--threads", "1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run kvbench");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code();
    assert!(code.is_some(), "{what}: kvbench died by a signal ({:?}); stderr:\n{err}", o.status);
    assert_ne!(code, Some(0), "{what}: kvbench accepted the damaged file; stdout:\n{}", String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains("panicked"), "{what}: kvbench panicked:\n{err}");
    assert!(err.contains("error") && err.contains(&*model.to_string_lossy()), "{what}: the message does not name the file; stderr:\n{err}");
    err.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A deterministic spread of `n` positions in `lo..hi`.
fn spread(lo: usize, hi: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + ((x >> 33) as usize) % (hi - lo)
        })
        .collect()
}

#[test]
fn damaged_smollm2_ggufs_fail_cleanly() {
    let original = std::fs::read(smollm2_gguf()).unwrap();
    let layout = walk(&original);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("damaged.gguf");

    // 20 truncations: 4 in the metadata, 4 in the tensor table, 12 in the tensor data (the last
    // one byte short of the end), from the longest to the shortest on one copy.
    let mut cuts = spread(24, layout.table.0, 4, 1);
    cuts.extend(spread(layout.table.0, layout.table.1, 4, 2));
    cuts.extend(spread(layout.table.1, original.len() - 1, 11, 3));
    cuts.push(original.len() - 1);
    cuts.sort_unstable_by(|a, b| b.cmp(a));
    cuts.dedup();
    assert_eq!(cuts.len(), 20);
    std::fs::write(&path, &original).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for &cut in &cuts {
        f.set_len(cut as u64).unwrap();
        let msg = assert_clean_failure(&path, &format!("truncated at byte {cut} of {}", original.len()));
        eprintln!("truncated at {cut}: {msg}");
    }
    drop(f);

    // 20 flips (XOR 0xff): the four header fields, then fields of the metadata and the tensor
    // table spread over the whole list.
    let fields = &layout.fields;
    let mut chosen: Vec<&(usize, String)> = fields.iter().take(4).collect();
    let meta: Vec<_> = fields.iter().skip(4).filter(|(p, _)| *p < layout.table.0).collect();
    let table: Vec<_> = fields.iter().filter(|(p, _)| *p >= layout.table.0).collect();
    for i in 0..6 {
        chosen.push(meta[i * meta.len() / 6]);
    }
    for i in 0..10 {
        chosen.push(table[i * table.len() / 10]);
    }
    assert_eq!(chosen.len(), 20);
    use std::os::unix::fs::FileExt;
    std::fs::write(&path, &original).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (pos, what) in chosen {
        f.write_all_at(&[original[*pos] ^ 0xff], *pos as u64).unwrap();
        let msg = assert_clean_failure(&path, &format!("byte {pos} ({what}) flipped"));
        eprintln!("flipped byte {pos} ({what}): {msg}");
        f.write_all_at(&[original[*pos]], *pos as u64).unwrap();
    }
}
