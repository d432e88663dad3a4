//! fentry/fexit and tp_btf on a kernel module's code (ext4's file IO, dm_mod's
//! submission, ext4's fsync tracepoints in distribution kernels, where both are
//! modules).
//!
//! aya 0.14 loads these against vmlinux's BTF only: the kernel also needs the module's
//! BTF object (`attach_btf_obj_fd`), which aya keeps to itself. So these few programs
//! are loaded here, from the same object: relocated by `aya-obj` (CO-RE against
//! vmlinux's BTF, the maps aya created, the calls), with the type id from the module's
//! split BTF, and attached with `BPF_RAW_TRACEPOINT_OPEN`. Their events go to the same
//! rings as every other program's.

use crate::module_btf::{BaseBtf, BtfKind, modules_with_btf};
use aya::maps::Map;
use aya::{Btf, Ebpf};
use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_type,
};
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BTF_DIR: &str = "/sys/kernel/btf";
/// How a probe missing from every BTF of this kernel is said (the one reason given).
pub(super) const NOT_IN_KERNEL: &str = "not in this kernel";

/// How a module program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ModuleAttach {
    Fentry,
    Fexit,
    /// A tracepoint: the target is its `btf_trace_<name>` typedef.
    TpBtf,
}

/// A program loaded and attached here: detached when dropped.
pub(super) struct ModuleLink {
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// Modules' BTF and the object relocated for loading by hand, each read or made on
/// first need, and the programs attached.
#[derive(Default)]
pub(super) struct Modules {
    base: Option<Result<BaseBtf, String>>,
    obj: Option<aya_obj::Object>,
    /// Module BTF objects opened, by module name.
    btf_objs: Vec<(String, OwnedFd)>,
    pub(super) links: Vec<ModuleLink>,
}

impl Modules {
    /// The object's programs relocated as aya did for its own: CO-RE against vmlinux's
    /// BTF, map references to the maps aya created (same rings, same settings), calls.
    fn relocated(bpf: &Ebpf, btf: &Btf) -> Result<aya_obj::Object, String> {
        let mut obj = aya_obj::Object::parse(viopath_probes::object())
            .map_err(|e| format!("parse the eBPF object: {e}"))?;
        obj.relocate_btf(btf).map_err(|e| format!("CO-RE: {e}"))?;
        let maps: Vec<(String, aya_obj::Map)> = obj
            .maps
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        let mut fds = Vec::new();
        for (name, _) in &maps {
            let map = bpf
                .map(name)
                .ok_or_else(|| format!("map {name} was not created"))?;
            fds.push(map_fd(map).as_raw_fd());
        }
        let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(
            maps.iter()
                .zip(&fds)
                .map(|((n, m), fd)| (n.as_str(), *fd, m)),
            &text,
        )
        .map_err(|e| format!("relocate maps: {e}"))?;
        obj.relocate_calls(&text)
            .map_err(|e| format!("relocate calls: {e}"))?;
        Ok(obj)
    }

    /// Load `program` for `target` (a function, or a tracepoint's name) in whichever
    /// module's BTF has it, and attach it: that module's name.
    pub(super) fn attach(
        &mut self,
        bpf: &Ebpf,
        btf: &Btf,
        program: &str,
        target: &str,
        how: ModuleAttach,
    ) -> Result<String, String> {
        let (kind, name) = match how {
            ModuleAttach::TpBtf => (BtfKind::Typedef, format!("btf_trace_{target}")),
            _ => (BtfKind::Func, target.to_owned()),
        };
        let (module, type_id) = self.find(&name, kind)?;
        let btf_index = self.btf_obj(&module)?;
        if self.obj.is_none() {
            self.obj = Some(Self::relocated(bpf, btf)?);
        }
        let obj = self.obj.as_ref().expect("made above");
        let p = obj.programs.get(program).ok_or("not in the eBPF object")?;
        let insns = &obj
            .functions
            .get(&p.function_key())
            .ok_or("its function is not in the eBPF object")?
            .instructions;
        let attach_type = match how {
            ModuleAttach::Fentry => bpf_attach_type::BPF_TRACE_FENTRY,
            ModuleAttach::Fexit => bpf_attach_type::BPF_TRACE_FEXIT,
            ModuleAttach::TpBtf => bpf_attach_type::BPF_TRACE_RAW_TP,
        };
        let btf_fd = self.btf_objs[btf_index].1.as_fd();
        let prog = load(program, insns, attach_type, type_id, btf_fd)?;
        let link = raw_tracepoint_open(prog.as_fd()).map_err(|e| format!("attach: {e}"))?;
        self.links.push(ModuleLink {
            _prog: prog,
            _link: link,
        });
        Ok(module)
    }

    /// The module whose BTF has `name` of `kind`, and its id there.
    fn find(&mut self, name: &str, kind: BtfKind) -> Result<(String, u32), String> {
        let dir = Path::new(BTF_DIR);
        let base = self
            .base
            .get_or_insert_with(|| BaseBtf::read(&dir.join("vmlinux")).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| e.clone())?;
        for module in modules_with_btf(dir) {
            let Ok(blob) = std::fs::read(dir.join(&module)) else {
                continue;
            };
            if let Some(id) = base
                .find_in_module(&module, &blob, name, kind)
                .map_err(|e| e.to_string())?
            {
                return Ok((module, id));
            }
        }
        Err(format!(
            "{NOT_IN_KERNEL}: no {name} in vmlinux's BTF or a loaded module's ({BTF_DIR})"
        ))
    }

    /// The kernel's BTF object of `module`, found by name among all BTF objects: its
    /// index in `btf_objs`.
    fn btf_obj(&mut self, module: &str) -> Result<usize, String> {
        if let Some(i) = self.btf_objs.iter().position(|(m, _)| m == module) {
            return Ok(i);
        }
        let mut id = 0;
        loop {
            id = match btf_next_id(id) {
                Ok(Some(next)) => next,
                Ok(None) => return Err(format!("no BTF object of module {module}")),
                Err(e) => return Err(format!("BPF_BTF_GET_NEXT_ID: {e}")),
            };
            // Gone since listed, or not ours to open: the next one.
            let Ok(fd) = btf_fd_by_id(id) else { continue };
            if btf_name(fd.as_fd()).is_ok_and(|n| n == module) {
                self.btf_objs.push((module.to_owned(), fd));
                return Ok(self.btf_objs.len() - 1);
            }
        }
    }
}

/// A map's descriptor, whatever its type (each variant holds the same `MapData`).
fn map_fd(m: &Map) -> BorrowedFd<'_> {
    let d = match m {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    d.fd().as_fd()
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialized bpf_attr for `cmd`, and every
    // pointer in it outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain integers; all zeroes is its valid empty value.
    unsafe { std::mem::zeroed() }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn btf_next_id(start: u32) -> std::io::Result<Option<u32>> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.start_id = start;
    match sys_bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
        // SAFETY: the kernel wrote next_id of the same member.
        Ok(_) => Ok(Some(unsafe { attr.__bindgen_anon_6.next_id })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn btf_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
    sys_bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr).map(owned)
}

fn btf_name(fd: BorrowedFd<'_>) -> std::io::Result<String> {
    let mut name = [0u8; 64];
    // SAFETY: bpf_btf_info is plain integers.
    let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
    info.name = name.as_mut_ptr() as u64;
    info.name_len = name.len() as u32;
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_btf_info>() as u32;
    attr.info.info = &mut info as *mut bpf_btf_info as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// BPF_PROG_LOAD of a tracing program against type `type_id` of the BTF object
/// `btf_obj`; on refusal, the verifier's last word.
fn load(
    name: &str,
    insns: &[bpf_insn],
    attach_type: bpf_attach_type,
    type_id: u32,
    btf_obj: BorrowedFd<'_>,
) -> Result<OwnedFd, String> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 20];
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the PROG_LOAD member.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
    u.expected_attach_type = attach_type as u32;
    u.insns = insns.as_ptr() as u64;
    u.insn_cnt = insns.len() as u32;
    u.license = license.as_ptr() as u64;
    u.attach_btf_id = type_id;
    u.__bindgen_anon_1.attach_btf_obj_fd = btf_obj.as_raw_fd() as u32;
    for (i, b) in name.bytes().take(15).enumerate() {
        u.prog_name[i] = b as libc::c_char;
    }
    u.log_level = 1;
    u.log_buf = log.as_mut_ptr() as u64;
    u.log_size = log.len() as u32;
    match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&c| c == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let cause = text
                .lines()
                .rev()
                .find(|l| {
                    !l.is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                })
                .unwrap_or("");
            Err(if cause.is_empty() {
                format!("load: {e}")
            } else {
                format!("load: {e}: verifier: {cause}")
            })
        }
    }
}

fn raw_tracepoint_open(prog: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr).map(owned)
}
