//! The JSON chunks of a trace, one type each: the [`Header`] the recorder writes first,
//! and the [`Losses`] and [`End`] it writes last (the layout snapshot's types are
//! `viopath_layouts::snapshot`'s). The recorder writes these types and the reporter and
//! the Perfetto writer read them, so a field is named in one place.
//!
//! Traces are untrusted and outlive the code that wrote them: every field has a
//! default, and a field or list entry of the wrong shape is skipped and counted
//! ([`Parsed::skipped`]) instead of failing the whole chunk. Unknown fields are ignored
//! (a newer recorder's).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
pub use viopath_layouts::lenient::{Parsed, lenient, lenient_list, parse};

/// The first chunk: what was recorded, where, when and with which probes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    /// The trace format (`trace::FORMAT_VERSION`); `None` if the header lacks it.
    #[serde(deserialize_with = "lenient")]
    pub format: Option<u64>,
    /// The event ABI (`abi::ABI_VERSION`).
    #[serde(deserialize_with = "lenient")]
    pub abi: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    pub tool: String,
    /// The recording host's name, kernel release and boot.
    #[serde(deserialize_with = "lenient")]
    pub host: String,
    #[serde(deserialize_with = "lenient")]
    pub kernel: String,
    #[serde(deserialize_with = "lenient")]
    pub boot_id: String,
    /// The clock of every event's timestamp (`CLOCK_MONOTONIC`).
    #[serde(deserialize_with = "lenient")]
    pub clock: String,
    #[serde(deserialize_with = "lenient")]
    pub monotonic_ns_at_start: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    pub realtime_ns_at_start: Option<u64>,
    /// Real time minus monotonic time at the start: add it to a timestamp for the
    /// wall-clock time.
    #[serde(deserialize_with = "lenient")]
    pub realtime_offset_ns: i64,
    #[serde(deserialize_with = "lenient")]
    pub target: TargetInfo,
    #[serde(deserialize_with = "lenient")]
    pub qemu: Option<QemuBinary>,
    #[serde(deserialize_with = "lenient")]
    pub symbols: Option<SymbolSource>,
    /// Every probe the recorder tried, attached or not.
    #[serde(deserialize_with = "lenient_list")]
    pub probes: Vec<ProbeStatus>,
    /// The QEMU probe catalog: the id an event's `sub` carries, per function.
    #[serde(deserialize_with = "lenient_list")]
    pub qemu_probes: Vec<QemuProbe>,
    /// Event kind names and numbers (`abi::EventKind`).
    #[serde(deserialize_with = "lenient")]
    pub event_kinds: BTreeMap<String, u8>,
    /// The block devices traced ("major:minor").
    #[serde(deserialize_with = "lenient_list")]
    pub devices: Vec<String>,
    /// The kernel's timer frequency (CONFIG_HZ): the dirty-page throttle's pauses are
    /// in its ticks. `None`: not found.
    #[serde(deserialize_with = "lenient")]
    pub kernel_hz: Option<u32>,
}

impl Header {
    /// Whether the probe of this name (an event or QEMU function) was attached.
    pub fn attached(&self, name: &str) -> bool {
        self.probes.iter().any(|p| p.name == name && p.attached)
    }
}

/// The process traced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetInfo {
    #[serde(deserialize_with = "lenient")]
    pub pid: Option<u32>,
    /// The command line: the one the recorder started, or the running process's.
    #[serde(deserialize_with = "lenient")]
    pub command: Option<Vec<String>>,
    /// The libvirt domain the process runs (`record --domain`).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
}

/// A libvirt domain, from its live XML: its name and its disks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Domain {
    pub name: String,
    #[serde(deserialize_with = "lenient_list")]
    pub disks: Vec<DomainDisk>,
}

/// One `<disk>` of a domain: its source (file or block device) and the name and bus
/// the guest sees it by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DomainDisk {
    pub source: String,
    /// `<target dev=...>`: vda, sdb, ...
    pub target: String,
    /// `<target bus=...>`: virtio, scsi, sata, ...
    pub bus: String,
}

/// A regular file the traced process had open, and how: the kernel's own account of
/// the cache mode an image was opened with (`O_DIRECT`: QEMU's `cache.direct=on`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenFile {
    pub path: PathBuf,
    /// Opened with O_DIRECT: its IO bypasses the host page cache.
    pub direct: bool,
    /// Opened with O_DSYNC or O_SYNC: every write is synced before it returns.
    pub dsync: bool,
}

/// The QEMU binary traced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QemuBinary {
    pub binary: PathBuf,
    /// The first line `BINARY --version` would print (read from the binary).
    pub version_line: String,
    /// major.minor.micro, when the line has one.
    pub version: Option<(u32, u32, u32)>,
}

/// Where the QEMU probes' symbols came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SymbolSource {
    pub binary: PathBuf,
    pub build_id: Option<String>,
    /// ".symtab", ".dynsym", "debug file <path>".
    pub sources: Vec<String>,
    /// A full symbol table (not only exports) was found.
    pub full: bool,
}

/// One probe the recorder tried.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeStatus {
    /// The event (tracepoint, function) or QEMU function.
    pub name: String,
    /// Its layer of the IO path (the catalog's names: "block", "qcow2", ...).
    pub layer: String,
    /// How it attached: tp_btf, tracepoint, fentry, kprobe, uprobe, ...
    pub attach: String,
    pub attached: bool,
    /// Why it did not attach, or how it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One QEMU probe of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QemuProbe {
    pub id: u8,
    pub symbol: String,
    pub layer: String,
    /// What its event's arguments hold.
    pub records: String,
}

/// What the kernel side lost, written when recording stops.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Losses {
    /// Events dropped because a ring buffer was full, per CPU and event kind.
    #[serde(deserialize_with = "lenient_list")]
    pub by_cpu_and_kind: Vec<Lost>,
    #[serde(deserialize_with = "lenient")]
    pub ring_full: u64,
    /// Probe runs the kernel skipped (a program already running on that CPU).
    #[serde(deserialize_with = "lenient")]
    pub missed_by_program: BTreeMap<String, u64>,
    #[serde(deserialize_with = "lenient")]
    pub missed: u64,
    /// Everything lost in the kernel: `ring_full` + `missed`.
    #[serde(deserialize_with = "lenient")]
    pub total: u64,
    /// Skipped runs of a completion program whose events its second program wrote
    /// (not counted in `missed`).
    #[serde(default, deserialize_with = "lenient")]
    pub recovered_by_program: BTreeMap<String, u64>,
}

/// Events of one kind lost on one CPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub kind: u8,
    pub cpu: u32,
    pub lost: u64,
}

/// What one eBPF program cost while recording, from the kernel's run-time statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
    pub mean_ns: f64,
}

/// The last chunk: the recorder's summary of the recording (`viopath record`
/// prints it). Its presence says the recording ended properly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct End {
    pub output: PathBuf,
    /// The recorded window: from the header's start to the stop.
    pub duration_s: f64,
    /// How long detaching the probes took after the stop (not in the window).
    pub detach_s: f64,
    pub stop_reason: String,
    pub events: u64,
    pub bytes: u64,
    pub events_by_probe: BTreeMap<String, u64>,
    pub lost: u64,
    pub lost_by_probe: BTreeMap<String, u64>,
    pub lost_by_cpu: BTreeMap<u32, u64>,
    /// Probe runs the kernel skipped because the probe fired inside an interrupt that
    /// came while the same program ran on that CPU; it counts them per program
    /// (`recursion_misses`). Each would have made at most one event (none if it was
    /// for a device or process not traced), so this bounds those losses from above.
    pub missed: u64,
    pub missed_by_program: BTreeMap<String, u64>,
    /// Events left out because probes were still being attached (before the trace's
    /// start) or already being detached (after its stop): detaching takes seconds, and
    /// a completion probe gone while the issue probe still records would leave
    /// requests without an end.
    pub events_outside_window: u64,
    #[serde(deserialize_with = "lenient_list")]
    pub probes: Vec<ProbeStatus>,
    pub missing_layers: Vec<String>,
    /// Per-program cost, when BPF statistics were on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "lenient_list")]
    pub bpf_cost: Vec<ProgramCost>,
    pub devices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_exit: Option<i32>,
    pub qemu: Option<QemuBinary>,
    /// The regular files the process had open while recording, each with its open
    /// flags as last seen (looked at every half second, so a process that lived
    /// shorter than that may have none).
    #[serde(deserialize_with = "lenient_list")]
    pub open_files: Vec<OpenFile>,
    /// Every process traced, the first the header's target (`open_files` above is
    /// its). Empty in traces recorded before several could be.
    #[serde(
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vms: Vec<VmInfo>,
    #[serde(
        deserialize_with = "lenient_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vms_skipped: Vec<VmSkipped>,
}

/// One QEMU process (VM) a recording traced. The first is the header's target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmInfo {
    #[serde(deserialize_with = "lenient")]
    pub pid: u32,
    /// What the report calls it (`--by vm`): its libvirt domain, QEMU's `-name`, else
    /// "pid N".
    #[serde(deserialize_with = "lenient")]
    pub name: String,
    #[serde(deserialize_with = "lenient_list")]
    pub command: Vec<String>,
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    /// Its image files (its disks' chains' top files, as it named them).
    #[serde(deserialize_with = "lenient_list")]
    pub images: Vec<PathBuf>,
    /// Its regular files and their open flags, as last seen.
    #[serde(deserialize_with = "lenient_list")]
    pub open_files: Vec<OpenFile>,
    /// Its threads when its tracing began and as seen since; the `thread` events name
    /// the ones started in between.
    #[serde(deserialize_with = "lenient_list")]
    pub threads: Vec<u32>,
    /// When its tracing began (CLOCK_MONOTONIC ns): the recording's start, or when
    /// `--all` found it.
    #[serde(deserialize_with = "lenient")]
    pub traced_from_ns: u64,
    /// When its tracing ended, if before the recording's end, and why.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub traced_until_ns: Option<u64>,
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// QEMU's `-name NAME` or `-name guest=NAME,...` (also `--name`, `-name=...`).
pub fn qemu_name(command: &[String]) -> Option<String> {
    let mut it = command.iter().skip(1);
    while let Some(a) = it.next() {
        let value = match a.as_str() {
            "-name" | "--name" => it.next().cloned(),
            _ => a
                .strip_prefix("-name=")
                .or_else(|| a.strip_prefix("--name="))
                .map(str::to_owned),
        };
        let Some(v) = value else { continue };
        // QEMU's option syntax: the first part without a key is `guest`; ",," is a
        // comma inside a value.
        let v = v.replace(",,", "\0");
        let name = v.split(',').find_map(|part| match part.split_once('=') {
            Some(("guest", n)) => Some(n.to_owned()),
            Some(_) => None,
            None => Some(part.to_owned()),
        });
        if let Some(n) = name.map(|n| n.replace("\0", ",")).filter(|n| !n.is_empty()) {
            return Some(n);
        }
    }
    None
}

/// A QEMU process the recording saw but did not trace, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmSkipped {
    pub pid: u32,
    pub exe: String,
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use viopath_layouts::lenient::Parsed;

    #[test]
    fn fields_and_entries_of_the_wrong_shape_are_skipped_and_counted() {
        let p: Parsed<Header> = parse(&json!({
            "format": 1,
            "abi": "one",
            "host": "h",
            "probes": [
                {"name": "block_rq_issue", "layer": "block", "attach": "tp_btf", "attached": true},
                {"name": 7},
                "not a probe"
            ],
            "devices": "8:0",
            "unknown_field": {"from": "a newer recorder"}
        }))
        .unwrap();
        let h = p.value;
        assert_eq!((h.format, h.abi, h.host.as_str()), (Some(1), None, "h"));
        assert_eq!(h.probes.len(), 1);
        assert!(h.attached("block_rq_issue") && !h.attached("block_rq_insert"));
        assert!(h.devices.is_empty());
        // abi, two probes, devices.
        assert_eq!(p.skipped, 4);
        // Not an object at all: an error, not a header of defaults.
        assert!(parse::<Header>(&json!([1, 2])).is_err());
        let l: Parsed<Losses> =
            parse(&json!({"total": 12, "by_cpu_and_kind": [{"kind": 1, "cpu": 0, "lost": 12}]}))
                .unwrap();
        assert_eq!(
            (l.value.total, l.value.by_cpu_and_kind.len(), l.skipped),
            (12, 1, 0)
        );
    }

    #[test]
    fn a_vm_is_named_by_qemus_name_option() {
        let cmd = |args: &[&str]| -> Vec<String> {
            std::iter::once("qemu-system-x86_64")
                .chain(args.iter().copied())
                .map(String::from)
                .collect()
        };
        assert_eq!(qemu_name(&cmd(&["-name", "web1"])).as_deref(), Some("web1"));
        assert_eq!(
            qemu_name(&cmd(&["-m", "1G", "-name", "guest=db,debug-threads=on"])).as_deref(),
            Some("db")
        );
        assert_eq!(
            qemu_name(&cmd(&["-name", "debug-threads=on,guest=a,,b"])).as_deref(),
            Some("a,b")
        );
        assert_eq!(qemu_name(&cmd(&["--name=x"])).as_deref(), Some("x"));
        assert_eq!(qemu_name(&cmd(&["-name", "debug-threads=on"])), None);
        assert_eq!(qemu_name(&cmd(&["-m", "1G"])), None);
        // The program's own name is not an option.
        assert_eq!(qemu_name(&["-name".to_owned()]), None);
    }

    #[test]
    fn a_header_written_is_read_back_the_same() {
        let h = Header {
            format: Some(1),
            abi: Some(1),
            host: "h".into(),
            realtime_offset_ns: -5,
            target: TargetInfo {
                pid: Some(7),
                command: Some(vec!["qemu-io".into()]),
                domain: Some(Domain {
                    name: "vm1".into(),
                    disks: vec![DomainDisk {
                        source: "/vm/a.qcow2".into(),
                        target: "vda".into(),
                        bus: "virtio".into(),
                    }],
                }),
            },
            probes: vec![ProbeStatus {
                name: "x".into(),
                layer: "block".into(),
                attach: "tp_btf".into(),
                attached: true,
                note: None,
            }],
            ..Header::default()
        };
        let v = serde_json::to_value(&h).unwrap();
        let back: Parsed<Header> = parse(&v).unwrap();
        assert_eq!((back.value, back.skipped), (h, 0));
    }
}
