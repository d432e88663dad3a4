//! The join against real recordings kept from failed end-to-end runs
//! (`fixtures/recordings`), each a case the join once got wrong. The oracle is the
//! recording's own raw events, not the reporter's earlier output.

use viopath_layouts::GuestOffset;
use viopath_probes::abi::{EventKind, qemu_probe as q};
use viopath_reporter::join::{IoRow, Join, OtherIo, Sink, Source};
use viopath_reporter::reader::Trace;
use viopath_reporter::{join_config, load_layout};

#[derive(Default)]
struct Rows(Vec<IoRow>);
impl Sink for Rows {
    fn io(&mut self, row: &IoRow) {
        self.0.push(row.clone());
    }
    fn other(&mut self, _: &OtherIo) {}
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/recordings")
        .join(name)
}

/// A guest (aio=native, qcow2 on ext4 on a loop device) wrote 16 and 12 KiB; both writes
/// found their L2 table in qcow2's cache. Before the second write's interrupt, a guest
/// flush made QEMU write that table back. The join used to take the write-back for the
/// answered write's metadata IO (its table had been the thread's last lookup), so the
/// write waited for it and was reported partial, "a host IO never completed".
#[test]
fn a_flush_writing_back_a_table_leaves_the_answered_write_complete() {
    let t = Trace::open(&fixture("guest-write-then-flush-writeback.trace")).unwrap();
    let events: Vec<_> = t.events().collect();
    // Every guest request the recording saw answered, and every direct IO it saw
    // begin that the filesystem mapped, it saw complete: nothing is missing from it.
    let answered = events
        .iter()
        .filter(|e| e.kind == EventKind::Qemu as u8 && e.sub == q::VIRTIO_REQ_COMPLETE)
        .count();
    // A direct IO counts once the filesystem mapped it (a read at the end of the file
    // begins and returns without mapping, and never completes); kiocbs are reused.
    let mut began = std::collections::HashMap::new();
    let mut open = std::collections::HashSet::new();
    for e in &events {
        match e.kind {
            k if k == EventKind::DioBegin as u8 => {
                began.insert(e.tid, e.a[0]);
            }
            k if k == EventKind::DioMap as u8 => {
                if let Some(kiocb) = began.remove(&e.tid) {
                    open.insert(kiocb);
                }
            }
            k if k == EventKind::DioComplete as u8 => {
                open.remove(&e.a[0]);
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "direct IOs never completed: {open:x?}");
    assert!(answered > 100, "{answered} answered requests");

    let (layout, _) = load_layout(&t, &[]);
    let cfg = join_config(&t, &layout);
    let mut join = Join::new(&layout, Rows::default(), cfg);
    for e in &events {
        join.event(e);
    }
    let (Rows(rows), _) = join.finish();
    let virtio: Vec<&IoRow> = rows.iter().filter(|r| r.source == Source::Virtio).collect();
    assert_eq!(virtio.len(), answered);
    let partial: Vec<&&IoRow> = virtio.iter().filter(|r| r.partial != 0).collect();
    assert!(partial.is_empty(), "partial rows: {partial:?}");
    // The write the join got wrong: guest offset 0x11a000, 12 KiB, one host IO.
    let w = virtio
        .iter()
        .find(|r| r.offset == Some(GuestOffset(0x11_a000)) && r.bytes == 0x3000)
        .expect("the 12 KiB write");
    assert_eq!((w.host_ios, w.meta_ios), (1, 0), "{w:?}");
}
