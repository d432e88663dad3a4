//! The command `record -- CMD` starts, held at its first instruction until every probe
//! is attached.

use super::RecordError;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

/// A child started stopped: a shell waits on a pipe, then `exec`s the command (keeping
/// its pid), so probes filtered on that pid are in place before QEMU's first
/// instruction. (A blocking `pre_exec` cannot do this: `spawn` waits for the exec.)
pub(super) struct GatedChild {
    pub(super) child: std::process::Child,
    gate: Option<std::os::fd::OwnedFd>,
}

/// Read one line from fd 3 (the gate) or give up, close it, become the command.
const GATE_SCRIPT: &str = "read -r _ <&3 || exit 125; exec 3<&-; exec \"$@\"";

impl GatedChild {
    pub(super) fn spawn(argv: &[String]) -> Result<GatedChild, RecordError> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let (r, w) = (fds[0], fds[1]);
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", GATE_SCRIPT, "viopath-gate"]).args(argv);
        // SAFETY: only async-signal-safe calls (dup2, fcntl, close) between fork and
        // exec; fd 3 loses CLOEXEC so the shell inherits the read end.
        unsafe {
            cmd.pre_exec(move || {
                // dup2(3, 3) is a no-op that keeps O_CLOEXEC, so clear it explicitly.
                if libc::dup2(r, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(w);
                Ok(())
            });
        }
        let child = cmd.spawn();
        // SAFETY: r is ours; the child has its own copy.
        unsafe { libc::close(r) };
        // SAFETY: w is a valid fd we own from here on.
        let gate = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(w) };
        let child = child.map_err(|source| RecordError::Spawn {
            cmd: argv.join(" "),
            source,
        })?;
        Ok(GatedChild {
            child,
            gate: Some(gate),
        })
    }

    pub(super) fn release(&mut self) {
        if let Some(g) = self.gate.take() {
            // SAFETY: writing to our pipe fd; dropping `g` closes it.
            unsafe { libc::write(g.as_raw_fd(), b"go\n".as_ptr() as *const libc::c_void, 3) };
        }
    }
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        if self.gate.is_some() {
            // Never released (attach failed): do not leave it waiting forever.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
