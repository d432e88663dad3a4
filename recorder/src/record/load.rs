//! Loading the eBPF object: CO-RE against this kernel's BTF, the target's pid and the
//! kernel's aio fsync work function as globals, ring shards sized by CPU, and the
//! devices to trace.

use super::RecordError;
use super::rings::RING_BYTES;
use aya::maps::HashMap as BpfHashMap;
use aya::{Btf, Ebpf, EbpfLoader};
use viopath_layouts::host::DevId;
use viopath_probes::abi;

/// The kernel's BTF could not be read.
#[derive(Debug, thiserror::Error)]
#[error("BTF")]
struct BtfUnreadable(#[source] aya::BtfError);

/// The possible-CPU list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}")]
struct CpusUnreadable {
    path: &'static str,
    #[source]
    source: std::io::Error,
}

/// The loaded object, before anything is attached.
pub(super) struct Loaded {
    pub(super) bpf: Ebpf,
    pub(super) btf: Btf,
    /// The kernel's `aio_fsync_work` (0: not in /proc/kallsyms).
    pub(super) aio_fsync_work: u64,
    /// The ring buffer shards' map names, in shard order.
    pub(super) ring_names: Vec<String>,
}

fn load_error(e: impl std::error::Error + Send + Sync + 'static) -> RecordError {
    RecordError::Load(Box::new(e))
}

/// Load the object for process `pid`, or with 0 for the processes [`trace_process`]
/// names.
pub(super) fn load(pid: u32) -> Result<Loaded, RecordError> {
    let btf = Btf::from_sys_fs().map_err(|e| load_error(BtfUnreadable(e)))?;
    let aio_fsync_work = super::attach::kernel_symbol("aio_fsync_work").unwrap_or(0);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global("target_tgid", &pid, true)
        .override_global("aio_fsync_work", &aio_fsync_work, true);
    // Shards no CPU maps to get one page instead of the full ring.
    let cpus = aya::util::nr_cpus()
        .map_err(|(path, source)| load_error(CpusUnreadable { path, source }))?
        as u32;
    let ring_names: Vec<String> = (0..abi::RING_SHARDS)
        .map(|i| format!("events{i}"))
        .collect();
    for (i, name) in ring_names.iter().enumerate() {
        let used = (i as u32) < cpus;
        loader.map_max_entries(name, if used { RING_BYTES } else { 4096 });
    }
    let bpf = loader.load(viopath_probes::object()).map_err(load_error)?;
    Ok(Loaded {
        bpf,
        btf,
        aio_fsync_work,
        ring_names,
    })
}

/// Add `devices` to the kernel's filter of devices to trace.
pub(super) fn trace_devices<'a>(
    bpf: &mut Ebpf,
    devices: impl IntoIterator<Item = &'a DevId>,
) -> Result<(), RecordError> {
    let map = bpf
        .map_mut("devices")
        .ok_or_else(|| RecordError::Load("no map devices".into()))?;
    let mut map: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(map).map_err(load_error)?;
    for d in devices {
        map.insert(abi::kernel_dev(d.major, d.minor), 1, 0)
            .map_err(load_error)?;
    }
    Ok(())
}

/// The devices the kernel's filter holds: those given, and those it followed bios to
/// (a device below one it watched, remapped to: a thin pool's, an NVMe path disk).
pub(super) fn traced_devices(bpf: &Ebpf) -> Vec<DevId> {
    let Some(map) = bpf.map("devices") else {
        return Vec::new();
    };
    let Ok(map) = BpfHashMap::<_, u32, u8>::try_from(map) else {
        return Vec::new();
    };
    map.keys()
        .filter_map(|k| k.ok())
        .map(|k| {
            let (major, minor) = abi::split_kernel_dev(k);
            DevId { major, minor }
        })
        .collect()
}

/// Trace process `pid` (the recording's VM number `index`) from now on.
pub(super) fn trace_process(bpf: &mut Ebpf, pid: u32, index: u32) -> Result<(), RecordError> {
    let map = bpf
        .map_mut("tgids")
        .ok_or_else(|| RecordError::Load("no map tgids".into()))?;
    let mut map: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(map).map_err(load_error)?;
    map.insert(pid, index, 0).map_err(load_error)
}

/// Stop tracing process `pid` (it exited: its pid may be reused by another).
pub(super) fn untrace_process(bpf: &mut Ebpf, pid: u32) {
    if let Some(m) = bpf.map_mut("tgids")
        && let Ok(mut m) = BpfHashMap::<_, u32, u32>::try_from(m)
    {
        let _ = m.remove(&pid);
    }
}

/// The ring buffer shards, taken out of the object to be drained.
pub(super) fn take_rings(
    loaded: &mut Loaded,
) -> Result<Vec<aya::maps::RingBuf<aya::maps::MapData>>, RecordError> {
    let mut rings = Vec::new();
    for name in &loaded.ring_names {
        let map = loaded
            .bpf
            .take_map(name)
            .ok_or_else(|| RecordError::Load(format!("no map {name}").into()))?;
        rings.push(aya::maps::RingBuf::try_from(map).map_err(load_error)?);
    }
    Ok(rings)
}
