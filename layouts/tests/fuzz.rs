//! Fuzz targets for the qcow2 and ext4 readers. Under `cargo test` bolero runs them as
//! property tests: random mutations of the seed corpus in fixtures/fuzz (regenerate it
//! with fixtures/fuzz/make.sh). The readers must return, with a value or an error, and
//! never panic or run away. `cargo bolero test` runs the same targets with a fuzzing
//! engine where one is installed.

#[path = "../../tests/common/mutate.rs"]
mod mutate;

use mutate::{Hot, mutate};

use std::path::{Path, PathBuf};
use viopath_layouts::GuestOffset;
use viopath_layouts::guest::GuestLayout;
use viopath_layouts::qcow2::{Chain, Qcow2Image};
use viopath_layouts::source::ReadAt;

/// Headers and tables: the first 8 KiB.
const HEAD: Hot = Hot::Head(8192);

fn seeds(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/fuzz")
        .join(kind);
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v.into_iter().map(|(_, b)| b).collect()
}

fn qcow2_target(bytes: Vec<u8>) {
    let Ok(img) = Qcow2Image::from_source(PathBuf::from("fuzz.qcow2"), Box::new(bytes)) else {
        return;
    };
    let Ok(chain) = Chain::single(img) else {
        return;
    };
    let entries = chain.map_entries();
    let _ = chain.reverse_map(0);
    let mut buf = vec![0u8; 4096];
    for e in entries.iter().take(16) {
        let _ = chain.read_guest(
            &mut buf[..e.length.min(4096) as usize],
            GuestOffset(e.start),
        );
    }
}

fn ext4_target(bytes: Vec<u8>) {
    let disk: &[u8] = &bytes;
    if let Ok(layout) = GuestLayout::read(&disk) {
        for fs in &layout.filesystems {
            for path in fs.map.by_path.keys().take(8) {
                let _ = layout.locate_file(path, 0, None);
            }
        }
        for off in (0..disk.len() as u64).step_by(4096).take(64) {
            let _ = layout.owner(viopath_layouts::GuestOffset(off));
        }
    }
}

#[test]
fn fuzz_qcow2() {
    let seeds = seeds("qcow2");
    for s in &seeds {
        qcow2_target(s.clone());
    }
    bolero::check!()
        .with_type::<(u8, Vec<(u32, u8)>, Option<u32>)>()
        .with_iterations(20000)
        .for_each(|(pick, muts, cut)| {
            qcow2_target(mutate(
                &seeds[*pick as usize % seeds.len()],
                muts,
                *cut,
                HEAD,
            ))
        });
}

#[test]
fn fuzz_ext4() {
    let seeds = seeds("ext4");
    for s in &seeds {
        let disk: &[u8] = s;
        let layout = GuestLayout::read(&disk).expect("seed filesystems parse");
        assert_eq!(layout.filesystems.len(), 1);
        assert!(layout.filesystems[0].map.file_by_path("/sub/b").is_some());
        assert_eq!(disk.len(), ReadAt::len(&disk) as usize);
    }
    bolero::check!()
        .with_type::<(u8, Vec<(u32, u8)>, Option<u32>)>()
        .with_iterations(20000)
        .for_each(|(pick, muts, cut)| {
            ext4_target(mutate(
                &seeds[*pick as usize % seeds.len()],
                muts,
                *cut,
                HEAD,
            ))
        });
}
