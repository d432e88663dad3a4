//! Corrupt and truncated images give errors that name the field and offset: no panic,
//! no allocation of what the file merely claims.

use std::path::{Path, PathBuf};
use std::process::Command;
use viopath_layouts::qcow2::{Chain, Qcow2Error, Qcow2Image};

fn qemu(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .expect("qemu tools are installed");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 1 GiB image with 64 KiB clusters and some data: L1 at 0x30000, refcount table at
/// 0x10000 (qemu-img's layout; checked below rather than assumed).
fn image(dir: &Path) -> PathBuf {
    let p = dir.join("good.qcow2");
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1G"],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 128k",
            "-c",
            "write -P 2 512M 64k",
            p.to_str().unwrap(),
        ],
    );
    p
}

fn patch(src: &Path, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = std::fs::read(src).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

fn open_bytes(b: Vec<u8>) -> Result<Chain, Qcow2Error> {
    let img = Qcow2Image::from_source(PathBuf::from("test.qcow2"), Box::new(b))?;
    let chain = Chain::single(img)?;
    chain.reverse_map(0)?;
    Ok(chain)
}

fn expect_err(b: Vec<u8>, field: &str) -> String {
    match open_bytes(b) {
        Ok(_) => panic!("corrupt image accepted (expected an error about {field})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(field), "error does not name {field}: {msg}");
            msg
        }
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn header_fields_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let good = image(dir.path());
    assert!(open_bytes(std::fs::read(&good).unwrap()).is_ok());
    expect_err(patch(&good, 20, &8u32.to_be_bytes()), "cluster_bits");
    expect_err(patch(&good, 20, &22u32.to_be_bytes()), "cluster_bits");
    // A huge L1 table is refused before anything is allocated for it.
    expect_err(patch(&good, 36, &u32::MAX.to_be_bytes()), "l1_size");
    // An L1 table too small for the virtual size.
    expect_err(patch(&good, 36, &1u32.to_be_bytes()), "l1_size");
    expect_err(
        patch(&good, 40, &(1u64 << 50).to_be_bytes()),
        "l1_table_offset",
    );
    expect_err(
        patch(&good, 40, &0x30001u64.to_be_bytes()),
        "l1_table_offset",
    );
    expect_err(
        patch(&good, 48, &(1u64 << 40).to_be_bytes()),
        "refcount_table_offset",
    );
    expect_err(
        patch(&good, 56, &u32::MAX.to_be_bytes()),
        "refcount_table_clusters",
    );
    expect_err(patch(&good, 60, &u32::MAX.to_be_bytes()), "nb_snapshots");
    expect_err(patch(&good, 96, &7u32.to_be_bytes()), "refcount_order");
    expect_err(patch(&good, 100, &105u32.to_be_bytes()), "header_length");
    let e = expect_err(
        patch(&good, 72, &(1u64 << 40).to_be_bytes()),
        "unknown incompatible feature",
    );
    assert!(e.contains("unsupported"));
    expect_err(patch(&good, 0, b"QFI\0"), "not a qcow2");
}

#[test]
fn table_entries_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let good = image(dir.path());
    let b = std::fs::read(&good).unwrap();
    let l1 = be64(&b, 40) as usize;
    let rt = be64(&b, 48) as usize;
    let l2 = (be64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    assert_ne!(l2, 0, "the image has an L2 table");
    // L2 table past EOF.
    let e = expect_err(
        patch(&good, l1, &((1u64 << 63) | (1 << 40)).to_be_bytes()),
        "L1[0]",
    );
    assert!(e.contains("past the end"), "{e}");
    // Reserved bits in an L1 entry and in an L2 entry.
    expect_err(
        patch(&good, l1, &(be64(&b, l1) | 1 << 60).to_be_bytes()),
        "reserved",
    );
    let e = expect_err(
        patch(&good, l2, &(be64(&b, l2) | 0x2).to_be_bytes()),
        "L2 entry for guest offset 0x0",
    );
    assert!(e.contains("reserved"), "{e}");
    // A data cluster past EOF, an unaligned one.
    expect_err(
        patch(&good, l2, &((1u64 << 63) | (1 << 40)).to_be_bytes()),
        "past the end",
    );
    expect_err(
        patch(&good, l2, &((1u64 << 63) | 0x50200).to_be_bytes()),
        "not cluster aligned",
    );
    // Refcount block past EOF.
    let e = expect_err(
        patch(&good, rt, &(1u64 << 40).to_be_bytes()),
        "refcount_table[0]",
    );
    assert!(e.contains("past the end"), "{e}");
}

#[test]
fn truncated_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = image(dir.path());
    let b = std::fs::read(&good).unwrap();
    for cut in [
        0,
        3,
        71,
        72,
        103,
        104,
        4096,
        65536,
        0x30000 + 4,
        b.len() / 2,
        b.len() - 1,
    ] {
        let r = open_bytes(b[..cut.min(b.len())].to_vec());
        if cut < b.len() - 1 {
            assert!(r.is_err(), "truncated at {cut} accepted");
        }
    }
}

#[test]
fn backing_loops_and_missing_backing_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "1M"],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            b.to_str().unwrap(),
        ],
    );
    // Point a back at b without qemu-img's checks.
    qemu(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            a.to_str().unwrap(),
        ],
    );
    match Chain::open(&b) {
        Err(Qcow2Error::BackingLoop { path }) => assert!(path.ends_with("b.qcow2"), "{path:?}"),
        other => panic!("expected a backing loop, got {other:?}"),
    }
    qemu(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "gone.qcow2",
            "-F",
            "qcow2",
            a.to_str().unwrap(),
        ],
    );
    let e = Chain::open(&b).unwrap_err().to_string();
    assert!(e.contains("gone.qcow2"), "{e}");
}
