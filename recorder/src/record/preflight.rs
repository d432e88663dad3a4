//! Before anything is touched: privileges, the kernel's BTF and tracefs, the probe
//! filter, and an output file that can be written.

use super::RecordError;
use super::RecordOptions;
use super::attach::validate_filter;
use std::path::{Path, PathBuf};

/// Check everything that can fail before the target is touched. The returned guard
/// removes an output file that did not exist before until it is disarmed, so an early
/// failure leaves no empty file behind.
pub(super) fn check(opts: &RecordOptions) -> Result<RemoveOnDrop, RecordError> {
    check_privileges()?;
    check_kernel()?;
    validate_filter(&opts.probes)?;
    // Fail on an unwritable output before touching the target.
    let existed = opts.output.exists();
    if let Err(source) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.output)
    {
        return Err(RecordError::Output {
            path: opts.output.clone(),
            source,
        });
    }
    Ok(RemoveOnDrop(if existed {
        PathBuf::new()
    } else {
        opts.output.clone()
    }))
}

fn check_privileges() -> Result<(), RecordError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    if has(21) || (has(39) && has(38)) {
        Ok(())
    } else {
        Err(RecordError::NotPrivileged)
    }
}

fn check_kernel() -> Result<(), RecordError> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(RecordError::NoBtf);
    }
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let out = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success())
            && Path::new("/sys/kernel/tracing/events").exists();
        if !ok {
            let why = match out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            return Err(RecordError::NoTracefs(why));
        }
    }
    Ok(())
}

/// Removes a file when dropped, unless disarmed.
pub(super) struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    pub(super) fn disarm(&mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
