//! The terminal's echo, turned off while a secret is typed (`passwd`'s prompt, `client`'s
//! password) and restored however the read ends.

use std::io;
use std::os::fd::AsFd;

use rustix::termios::{LocalModes, OptionalActions, Termios, tcgetattr, tcsetattr};

/// Echo off on the terminal `fd` until dropped (also on error or panic).
pub(crate) struct EchoOff<F: AsFd> {
    fd: F,
    saved: Termios,
}

impl<F: AsFd> EchoOff<F> {
    pub(crate) fn new(fd: F) -> io::Result<Self> {
        let saved = tcgetattr(&fd)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&fd, OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { fd, saved })
    }
}

impl<F: AsFd> Drop for EchoOff<F> {
    fn drop(&mut self) {
        let _ = tcsetattr(&self.fd, OptionalActions::Now, &self.saved);
    }
}
