//! The lab: Debian's own generic kernels (6.1 from bookworm, 6.12 from
//! bookworm-backports) booted under TCG as small hypervisor hosts with NVMe,
//! virtio-scsi and virtio-blk disks (tests/lab/build.sh), so the recorder runs where
//! this machine cannot: kernels with kprobes and fentry, device-mapper, md, real NVMe
//! and SCSI block devices. A boot runs stack scripts (tests/lab/stacks/) that record
//! `viopath record -- qemu-io` with a known list of requests and dump the independent
//! views of their layout (dmsetup, filefrag, qemu-img map, sysfs); the trace is then
//! reported here, on another kernel, as offline analysis would be.
//!
//! Expected sectors are computed in this file from those views alone (filefrag's
//! extents, `dmsetup table`'s targets, sysfs partition starts), not from viopath's
//! layouts; the trace's block events and the report's rows are checked against them.
//!
//! Needs root, the QEMU built by tests/qemu/build.sh, Debian's qemu-system-x86_64
//! (tests/qemu/debian.sh; it has the 9p and NVMe devices the lab boots with) and apt
//! for the lab's packages; tests/run.sh provides all of them.

use crate::common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use viopath_layouts::host::DevId;
use viopath_probes::abi::{EventKind, kernel_dev, split_kernel_dev};

/// A lab kernel's cached assets (tests/lab/build.sh).
struct Lab {
    dir: PathBuf,
    release: String,
}

/// The lab for Debian `suite`'s kernel, built or taken from the cache; `None` (the
/// test skipped, saying why) where it cannot run.
fn lab(suite: &str) -> Option<(Lab, PathBuf)> {
    let prefix = can_record()?;
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        skipped(
            "no Debian qemu-system-x86_64 to boot the lab with; run tests/qemu/debian.sh (tests/run.sh does)",
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(suite)
        .arg(&prefix)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "tests/lab/build.sh {suite} failed: {}",
        out.status
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let release = std::fs::read_to_string(dir.join("kernel-release"))
        .unwrap()
        .trim()
        .to_owned();
    Some((Lab { dir, release }, prefix))
}

/// One boot of the lab: its shared directory (the stacks' results) and console.
struct Boot {
    share: PathBuf,
    _dir: tempfile::TempDir,
}

/// Boot `lab`, partition its three disks, run `stacks` (file names under
/// tests/lab/stacks) one after another, and power off. Panics with the lab's console
/// and script output if the script fails or the lab does not stop in time.
fn boot(lab: &Lab, prefix: &Path, stacks: &[&str]) -> Boot {
    // One lab at a time: each takes both of this machine's CPUs under TCG.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let share = dir.path().join("share");
    let disks = dir.path().join("disks");
    std::fs::create_dir_all(share.join("stacks")).unwrap();
    std::fs::create_dir_all(&disks).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab");
    std::fs::copy(env!("CARGO_BIN_EXE_viopath"), share.join("viopath")).unwrap();
    std::fs::copy(src.join("lib.sh"), share.join("lib.sh")).unwrap();
    let mut script = format!(
        "QEMU_PREFIX={}\nVIOPATH=/share/viopath\n. /share/lib.sh\npartition /dev/nvme0n1 /dev/sda /dev/vda\n",
        prefix.display()
    );
    for s in stacks {
        std::fs::copy(src.join("stacks").join(s), share.join("stacks").join(s)).unwrap();
        script += &format!(". /share/stacks/{s}\n");
    }
    script += "log done\n";
    std::fs::write(share.join("run.sh"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(share.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["nvme", "scsi", "vblk"] {
        let f = std::fs::File::create(disks.join(format!("{d}.img"))).unwrap();
        f.set_len(2 << 30).unwrap();
    }
    let drive = |id: &str, file: &str| {
        format!(
            "file={},if=none,id={id},format=raw,cache=unsafe",
            disks.join(file).display()
        )
    };
    let kernel = lab.dir.join("vmlinuz");
    let initrd = lab.dir.join("initramfs.cpio");
    let virtfs = format!(
        "local,path={},mount_tag=viopath,security_model=none",
        share.display()
    );
    let mut qemu = Command::new("/usr/bin/qemu-system-x86_64");
    qemu.args([
        "-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3G",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    // NVMe native multipath is on (Debian's default): nvme0n1 is a bio-based head
    // over a hidden path disk (nvme0c0n1) that has no device number in sysfs, and
    // requests are issued there.
    .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
    .args(["-virtfs", &virtfs])
    .args(["-drive", &drive("n0", "nvme.img")])
    .args(["-device", "nvme,serial=lab0,drive=n0"])
    .args(["-device", "virtio-scsi-pci,id=scsi0"])
    .args(["-drive", &drive("s0", "scsi.img")])
    .args(["-device", "scsi-hd,drive=s0,bus=scsi0.0"])
    .args(["-drive", &drive("v0", "vblk.img")])
    .args(["-device", "virtio-blk-pci,drive=v0"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // A test run killed mid-lab takes its lab with it: an orphaned TCG guest would hold
    // both CPUs for minutes.
    // SAFETY: prctl is async-signal-safe and touches only the child being made.
    unsafe {
        use std::os::unix::process::CommandExt;
        qemu.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = qemu.spawn().expect("qemu-system-x86_64");
    // The console is read on its own thread so a chatty lab never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut s).ok();
        String::from_utf8_lossy(&s).into_owned()
    });
    // Boot (~15 s) plus each stack's recording; generous, as TCG on a loaded machine
    // is slow, but bounded so a hung lab fails the test.
    let limit = Duration::from_secs(240 + 240 * stacks.len() as u64);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = reader.join().unwrap();
    let script_out = std::fs::read_to_string(share.join("console.log")).unwrap_or_default();
    let exit = std::fs::read_to_string(share.join("exit")).unwrap_or_default();
    assert!(
        status.is_some(),
        "the lab ({}) did not stop within {limit:?}\nconsole:\n{console}\nscript:\n{script_out}",
        lab.release
    );
    assert_eq!(
        exit.trim(),
        "0",
        "the lab's script failed ({})\nconsole:\n{console}\nscript:\n{script_out}",
        lab.release
    );
    eprintln!(
        "lab {}: {:.0} s\n{script_out}",
        lab.release,
        started.elapsed().as_secs_f64()
    );
    // VIOPATH_LAB_KEEP=1 keeps the run's directory (traces, views) for a look after.
    if std::env::var_os("VIOPATH_LAB_KEEP").is_some() {
        eprintln!("lab run kept in {}", dir.path().display());
        let _ = dir.keep();
        return Boot {
            share,
            _dir: tempfile::tempdir_in("/var/tmp").unwrap(),
        };
    }
    Boot { share, _dir: dir }
}

/// One target line of `dmsetup table`: start, length, target, its arguments.
type DmLine = (u64, u64, String, Vec<String>);

/// The views one stack dumped in the lab (tests/lab/lib.sh, `oracles`).
struct Views {
    /// (op, guest offset, bytes) in the order qemu-io issued them.
    requests: Vec<(String, u64, u64)>,
    /// qemu-img map: (guest start, length, host file offset) of each data extent.
    map: Vec<(u64, u64, u64)>,
    /// filefrag: (file sector, filesystem-device sector, sectors).
    extents: Vec<(u64, u64, u64)>,
    fs_dev: DevId,
    /// Block devices by number: name, and for a partition its start and disk's name.
    blocks: Blocks,
    /// dm devices' tables by number: (start, len, target, arguments).
    dm: HashMap<DevId, Vec<DmLine>>,
    /// NVMe multipath heads and their path disks' names, from sysfs.
    multipath: Vec<(String, Vec<String>)>,
    /// btrfs's chunks, where the image's filesystem is btrfs: (logical start, length,
    /// each stripe's device and byte), from `btrfs inspect-internal dump-tree -t chunk`
    /// and `btrfs filesystem show`.
    btrfs: Vec<BtrfsChunk>,
    /// Thin volumes' mappings by thin device id: (origin block, data block, blocks),
    /// from thin_dump of the pool's metadata.
    thin: HashMap<u64, Vec<(u64, u64, u64)>>,
    /// md arrays by name: each member's name, the array's level and the member's data
    /// offset (sectors), from mdadm.
    md: HashMap<String, Vec<(String, String, u64)>>,
    record: Value,
}

fn dev_id(s: &str) -> DevId {
    let (ma, mi) = s
        .trim()
        .split_once(':')
        .unwrap_or_else(|| panic!("not M:m: {s}"));
    DevId {
        major: ma.parse().unwrap(),
        minor: mi.parse().unwrap(),
    }
}

fn views(dir: &Path) -> Views {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()))
    };
    let requests = read("requests")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let map_json: Vec<Value> = serde_json::from_str(&read("map.json")).unwrap();
    let map = map_json
        .iter()
        .filter(|e| e["data"] == true && e["offset"].is_u64())
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut blocks = HashMap::new();
    for l in read("blocks").lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let part = (f[2] != "-").then(|| (f[2].parse().unwrap(), f[3].to_owned()));
        blocks.insert(dev_id(f[1]), (f[0].to_owned(), part));
    }
    let dm_num: HashMap<String, DevId> = read("dmsetup-info")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| {
                (
                    f[0].to_owned(),
                    DevId {
                        major: f[1].parse().unwrap(),
                        minor: f[2].parse().unwrap(),
                    },
                )
            })
        })
        .collect();
    let mut dm: HashMap<DevId, Vec<DmLine>> = HashMap::new();
    for l in read("dmsetup-table").lines() {
        let Some((name, rest)) = l.split_once(": ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let id = dm_num[name];
        dm.entry(id).or_default().push((
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].to_owned(),
            f[3..].iter().map(|s| s.to_string()).collect(),
        ));
    }
    let btrfs = parse_btrfs_chunks(
        &std::fs::read_to_string(dir.join("btrfs-chunks")).unwrap_or_default(),
        &std::fs::read_to_string(dir.join("btrfs-devs")).unwrap_or_default(),
        &blocks,
    );
    Views {
        requests,
        map,
        extents: parse_filefrag(&read("filefrag"), 0),
        fs_dev: dev_id(&read("fs-dev")),
        blocks,
        dm,
        btrfs,
        thin: parse_thin_dump(&std::fs::read_to_string(dir.join("thin-dump")).unwrap_or_default()),
        md: {
            let mut md: HashMap<String, Vec<(String, String, u64)>> = HashMap::new();
            for l in read("md").lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                md.entry(f[0].to_owned()).or_default().push((
                    f[2].to_owned(),
                    f[1].to_owned(),
                    f[3].parse().unwrap(),
                ));
            }
            md
        },
        multipath: read("multipath")
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().map(str::to_owned);
                Some((f.next()?, f.collect()))
            })
            .collect(),
        // The summary is the JSON object the output ends with (the traced command
        // shares its standard output).
        record: {
            let text = read("record.json");
            let at = text.find("\n{").map_or(0, |i| i + 1);
            serde_json::from_str(&text[at..])
                .unwrap_or_else(|e| panic!("{}: record.json: {e}", dir.display()))
        },
    }
}

/// Where sectors `[s, s + n)` of the image's filesystem are: on its device, or on btrfs
/// (filefrag's sectors are then its logical ones), on each chunk stripe's device, each
/// copy of a chunk as a mirror's member.
fn fs_down(v: &Views, s: u64, n: u64, out: &mut Vec<Hop>) {
    if v.btrfs.is_empty() {
        return down(v, v.fs_dev, s, n, None, out);
    }
    let (mut x, end) = (s * 512, (s + n) * 512);
    while x < end {
        let (start, len, stripes) = v
            .btrfs
            .iter()
            .find(|(c, l, _)| *c <= x && x < c + l)
            .unwrap_or_else(|| panic!("btrfs logical byte {x} in no chunk"));
        let piece = (start + len).min(end) - x;
        let mirrored = stripes.len() > 1;
        for (i, (dev, off)) in stripes.iter().enumerate() {
            let leg = mirrored.then_some(i);
            down(v, *dev, (off + x - start) / 512, piece / 512, leg, out);
        }
        x += piece;
    }
}

/// A device's sectors `(dev, start, count)` and, below a mirror, its member's number.
type Hop = (DevId, u64, u64, Option<usize>);

/// Where sectors `[s, s + n)` of `dev` are, on `dev` and every device below it down to
/// the disks, by the stack's own tables: partition starts from sysfs, dm linear,
/// striped and crypt targets from `dmsetup table` (striped: the chunk arithmetic of
/// dm-stripe; crypt: its device and offset, after cipher, key and IV offset), md RAID1
/// members from `mdadm --detail` and their data offsets from `mdadm --examine`. Each
/// hop below a mirror carries its member's number.
fn down(v: &Views, dev: DevId, s: u64, n: u64, leg: Option<usize>, out: &mut Vec<Hop>) {
    out.push((dev, s, n, leg));
    let name = &v.blocks[&dev].0;
    if let Some(members) = v.md.get(name) {
        for (i, (member, level, offset)) in members.iter().enumerate() {
            assert_eq!(level, "raid1", "no arithmetic here for md {level}");
            let id = v
                .blocks
                .iter()
                .find(|(_, (n, _))| n == member)
                .map(|(id, _)| *id)
                .unwrap_or_else(|| panic!("no block device {member}"));
            down(v, id, offset + s, n, Some(leg.unwrap_or(0) * 16 + i), out);
        }
    } else if let Some(table) = v.dm.get(&dev) {
        for (start, len, target, args) in table {
            let (lo, hi) = (s.max(*start), (s + n).min(start + len));
            if lo >= hi {
                continue;
            }
            match target.as_str() {
                "linear" => {
                    let off: u64 = args[1].parse().unwrap();
                    down(v, dev_id(&args[0]), off + lo - start, hi - lo, leg, out);
                }
                "striped" => {
                    let stripes: u64 = args[0].parse().unwrap();
                    let chunk: u64 = args[1].parse().unwrap();
                    let mut x = lo - start;
                    while x < hi - start {
                        let (c, within) = (x / chunk, x % chunk);
                        let piece = (chunk - within).min(hi - start - x);
                        let k = (c % stripes) as usize;
                        let off: u64 = args[3 + 2 * k].parse().unwrap();
                        down(
                            v,
                            dev_id(&args[2 + 2 * k]),
                            off + (c / stripes) * chunk + within,
                            piece,
                            leg,
                            out,
                        );
                        x += piece;
                    }
                }
                "thin" => {
                    // The pool's table names its data device and block size; the
                    // pool's metadata, each block's place there.
                    let pool = v.dm[&dev_id(&args[0])]
                        .iter()
                        .find(|l| l.2 == "thin-pool")
                        .expect("a thin-pool table");
                    let data = dev_id(&pool.3[1]);
                    let bs: u64 = pool.3[2].parse().unwrap();
                    let map = &v.thin[&args[1].parse::<u64>().unwrap()];
                    let mut x = lo - start;
                    while x < hi - start {
                        let (b, within) = (x / bs, x % bs);
                        let piece = (bs - within).min(hi - start - x);
                        let d = map
                            .iter()
                            .find(|&&(o, _, n)| o <= b && b < o + n)
                            .map(|&(o, d, _)| d + b - o)
                            .unwrap_or_else(|| panic!("thin block {b} not provisioned"));
                        down(v, data, d * bs + within, piece, leg, out);
                        x += piece;
                    }
                }
                "crypt" => {
                    let off: u64 = args[4].parse().unwrap();
                    down(v, dev_id(&args[3]), off + lo - start, hi - lo, leg, out);
                }
                other => panic!("no arithmetic here for dm target '{other}'"),
            }
        }
    } else if let Some((_, Some((start, disk)))) = v.blocks.get(&dev) {
        let disk_id = v
            .blocks
            .iter()
            .find(|(_, (name, _))| name == disk)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("no disk {disk}"));
        down(v, disk_id, start + s, n, leg, out);
    }
}

/// Block devices by number: name, and for a partition its start and disk's name.
type Blocks = HashMap<DevId, (String, Option<(u64, String)>)>;

/// A btrfs chunk: logical start, length, and each stripe's device and byte.
type BtrfsChunk = (u64, u64, Vec<(DevId, u64)>);

/// btrfs-progs' chunk tree dump: each chunk's logical start and length and its stripes,
/// their devices named by devid through `btrfs filesystem show` (`devid path`).
fn parse_btrfs_chunks(dump: &str, devs: &str, blocks: &Blocks) -> Vec<BtrfsChunk> {
    let by_devid: HashMap<u64, DevId> = devs
        .lines()
        .filter_map(|l| {
            let (id, path) = l.split_once(' ')?;
            let name = path.trim().rsplit('/').next()?;
            let dev = blocks.iter().find(|(_, (n, _))| n == name)?.0;
            Some((id.parse().ok()?, *dev))
        })
        .collect();
    let mut out: Vec<BtrfsChunk> = Vec::new();
    for l in dump.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if l.contains("CHUNK_ITEM") {
            let logical = l
                .split("CHUNK_ITEM ")
                .nth(1)
                .and_then(|r| r.split(')').next());
            out.push((logical.unwrap().trim().parse().unwrap(), 0, Vec::new()));
        } else if let Some(c) = out.last_mut() {
            if w.first() == Some(&"length") {
                c.1 = w[1].parse().unwrap();
            } else if w.first() == Some(&"stripe") && w.get(2) == Some(&"devid") {
                let devid: u64 = w[3].parse().unwrap();
                c.2.push((by_devid[&devid], w[5].parse().unwrap()));
            }
        }
    }
    out
}

/// thin_dump's XML: each device's single and range mappings, as (origin block, data
/// block, blocks).
fn parse_thin_dump(xml: &str) -> HashMap<u64, Vec<(u64, u64, u64)>> {
    let attr = |l: &str, name: &str| -> Option<u64> {
        let at = l.find(&format!(" {name}=\""))? + name.len() + 3;
        l[at..].split('"').next()?.parse().ok()
    };
    let mut out: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut dev = None;
    for l in xml.lines() {
        if l.contains("<device ") {
            dev = attr(l, "dev_id");
        } else if let Some(d) = dev {
            let m = if l.contains("<single_mapping ") {
                attr(l, "origin_block")
                    .zip(attr(l, "data_block"))
                    .map(|(o, b)| (o, b, 1))
            } else if l.contains("<range_mapping ") {
                match (
                    attr(l, "origin_begin"),
                    attr(l, "data_begin"),
                    attr(l, "length"),
                ) {
                    (Some(o), Some(b), Some(n)) => Some((o, b, n)),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(m) = m {
                out.entry(d).or_default().push(m);
            }
        }
    }
    out
}

/// Is `dev` a disk (no table, not a partition, not an md array)?
fn is_disk(v: &Views, dev: DevId) -> bool {
    !v.dm.contains_key(&dev)
        && matches!(v.blocks.get(&dev), Some((name, None)) if !v.md.contains_key(name))
}

/// The host file's byte ranges holding guest bytes `[off, off + len)`.
fn host_ranges(v: &Views, off: u64, len: u64) -> Vec<(u64, u64)> {
    v.map
        .iter()
        .filter(|&&(g, l, _)| g < off + len && off < g + l)
        .map(|&(g, l, h)| {
            let (lo, hi) = (off.max(g), (off + len).min(g + l));
            (h + lo - g, hi - lo)
        })
        .collect()
}

/// Is there a remap event from `dev` (a partition) of a bio starting at or before
/// `sector`, moved by `delta` sectors (the partition's start)?
fn remapped_from(t: &Trace, dev: DevId, sector: u64, delta: u64) -> bool {
    let kdev = viopath_probes::abi::kernel_dev(dev.major, dev.minor) as u64;
    t.events.iter().any(|e| {
        e.kind == EventKind::BioRemap as u8
            && e.a[2] & 0xffff_ffff == kdev
            && e.a[3] <= sector
            && e.a[1].wrapping_sub(e.a[3]) == delta
    })
}

/// Check one stack: the recording lost nothing; the trace's block events cover every
/// device's sectors the tables say each request touched; the report (made here, on
/// another kernel) has one row per request, each complete, on
/// the disks the tables say. Returns the bottom disks' names.
fn check_stack(boot: &Boot, stack: &str) -> Vec<String> {
    let dir = boot.share.join(stack);
    let v = views(&dir);
    let trace = dir.join("trace");
    assert_eq!(v.record["lost"], 0, "{stack}: events lost: {}", v.record);

    // Expected devices and sectors, request by request.
    let t = read_trace(&trace);
    let mut bottoms: Vec<String> = Vec::new();
    for (op, off, len) in &v.requests {
        if op == "flush" {
            continue;
        }
        let ranges = host_ranges(&v, *off, *len);
        assert_eq!(
            ranges.iter().map(|r| r.1).sum::<u64>(),
            *len,
            "{stack}: qemu-img map does not hold {op} {off}+{len} as data"
        );
        for (h, l) in ranges {
            for (first, end) in disk_sectors_of(&v.extents, h, l) {
                let mut hops = Vec::new();
                fs_down(&v, first, end - first, &mut hops);
                // Whether each hop's sectors are in the trace, and the disk it names.
                let seen = |&(dev, s, n, _): &Hop| -> (bool, Option<String>) {
                    let (name, part) = &v.blocks[&dev];
                    if let Some((start, _)) = part {
                        // A partition's bios are remapped to its disk before they are
                        // queued: the kernel's remap events name it, with its start.
                        return (remapped_from(&t, dev, s, *start), None);
                    }
                    if is_disk(&v, dev) {
                        let mut devs = vec![dev];
                        devs.extend(path_disks(&t, &v, dev, name));
                        let ok = covered_on(&t, &devs, &[EventKind::RqIssue], s, n);
                        (ok, Some(name.clone()))
                    } else {
                        (covered_on(&t, &[dev], &[EventKind::BioQueue], s, n), None)
                    }
                };
                // A read of a mirror is served by one member: all of one member's hops
                // must be there; a write goes to every member.
                let legs: Vec<usize> = {
                    let mut l: Vec<usize> = hops.iter().filter_map(|h| h.3).collect();
                    l.sort();
                    l.dedup();
                    l
                };
                let leg_ok =
                    |leg: usize| hops.iter().filter(|h| h.3 == Some(leg)).all(|h| seen(h).0);
                let served: Vec<usize> = if op == "read" && !legs.is_empty() {
                    let one = legs.iter().copied().find(|&l| leg_ok(l));
                    assert!(
                        one.is_some(),
                        "{stack}: {op} {off}+{len}: no mirror member has all of it: {hops:?}"
                    );
                    one.into_iter().collect()
                } else {
                    legs
                };
                for h in hops
                    .iter()
                    .filter(|h| h.3.is_none_or(|l| served.contains(&l)))
                {
                    let (ok, disk) = seen(h);
                    let (dev, s, n, _) = *h;
                    assert!(
                        ok,
                        "{stack}: {op} {off}+{len}: the trace's block events on {} ({dev}) do not cover sectors {s}+{n}",
                        v.blocks[&dev].0
                    );
                    if let Some(d) = disk
                        && !bottoms.contains(&d)
                    {
                        bottoms.push(d);
                    }
                }
            }
        }
    }

    // The report, here: one complete row per request, on those disks.
    let csv = dir.join("rows.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_viopath"))
        .args(["report", "-q", "--format", "csv", "-o"])
        .arg(&csv)
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{stack}: report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = csv_rows(&csv);
    let mut want: Vec<(String, String, String)> = v
        .requests
        .iter()
        .map(|(op, off, len)| {
            if op == "flush" {
                (op.clone(), String::new(), "0".into())
            } else {
                (op.clone(), off.to_string(), len.to_string())
            }
        })
        .collect();
    let mut got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r["op"].clone(), r["offset"].clone(), r["bytes"].clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "{stack}: the report's rows are not qemu-io's requests"
    );
    for r in &rows {
        assert!(
            r["partial"].is_empty(),
            "{stack}: partial row {} {} {}: {}",
            r["op"],
            r["offset"],
            r["bytes"],
            r["partial"]
        );
        assert!(
            bottoms.contains(&r["device"]) || r["op"] == "flush",
            "{stack}: row {} {} on {}, not on {bottoms:?}",
            r["op"],
            r["offset"],
            r["device"]
        );
    }
    bottoms
}

/// An NVMe multipath head's path disks, where its requests are issued: the devices
/// the kernel's remap events move its bios to that sysfs gives no number, checked
/// against sysfs (`multipath`: the head has hidden path disks).
fn path_disks(t: &Trace, v: &Views, head: DevId, name: &str) -> Vec<DevId> {
    let k = u64::from(kernel_dev(head.major, head.minor));
    let mut paths: Vec<DevId> = t
        .events
        .iter()
        .filter(|e| e.kind == EventKind::BioRemap as u8 && e.a[2] & 0xffff_ffff == k)
        .map(|e| {
            let (major, minor) = split_kernel_dev((e.a[2] >> 32) as u32);
            DevId { major, minor }
        })
        .filter(|d| *d != head && !v.blocks.contains_key(d))
        .collect();
    paths.sort();
    paths.dedup();
    if !paths.is_empty() {
        assert!(
            v.multipath.iter().any(|(h, p)| h == name && !p.is_empty()),
            "{name}'s bios move to {paths:?}, but sysfs lists no paths of it: {:?}",
            v.multipath
        );
    }
    paths
}

/// The kernel-function probes (ext4's file IO, device-mapper's submission): each
/// attached as one of `kinds` and its events in the trace.
fn check_function_probes(boot: &Boot, stack: &str, kinds: &[&str]) {
    let v = views(&boot.share.join(stack));
    let probes = v.record["probes"].as_array().unwrap();
    for name in [
        "ext4_file_read_iter",
        "ext4_file_read_iter.return",
        "ext4_file_write_iter",
        "ext4_file_write_iter.return",
        "dm_submit_bio",
        "clone_endio",
    ] {
        let p = probes
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{stack}: no probe {name} tried"));
        assert!(
            p["attached"] == true && kinds.iter().any(|k| p["attach"] == *k),
            "{stack}: {name} not attached as one of {kinds:?}: {p}"
        );
    }
    for event in ["fs_enter", "fs_exit", "dm_submit"] {
        let n = v.record["events_by_probe"][event].as_u64().unwrap_or(0);
        assert!(
            n > 0,
            "{stack}: no {event} events: {}",
            v.record["events_by_probe"]
        );
    }
}

/// What did not attach on this kernel, a line each (for docs/lab.md).
fn not_attached(boot: &Boot, stack: &str) -> Vec<String> {
    let v = views(&boot.share.join(stack));
    v.record["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["attached"] == false)
        .map(|p| format!("{} ({}): {}", p["name"], p["attach"], p["note"]))
        .collect()
}

/// The dm and md stacks (LVM linear in both attach modes, LVM striped, dm-crypt, md
/// RAID1, LVM thin) and btrfs on one Debian kernel: what the recorder saw, and
/// that the join made every row complete, on the disks the tables say.
fn lab_dm_stacks(suite: &str) {
    let Some((lab, prefix)) = lab(suite) else {
        return;
    };
    let boot = boot(
        &lab,
        &prefix,
        &[
            "lvm-linear.sh",
            "lvm-striped.sh",
            "crypt.sh",
            "md-raid1.sh",
            "thin.sh",
            "btrfs.sh",
        ],
    );
    for stack in ["lvm-linear", "lvm-linear-kprobe"] {
        assert_eq!(check_stack(&boot, stack), ["nvme0n1"], "{stack}");
    }
    let mut disks = check_stack(&boot, "lvm-striped");
    disks.sort();
    assert_eq!(disks, ["nvme0n1", "sda"], "striped over both PVs");
    assert_eq!(check_stack(&boot, "crypt"), ["sda"], "crypt");
    let mut disks = check_stack(&boot, "md-raid1");
    disks.sort();
    assert_eq!(disks, ["nvme0n1", "sda"], "writes to both members");
    assert_eq!(check_stack(&boot, "thin"), ["vda"], "thin");
    assert_eq!(check_stack(&boot, "btrfs"), ["nvme0n1"], "btrfs");
    // ext4 and dm_mod are modules in Debian's kernels: fentry/fexit and tp_btf on their
    // code are loaded against the module's own BTF.
    check_function_probes(&boot, "lvm-linear", &["fentry", "fexit"]);
    let v = views(&boot.share.join("lvm-linear"));
    for name in [
        "ext4_sync_file_enter",
        "ext4_sync_file_exit",
        "io_uring_submit_req",
        "io_uring_complete",
    ] {
        let p = v.record["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no probe {name} tried"));
        assert_eq!(p["attached"], true, "{name} on {}: {p}", lab.release);
    }
    check_function_probes(&boot, "lvm-linear-kprobe", &["kprobe", "kretprobe"]);
    eprintln!(
        "lab {}: not attached:\n  {}",
        lab.release,
        not_attached(&boot, "lvm-linear").join("\n  ")
    );
}

#[test]
fn lab_debian_6_1_device_mapper() {
    lab_dm_stacks("bookworm");
}

#[test]
fn lab_debian_6_12_device_mapper() {
    lab_dm_stacks("bookworm-backports");
}
