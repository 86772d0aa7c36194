//! The run-directory lock (`kvexperiment::lock`, `<out>/run.lock`): a second holder is refused
//! with the holder's pid, host and the lock file named; a lock left by a dead process on this
//! host is taken over; one from another host never is; separate directories (shards with their
//! own `--out`) do not meet; dropping the guard removes the file; and `kvbench run` on a locked
//! directory refuses before writing anything.

mod common;

use common::{config_tree, kvbench};
use kvexperiment::lock::{hostname, rfc3339_utc, RunLock, LOCK_FILE};
use std::path::Path;

fn write_lock(dir: &Path, pid: u32, host: &str) -> Vec<u8> {
    let text = serde_json::json!({ "pid": pid, "host": host, "started": "2025-01-02T03:04:05Z", "command": "kvbench run by hand" }).to_string();
    std::fs::write(dir.join(LOCK_FILE), &text).unwrap();
    text.into_bytes()
}

/// A pid that was alive a moment ago and is not now (a reaped child).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists after wait");
    pid
}

#[test]
fn a_second_holder_is_refused_and_the_lock_is_free_again_after_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let lock = RunLock::acquire(&dir).unwrap();
    let file = dir.join(LOCK_FILE);
    assert_eq!(lock.path(), file);
    assert!(file.is_file());

    // The file says who holds it.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["pid"].as_u64(), Some(u64::from(std::process::id())));
    let host = hostname();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        assert_eq!(host, h.trim());
    }
    assert_eq!(v["host"].as_str(), Some(host.as_str()));
    let started = v["started"].as_str().unwrap();
    assert!(started.len() == 20 && started.ends_with('Z') && started.as_bytes()[10] == b'T', "not RFC 3339 UTC: {started}");
    assert!(v["command"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(lock.holder().pid, std::process::id());

    let err = format!("{:#}", RunLock::acquire(&dir).unwrap_err());
    for needle in [&std::process::id().to_string(), &host, &file.display().to_string(), "run.lock", started] {
        assert!(err.contains(needle), "the refusal lacks {needle:?}: {err}");
    }
    assert!(file.is_file(), "a refused acquire leaves the holder's lock alone");

    drop(lock);
    assert!(!file.exists(), "dropping the guard removes the lock file");
    let again = RunLock::acquire(&dir).unwrap();
    assert!(file.is_file());
    drop(again);
    assert!(!file.exists());
}

#[test]
fn an_error_return_releases_the_lock() {
    fn fails(dir: &Path) -> anyhow::Result<()> {
        let _lock = RunLock::acquire(dir)?;
        anyhow::bail!("a cell failed")
    }
    let tmp = tempfile::tempdir().unwrap();
    assert!(fails(tmp.path()).is_err());
    assert!(!tmp.path().join(LOCK_FILE).exists(), "the lock outlived the error return");
    drop(RunLock::acquire(tmp.path()).unwrap());
}

#[test]
fn a_stale_lock_on_this_host_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let pid = dead_pid();
    write_lock(tmp.path(), pid, &hostname());
    let lock = RunLock::acquire(tmp.path()).expect("a dead holder's lock should be taken over");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(lock.path()).unwrap()).unwrap();
    assert_eq!(v["pid"].as_u64(), Some(u64::from(std::process::id())), "the lock file now names this process");
    drop(lock);
    assert!(!tmp.path().join(LOCK_FILE).exists());
}

#[test]
fn an_unreadable_lock_left_behind_is_taken_over() {
    // A run killed between creating the file and writing it leaves it empty.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(LOCK_FILE);
    let f = std::fs::File::create(&file).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).unwrap();
    drop(f);
    let lock = RunLock::acquire(tmp.path()).expect("an empty, old lock file should be taken over");
    assert_eq!(lock.holder().pid, std::process::id());
}

#[test]
fn a_lock_from_another_host_is_never_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    // Alive or dead makes no difference: this host cannot see the other's processes.
    for pid in [std::process::id(), dead_pid()] {
        let bytes = write_lock(tmp.path(), pid, "some-other-host");
        let file = tmp.path().join(LOCK_FILE);
        let err = format!("{:#}", RunLock::acquire(tmp.path()).unwrap_err());
        for needle in ["some-other-host", "another host", &pid.to_string(), &file.display().to_string(), "remove", "by hand"] {
            assert!(err.contains(needle), "the refusal lacks {needle:?}: {err}");
        }
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "the other host's lock must be left as it was");
    }
}

#[test]
fn shards_with_their_own_directories_both_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let (s0, s1) = (tmp.path().join("s0"), tmp.path().join("s1"));
    let a = RunLock::acquire(&s0).unwrap();
    let b = RunLock::acquire(&s1).unwrap();
    assert!(s0.join(LOCK_FILE).is_file() && s1.join(LOCK_FILE).is_file());
    drop(a);
    assert!(!s0.join(LOCK_FILE).exists() && s1.join(LOCK_FILE).is_file(), "each guard removes only its own lock");
    drop(b);
    assert!(!s1.join(LOCK_FILE).exists());
}

#[test]
fn of_racing_acquirers_exactly_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let barrier = std::sync::Barrier::new(8);
    let won: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    // Holding the winner's guard until every thread has tried.
                    let got = RunLock::acquire(&dir);
                    barrier.wait();
                    got.is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(won.iter().filter(|&&w| w).count(), 1, "{won:?}");
    assert!(!dir.join(LOCK_FILE).exists());
}

#[test]
fn rfc3339_utc_formats_seconds_since_the_epoch() {
    for (secs, text) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_709_251_199, "2024-02-29T23:59:59Z"),
        (1_735_689_600, "2025-01-01T00:00:00Z"),
        (4_102_444_800, "2100-01-01T00:00:00Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
    ] {
        assert_eq!(rfc3339_utc(secs), text, "{secs}");
    }
}

/// Needs the engine to take the lock (`RunLock::acquire` at the top of `run_cells`): a `kvbench
/// run --resume` on a directory another live process holds refuses, naming the lock, and writes
/// nothing.
#[test]
fn kvbench_run_on_a_locked_directory_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full"]);
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let bytes = write_lock(&out, std::process::id(), &hostname());
    let o = kvbench(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume", "--zero-measurements", "--no-report"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a run on a locked directory should be refused:\n{err}");
    assert!(err.contains("run.lock") && err.contains(&std::process::id().to_string()), "the refusal should name the lock and its holder:\n{err}");
    assert_eq!(std::fs::read(out.join(LOCK_FILE)).unwrap(), bytes, "the holder's lock is left alone");
    assert!(!out.join("run.json").exists() && !out.join("cells").read_dir().is_ok_and(|mut d| d.next().is_some()), "nothing should be written");
}
