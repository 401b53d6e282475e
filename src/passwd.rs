//! `wsgate passwd`: adds, changes or deletes a user in a users file. The password comes from a
//! no-echo terminal prompt or from stdin, never from argv; the file is rewritten atomically, 0600.

use std::path::Path;

/// Why `wsgate passwd` failed.
#[derive(Debug)]
pub enum PasswdError {}

/// Sets `user`'s password in `file` (creating the file if needed), or deletes the user.
///
/// # Errors
/// A [`PasswdError`] a user can act on.
pub fn run(file: &Path, user: &str, delete: bool) -> Result<(), PasswdError> {
    let _ = (file, user, delete);
    todo!()
}
