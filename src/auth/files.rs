//! Files that hold secrets (users, API tokens, the session key): opening them the same careful way
//! everywhere — a regular file only, and a warning when group or others can read it — and the
//! lock that serialises the commands rewriting them, and the atomic write they rewrite them with.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The secret files warned about, each with the mode it was warned for: a reload (or the
/// re-reads of a settling file) reading the same file with the same mode says nothing again.
static WARNED: Mutex<Vec<(PathBuf, u32)>> = Mutex::new(Vec::new());

/// Whether the mode `mode` of `path` is an open one not yet warned about: not the mode last
/// warned about for it. Remembers it (one entry per path: the secret files are few); a private
/// mode forgets the path, so that opening the file again is warned again.
fn first_warning(path: &Path, mode: u32) -> bool {
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if mode & 0o077 == 0 {
        warned.retain(|(p, _)| p != path);
        return false;
    }
    match warned.iter_mut().find(|(p, _)| p == path) {
        Some((_, last)) if *last == mode => false,
        Some((_, last)) => {
            *last = mode;
            true
        }
        None => {
            warned.push((path.to_path_buf(), mode));
            true
        }
    }
}

/// Opens the secret file `path` (`what` names it in the warning). Refuses anything but a regular
/// file; warns if its mode lets group or others read it — once per process for a path and
/// mode, so that reloads do not repeat it (a mode changed to another open one, or opened again
/// after it was private, is warned again).
///
/// # Errors
/// The open error (including `NotFound`, which some callers treat as "none yet"), or
/// `InvalidInput` for a directory, device or FIFO.
pub fn open_private(path: &Path, what: &str) -> io::Result<(File, Metadata)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if first_warning(path, mode) {
        log::warn!(
            "{what} {} is accessible by group/others (mode {mode:03o}); run `chmod 600 {}`",
            shown(path),
            shown(path)
        );
    }
    Ok((file, meta))
}

/// [`open_private`], then the whole file as text, refusing one larger than `max` bytes without
/// reading it (and one that grew past `max` while it was read).
///
/// # Errors
/// Opening or reading fails, the file is not UTF-8, or it is too large (`FileTooLarge`, the
/// message naming both sizes and `[auth] max_file_size`).
pub fn read_private(path: &Path, what: &str, max: usize) -> io::Result<(String, Metadata)> {
    let (file, meta) = open_private(path, what)?;
    let too_large = |size: u64| {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "the file is {size} bytes, more than [auth] max_file_size ({max} bytes); raise \
                 it if the file is meant to be this large"
            ),
        )
    };
    let bound = u64::try_from(max).unwrap_or(u64::MAX);
    if meta.len() > bound {
        return Err(too_large(meta.len()));
    }
    // Sized once from the file's length: no chain of growing buffers freed behind it (each
    // large free raises glibc's mmap threshold, after which such buffers stay in the heap).
    let mut text = String::with_capacity(usize::try_from(meta.len()).unwrap_or(0) + 1);
    io::Read::read_to_string(
        &mut io::Read::take(file, bound.saturating_add(1)),
        &mut text,
    )?;
    if text.len() > max {
        return Err(too_large(text.len() as u64));
    }
    Ok((text, meta))
}

/// A path as a log line shows it: `.` and `..` resolved on the text alone and, under the working
/// directory, relative to it (`certs/wsgate.crt`, not `/srv/x/conf/../certs/wsgate.crt`). Only
/// for showing: the server opens the path as configured (symlinks make `a/..` differ from `.`).
pub fn shown(path: &Path) -> String {
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !clean.pop() {
                    clean.push("..");
                }
            }
            other => clean.push(other),
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rest) = clean.strip_prefix(&cwd) {
            if !rest.as_os_str().is_empty() {
                return rest.display().to_string();
            }
        }
    }
    clean.display().to_string()
}

/// `1 user`, `2 users`: a count with its noun in the right number.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How many settle times a reload waits at most for a file that keeps changing; then it loads
/// what is there (and the users file's all-users-gone check still stands guard).
const SETTLE_ROUNDS: u32 = 10;

/// What tells one version of a file from another: modification time, size and inode (an
/// atomic replace changes the inode even within one mtime tick).
pub type Stamp = (std::time::SystemTime, u64, u64);

/// The file's [`Stamp`], `None` while it is missing.
pub fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Loads `path` with `load` once it has settled: not modified within the last `settle`, and
/// the same (modification time, size, inode) before and after the load — else it waits and
/// loads again, for at most [`SETTLE_ROUNDS`] settle times. A reload that lands between an
/// editor's truncate and its write thus reads the written file, not the empty or cut one.
/// A file written atomically (renamed into place) is settled as soon as it is old enough.
///
/// # Errors
/// `load`'s error.
pub fn load_settled<T, E>(
    path: &Path,
    settle: std::time::Duration,
    load: impl Fn(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let give_up = std::time::Instant::now() + settle * SETTLE_ROUNDS;
    loop {
        let before = stamp(path);
        let age = before.and_then(|(mtime, _, _)| mtime.elapsed().ok());
        if let Some(age) = age.filter(|age| *age < settle) {
            if std::time::Instant::now() < give_up {
                std::thread::sleep(settle - age);
                continue;
            }
        }
        let loaded = load(path);
        if stamp(path) == before || std::time::Instant::now() >= give_up {
            return loaded;
        }
    }
}

/// An exclusive advisory lock (`flock(2)`) on the directory that holds a credential file, held
/// while a command reads, changes and rewrites the file; released when dropped (or when the
/// process dies, so a killed command never leaves it stuck).
///
/// The directory, not the file: every rewrite renames a new file over the old one, so a lock on
/// the file would be on an inode the next writer never opens. Locking the directory (a symlinked
/// file's target's directory, which is where the rename happens) serialises every `wsgate passwd`
/// and `wsgate token` run on files there, so no printed change is lost to a concurrent one.
/// Readers (the server) need no lock: they only ever see a whole old or a whole new file.
pub struct UpdateLock {
    _dir: File,
}

/// Takes the [`UpdateLock`] for `file`, waiting for another holder to finish.
///
/// # Errors
/// The directory cannot be opened, or `flock` fails.
pub fn lock_for_update(file: &Path) -> io::Result<UpdateLock> {
    let target = match std::fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(file)?,
        _ => file.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let dir = File::open(dir)?;
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(UpdateLock { _dir: dir })
}

/// A temporary directory for unit tests, removed on drop.
/// True for a line the credential files (users, tokens) skip: blank, or a `#` comment.
pub(crate) fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// What the temporary files of a rewrite of `name` are called, before their run's pid and a
/// nonce: `.users.wsgate-passwd.`.
fn temporary_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.wsgate-passwd.", name.to_string_lossy())
}

/// Writes `contents` to a new 0600 file beside `file`, fsyncs it, renames it over `file` and
/// fsyncs the directory. `owner` (uid, gid) is given to the new file when it differs from ours,
/// so root editing the service's file leaves it readable by the service. A symlink is followed:
/// its target is replaced, the link kept. Used by every command that rewrites a credential file
/// (`passwd`, `token`), holding `file`'s [`UpdateLock`].
///
/// A run killed at any moment leaves no copy of the file behind. The new file is written
/// unnamed (`O_TMPFILE`) and gets a name only to be renamed over `file` at once; a run killed
/// between those two steps (or one on a file system without `O_TMPFILE`, which writes a named
/// temporary file) leaves a `.NAME.wsgate-passwd.PID.NONCE` file, and the next run removes
/// every such file before it writes: it holds the lock, so no live run is writing one.
///
/// # Errors
/// The I/O error; `file` is then unchanged and no temporary file is left behind.
pub fn write_file_atomic(
    _held: &UpdateLock,
    file: &Path,
    contents: &str,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let target = match fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(file)?,
        _ => file.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = target.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ));
    };
    let prefix = temporary_prefix(name);
    remove_stale_temporaries(&dir, &prefix);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!("{prefix}{}.{nanos}", std::process::id()));
    let (mut f, named) = match unnamed_file(&dir) {
        Some(f) => (f, false),
        None => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            (f, true)
        }
    };
    let result = (|| {
        // The umask can only remove bits; make it exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            let meta = f.metadata()?;
            if meta.uid() != uid || meta.gid() != gid {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot keep its owner {uid}:{gid} (run as that user or root): {e}"
                        ),
                    )
                })?;
            }
        }
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        if !named {
            give_a_name(&f, &tmp)?;
        }
        fs::rename(&tmp, &target)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An unnamed 0600 file in `dir` (`O_TMPFILE`): a crash before it is linked leaves nothing.
/// None where the file system or kernel does not have them.
fn unnamed_file(dir: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .ok()
    .map(File::from)
}

/// Links the unnamed file `f` at `path`: through `/proc/self/fd` (what an unprivileged process
/// may do), else by its descriptor (`AT_EMPTY_PATH`, which takes `CAP_DAC_READ_SEARCH`).
fn give_a_name(f: &File, path: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::fd::AsRawFd;
    let by_proc = format!("/proc/self/fd/{}", f.as_raw_fd());
    linkat(CWD, by_proc.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW)
        .or_else(|_| linkat(f, "", CWD, path, AtFlags::EMPTY_PATH))
        .map_err(io::Error::from)
}

/// Removes the temporary files (`prefix` followed by anything) that killed runs left in `dir`.
/// Only a holder of the directory's [`UpdateLock`] may call this: no other run is writing one.
/// A file that cannot be removed is left; the write goes on.
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDir;

    #[test]
    fn shown_paths_resolve_dots_and_drop_the_working_directory() {
        assert_eq!(shown(Path::new("/a/conf/../certs/x.crt")), "/a/certs/x.crt");
        assert_eq!(shown(Path::new("/a/./b/./c")), "/a/b/c");
        assert_eq!(shown(Path::new("../x")), "../x");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            shown(&cwd.join("conf/../certs/wsgate.crt")),
            "certs/wsgate.crt"
        );
        assert_eq!(shown(&cwd), cwd.display().to_string());
    }

    #[test]
    fn counts_name_their_noun_in_the_right_number() {
        assert_eq!(count(0, "user", "users"), "0 users");
        assert_eq!(count(1, "user", "users"), "1 user");
        assert_eq!(count(2, "API token", "API tokens"), "2 API tokens");
    }

    use std::time::{Duration, Instant};

    #[test]
    fn a_rewrite_leaves_only_the_file_and_removes_what_killed_runs_left() {
        let dir = TestDir::new("atomic");
        let file = dir.0.join("users");
        std::fs::write(&file, "old\n").unwrap();
        let stale = dir.0.join(".users.wsgate-passwd.4242.17");
        std::fs::write(&stale, "a dead run's copy\n").unwrap();
        let other = dir.0.join(".tokens.wsgate-passwd.4242.17");
        std::fs::write(&other, "another file's\n").unwrap();
        let held = lock_for_update(&file).unwrap();
        write_file_atomic(&held, &file, "new\n", None).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new\n");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut left: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".tokens.wsgate-passwd.4242.17", "users"]);
    }

    #[test]
    fn a_settled_load_waits_for_a_file_still_being_written() {
        let dir = TestDir::new("settle");
        let path = dir.0.join("f");
        std::fs::write(&path, "half").unwrap();
        let settle = Duration::from_millis(150);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60));
                std::fs::write(&path, "whole").unwrap();
            })
        };
        let t = Instant::now();
        let read = load_settled(&path, settle, |p: &Path| std::fs::read_to_string(p)).unwrap();
        writer.join().unwrap();
        assert_eq!(read, "whole");
        assert!(t.elapsed() >= settle, "{:?}", t.elapsed());
        // An old file is read at once; a missing one gives the load's error.
        std::thread::sleep(settle);
        let t2 = Instant::now();
        assert_eq!(
            load_settled(&path, settle, |p: &Path| std::fs::read_to_string(p)).unwrap(),
            "whole"
        );
        assert!(t2.elapsed() < settle, "{:?}", t2.elapsed());
        assert!(
            load_settled(&dir.0.join("none"), settle, |p: &Path| {
                std::fs::read_to_string(p)
            })
            .is_err()
        );
    }

    #[test]
    fn an_open_mode_is_warned_once_until_it_changes_or_the_file_was_private_between() {
        let path = Path::new("/nonexistent/warned-test-users");
        assert!(first_warning(path, 0o644));
        assert!(!first_warning(path, 0o644), "a reload repeats nothing");
        assert!(first_warning(path, 0o640), "another open mode is news");
        assert!(!first_warning(path, 0o600), "private: nothing to say");
        assert!(first_warning(path, 0o640), "open again after private");
        assert!(!first_warning(path, 0o640));
    }
}
