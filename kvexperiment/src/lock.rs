//! A lock so only one `kvbench run` writes a run directory at a time: two runs on the same
//! `--out` would both append records to the same cells, so a run holds `<dir>/run.lock`.
//!
//! The lock file is JSON, `{"pid": .., "host": .., "started": "<RFC3339 UTC>", "command": ".."}`,
//! created with `O_EXCL` (`create_new`) so of two racing runs exactly one gets it. Another run
//! finding it refuses with an error naming the holder and the file. A lock whose holder is gone
//! (a run killed with SIGKILL: same host, its pid no longer alive) is taken over with a note on
//! stderr; a lock from another host is never taken over (this host cannot see that process), the
//! error says how to remove it by hand. The lock is per directory, so shards with their own
//! `--out` do not meet. [`RunLock`] is a guard: dropping it (normal end, an error return, a panic
//! unwinding) removes the file.
//!
//! Readers of run directories (`kvbench report`, `kvbench merge`) look only at `run.json` and
//! `cells/`, so a leftover `run.lock` does not disturb them.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// How long an unreadable lock file (a holder killed between creating and writing it, or one
/// still writing) is waited on before it is treated as stale.
const UNREADABLE_GRACE: Duration = Duration::from_secs(2);

/// Who holds (or held) a run directory's lock: the contents of `run.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    /// RFC 3339, UTC (`2025-01-31T12:00:00Z`).
    pub started: String,
    /// The holder's command line, its arguments joined by spaces.
    pub command: String,
}

impl LockHolder {
    /// This process, now.
    fn this_process() -> LockHolder {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        LockHolder { pid: std::process::id(), host: hostname(), started: rfc3339_utc(now), command: std::env::args().collect::<Vec<_>>().join(" ") }
    }

    fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({ "pid": self.pid, "host": self.host, "started": self.started, "command": self.command });
        let mut text = serde_json::to_string(&v).unwrap_or_default();
        text.push('\n');
        text.into_bytes()
    }

    /// Parses a lock file's bytes; `None` when they are not a lock (empty, cut short, garbage).
    fn parse(bytes: &[u8]) -> Option<LockHolder> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let pid = u32::try_from(v.get("pid")?.as_u64()?).ok()?;
        let host = v.get("host")?.as_str()?.to_string();
        let text = |k: &str| v.get(k).and_then(|s| s.as_str()).unwrap_or("unknown").to_string();
        Some(LockHolder { pid, host, started: text("started"), command: text("command") })
    }

    fn describe(&self) -> String {
        format!("pid {} on host `{}`, started {}, command `{}`", self.pid, self.host, self.started, self.command)
    }
}

/// The lock on a run directory, held while this value lives; dropping it removes `run.lock`.
/// Bind it to a named variable (`let _lock = RunLock::acquire(out)?;`): `let _ = ..` drops it
/// at once.
#[must_use = "the lock is released as soon as the RunLock is dropped"]
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    holder: LockHolder,
    /// The bytes written, so Drop removes the file only while it is still this lock.
    contents: Vec<u8>,
}

impl RunLock {
    /// Locks the run directory `dir` (created if missing) for this process: creates
    /// `<dir>/run.lock`, or takes over a stale one (its holder on this host is no longer
    /// running; a note goes to stderr). Fails, naming the holder and the lock file, when another
    /// live process holds it, or when its holder is on another host.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let holder = LockHolder::this_process();
        let contents = holder.to_json();
        // A first try, and one more after a stale lock was removed (or the holder let go between
        // the try and reading its file).
        for attempt in 0..2 {
            if try_create(&path, &contents)? {
                return Ok(RunLock { path, holder, contents });
            }
            let Some(bytes) = read_settled(&path)? else { continue };
            let this_host = hostname();
            match LockHolder::parse(&bytes) {
                Some(h) if h.host != this_host => bail!(
                    "{} is locked by a kvbench run on another host ({}); lock file {}. This host (`{this_host}`) cannot tell whether that run is still \
                     alive, so the lock is never taken over automatically: if that run is really dead, remove {} by hand and run again",
                    dir.display(),
                    h.describe(),
                    path.display(),
                    path.display()
                ),
                Some(h) if pid_alive(h.pid) => bail!(
                    "{} is locked by another kvbench run ({}); lock file {}. Wait for it to finish or choose another --out; if pid {} is not a \
                     kvbench run writing there (the pid was reused), remove {} by hand",
                    dir.display(),
                    h.describe(),
                    path.display(),
                    h.pid,
                    path.display()
                ),
                Some(h) if attempt == 0 => {
                    eprintln!("note: taking over the stale lock {}: its holder ({}) is no longer running", path.display(), h.describe());
                }
                None if attempt == 0 => {
                    eprintln!("note: taking over the unreadable lock {} (left by a run killed while creating it)", path.display());
                }
                _ => break,
            }
            remove_if_unchanged(&path, &bytes)?;
        }
        // Lost a race for the lock (another run took the stale lock over at the same moment).
        let who = fs::read(&path).ok().and_then(|b| LockHolder::parse(&b)).map(|h| h.describe()).unwrap_or_else(|| "unknown holder".into());
        bail!("{} is locked by another kvbench run that took the lock at the same time ({who}); lock file {}", dir.display(), path.display())
    }

    /// The lock file, `<dir>/run.lock`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What this lock's file says: this process.
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only while the file is still this lock (never another run's after a wrong takeover).
        if fs::read(&self.path).is_ok_and(|b| b == self.contents) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `path` exclusively with `contents`: false when it already exists.
fn try_create(path: &Path, contents: &[u8]) -> Result<bool> {
    let mut f = match fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("creating the lock file {}", path.display())),
    };
    if let Err(e) = f.write_all(contents).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(e).with_context(|| format!("writing the lock file {}", path.display()));
    }
    Ok(true)
}

/// The lock file's bytes (`None`: it is gone). Bytes that are not a lock yet are read again
/// until they are, or until the file has been left unchanged for [`UNREADABLE_GRACE`] (its
/// writer died between creating and writing it).
fn read_settled(path: &Path) -> Result<Option<Vec<u8>>> {
    let start = std::time::Instant::now();
    loop {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading the lock file {}", path.display())),
        };
        if LockHolder::parse(&bytes).is_some() {
            return Ok(Some(bytes));
        }
        let age = fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok()).unwrap_or_default();
        if age >= UNREADABLE_GRACE || start.elapsed() >= UNREADABLE_GRACE {
            return Ok(Some(bytes));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the stale lock `path` if it still holds `bytes` (not a lock another run has just
/// taken over). Two runs taking over the same stale lock at the same instant can still race
/// between this read and the removal; the window is a few system calls wide.
fn remove_if_unchanged(path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::read(path) {
        Ok(now) if now == bytes => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing the stale lock file {}", path.display())),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Whether process `pid` on this host is running. Linux: `/proc/<pid>` exists and is not a
/// zombie. Without `/proc` it cannot tell and says alive (so nothing is taken over).
fn pid_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses (which may itself hold ") ").
        Ok(stat) => !matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()), Some('Z' | 'X')),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// This host's name: `/proc/sys/kernel/hostname`, else `/etc/hostname`, else `unknown`.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// `secs` since the Unix epoch as RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SSZ` (the civil date from
/// the day count by H. Hinnant's `civil_from_days`).
pub fn rfc3339_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 0000-03-01, in 400-year eras of 146097 days (the epoch is day 719468).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
