//! Fuzz target for the trace reader: traces from the field are untrusted. Under `cargo
//! test` bolero runs it as a property test on random mutations of a small synthetic
//! trace (byte overwrites, half of them in the last 16 KiB, where the losses, layout
//! and end chunks that a complete trace is opened from live; and truncation). Opening,
//! reading every event and joining them must return, with a value or an error, and
//! never panic, nor give more events than the file has room for.

#[path = "../../tests/common/mutate.rs"]
mod mutate;

use mutate::{Hot, mutate};
use viopath_probes::trace::FILE_EVENT_SIZE;
use viopath_reporter::join::{IoRow, Join, JoinConfig, OtherIo, Sink};
use viopath_reporter::load_layout;
use viopath_reporter::reader::Trace;
use viopath_reporter::synth::{SynthConfig, generate};

struct Nothing;
impl Sink for Nothing {
    fn io(&mut self, _: &IoRow) {}
    fn other(&mut self, _: &OtherIo) {}
}

fn seed() -> Vec<u8> {
    let cfg = SynthConfig {
        ios: 300,
        lose_every: 40,
        ..SynthConfig::default()
    };
    let mut out = Vec::new();
    generate(&cfg, &mut out, |_| {}).unwrap();
    out
}

fn target(bytes: &[u8], dir: &std::path::Path) {
    let path = dir.join("fuzz.trace");
    std::fs::write(&path, bytes).unwrap();
    let Ok(trace) = Trace::open(&path) else {
        return;
    };
    let (layout, _) = load_layout(&trace, &[]);
    let mut join = Join::new(&layout, Nothing, JoinConfig::default());
    let mut events = trace.events();
    let mut n = 0usize;
    for e in &mut events {
        join.event(&e);
        n += 1;
    }
    let _ = join.finish();
    assert!(n <= bytes.len() / FILE_EVENT_SIZE);
    let (done, total) = events.position();
    assert!(done <= total, "{done} > {total}");
}

#[test]
fn fuzz_trace_reader() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    // The unmutated seed: complete, and every event read.
    let path = dir.path().join("seed.trace");
    std::fs::write(&path, &seed).unwrap();
    let t = Trace::open(&path).unwrap();
    assert!(t.info.complete && t.layout.is_some());
    let mut ev = t.events();
    assert!((&mut ev).count() > 300 * 20);
    assert!(ev.damage().is_none());
    target(&seed, dir.path());
    bolero::check!()
        .with_type::<(Vec<(u32, u8)>, Option<u32>)>()
        .with_iterations(3000)
        .for_each(|(muts, cut)| target(&mutate(&seed, muts, *cut, Hot::Tail(16384)), dir.path()));
}
