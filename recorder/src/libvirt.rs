//! A libvirt domain's QEMU process and disks, from the QEMU driver's runtime state:
//! `/run/libvirt/qemu/NAME.pid` (the process) and `NAME.xml` (the live domain status,
//! whose `<domain>` has the disks' sources and the names the guest sees them by).
//! Read as files, not through libvirt's API: no client library, and the state is what
//! the running QEMU was started with.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use viopath_probes::chunks::{Domain, DomainDisk};

/// Where libvirt's system QEMU driver keeps its running domains.
pub const RUN_DIR: &str = "/run/libvirt/qemu";

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error(
        "no libvirt QEMU driver state at {0}: is libvirtd (or virtqemud) running on this host?"
    )]
    NoDriver(PathBuf),
    #[error(
        "libvirt domain '{name}' is not running (no {pidfile}): `virsh list --all` lists the domains and their state"
    )]
    NotRunning { name: String, pidfile: String },
    #[error("libvirt domain '{name}': {pidfile} does not hold a process id ('{text}')")]
    BadPidFile {
        name: String,
        pidfile: String,
        text: String,
    },
    #[error("libvirt domain '{name}': its pid file names process {pid}, which is gone")]
    Gone { name: String, pid: u32 },
    #[error("libvirt domain '{name}': reading its live XML {path}")]
    Xml {
        name: String,
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A running domain: its QEMU's pid and what the live XML says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub domain: Domain,
}

/// The running domain `name`, from the driver's state under `run_dir`.
pub fn running(name: &str, run_dir: &Path) -> Result<Running, DomainError> {
    if !run_dir.is_dir() {
        return Err(DomainError::NoDriver(run_dir.to_owned()));
    }
    // A name is one path component; anything else names no domain's files.
    let pidfile = run_dir.join(format!("{name}.pid"));
    let shown = pidfile.display().to_string();
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(DomainError::NotRunning {
            name: name.to_owned(),
            pidfile: shown,
        });
    }
    let text = std::fs::read_to_string(&pidfile).map_err(|_| DomainError::NotRunning {
        name: name.to_owned(),
        pidfile: shown.clone(),
    })?;
    let pid: u32 = text.trim().parse().map_err(|_| DomainError::BadPidFile {
        name: name.to_owned(),
        pidfile: shown,
        text: text.trim().chars().take(40).collect(),
    })?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DomainError::Gone {
            name: name.to_owned(),
            pid,
        });
    }
    let xml_path = run_dir.join(format!("{name}.xml"));
    let xml_error = |source: Box<dyn std::error::Error + Send + Sync>| DomainError::Xml {
        name: name.to_owned(),
        path: xml_path.display().to_string(),
        source,
    };
    let xml = std::fs::read_to_string(&xml_path).map_err(|e| xml_error(Box::new(e)))?;
    let domain = parse_status(&xml).map_err(|e| xml_error(Box::new(e)))?;
    Ok(Running { pid, domain })
}

/// libvirt's status file: `<domstatus>` around the live `<domain>`; or, as `virsh
/// dumpxml` prints it, the `<domain>` alone.
#[derive(Deserialize)]
struct DomStatus {
    domain: Option<DomainXml>,
    name: Option<String>,
    devices: Option<Devices>,
}

#[derive(Deserialize)]
struct DomainXml {
    name: String,
    devices: Option<Devices>,
}

#[derive(Deserialize)]
struct Devices {
    #[serde(rename = "disk", default)]
    disks: Vec<DiskXml>,
}

#[derive(Deserialize)]
struct DiskXml {
    source: Option<SourceXml>,
    target: Option<TargetXml>,
}

#[derive(Deserialize)]
struct SourceXml {
    #[serde(rename = "@file")]
    file: Option<String>,
    #[serde(rename = "@dev")]
    dev: Option<String>,
}

#[derive(Deserialize)]
struct TargetXml {
    #[serde(rename = "@dev")]
    dev: Option<String>,
    #[serde(rename = "@bus")]
    bus: Option<String>,
}

/// The domain's name and its disks with a file or block device as source (a CD-ROM
/// drive without media, a network disk: left out).
pub fn parse_status(xml: &str) -> Result<Domain, quick_xml::DeError> {
    let s: DomStatus = quick_xml::de::from_str(xml)?;
    let (name, devices) = match s.domain {
        Some(d) => (d.name, d.devices),
        None => (s.name.unwrap_or_default(), s.devices),
    };
    let disks = devices
        .map(|d| d.disks)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| {
            let source = d.source.and_then(|s| s.file.or(s.dev))?;
            let target = d.target?;
            Some(DomainDisk {
                source,
                target: target.dev.unwrap_or_default(),
                bus: target.bus.unwrap_or_default(),
            })
        })
        .collect();
    Ok(Domain { name, disks })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file as libvirt 11 writes it (abridged): the live domain inside
    /// `<domstatus>`, beside the driver's own elements.
    const STATUS: &str = r#"<!--
WARNING: THIS IS AN AUTO-GENERATED FILE.
-->
<domstatus state='running' reason='booted' pid='4242'>
  <monitor path='/var/lib/libvirt/qemu/domain-1-vm/monitor.sock' type='unix'/>
  <vcpus><vcpu id='0' pid='4250'/></vcpus>
  <domain type='qemu' id='1'>
    <name>vm1</name>
    <uuid>0c8d2f3e-0000-4000-8000-000000000001</uuid>
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2' cache='none'/>
        <source file='/var/lib/libvirt/images/vm1.qcow2' index='2'/>
        <backingStore/>
        <target dev='vda' bus='virtio'/>
        <alias name='virtio-disk0'/>
      </disk>
      <disk type='block' device='disk'>
        <source dev='/dev/vg0/data' index='1'/>
        <target dev='sdb' bus='scsi'/>
      </disk>
      <disk type='file' device='cdrom'>
        <target dev='sdc' bus='sata'/>
      </disk>
      <serial type='pty'/>
    </devices>
  </domain>
</domstatus>
"#;

    #[test]
    fn a_status_files_domain_and_disks() {
        let d = parse_status(STATUS).unwrap();
        assert_eq!(d.name, "vm1");
        let got: Vec<(&str, &str, &str)> = d
            .disks
            .iter()
            .map(|x| (x.source.as_str(), x.target.as_str(), x.bus.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/var/lib/libvirt/images/vm1.qcow2", "vda", "virtio"),
                ("/dev/vg0/data", "sdb", "scsi"),
            ]
        );
        // `virsh dumpxml`'s form: the domain alone.
        let inner = &STATUS[STATUS.find("<domain ").unwrap()..STATUS.find("</domstatus>").unwrap()];
        assert_eq!(parse_status(inner).unwrap(), d);
    }

    #[test]
    fn a_domain_not_running_or_gone_is_said() {
        let dir = tempfile_dir();
        let e = running("nosuch", &dir).unwrap_err().to_string();
        assert!(
            e.contains("is not running") && e.contains("nosuch.pid"),
            "{e}"
        );
        std::fs::write(dir.join("vm.pid"), "x1").unwrap();
        let e = running("vm", &dir).unwrap_err().to_string();
        assert!(e.contains("does not hold a process id"), "{e}");
        // A pid no process has (pid_max is at most 2^22).
        std::fs::write(dir.join("vm.pid"), "99999999").unwrap();
        let e = running("vm", &dir).unwrap_err().to_string();
        assert!(e.contains("which is gone"), "{e}");
        let e = running("vm", &dir.join("none")).unwrap_err().to_string();
        assert!(e.contains("is libvirtd"), "{e}");
        // Its own process, with no XML beside the pid file.
        std::fs::write(dir.join("me.pid"), std::process::id().to_string()).unwrap();
        let e = running("me", &dir).unwrap_err().to_string();
        assert!(e.contains("live XML"), "{e}");
        std::fs::write(dir.join("me.xml"), STATUS).unwrap();
        let r = running("me", &dir).unwrap();
        assert_eq!((r.pid, r.domain.name.as_str()), (std::process::id(), "vm1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("viopath-libvirt-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
