//! Files that hold secrets (users, API tokens, the session key): opening them the same careful way
//! everywhere — a regular file only, and a warning when group or others can read it.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Opens the secret file `path` (`what` names it in the warning). Refuses anything but a regular
/// file; warns, once per call, if its mode lets group or others read it.
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
    if mode & 0o077 != 0 {
        log::warn!(
            "{what} {} is accessible by group/others (mode {mode:03o}); run `chmod 600 {}`",
            shown(path),
            shown(path)
        );
    }
    Ok((file, meta))
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

/// A temporary directory for unit tests, removed on drop.
#[cfg(test)]
pub struct TestDir(pub std::path::PathBuf);

#[cfg(test)]
impl TestDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
