//! What the HTML report draws beyond the latency table, collected while rows stream
//! past ([`Pictures`]): latency histograms per (op, layer) and IOPS and latency over
//! time in a bounded number of slots. The collector keeps it; the pages draw it.

use crate::compare::Run;
use crate::join::IoRow;
use crate::layers::split;

/// What the HTML report draws beyond the latency table, collected while rows stream
/// past: latency histograms per (op, layer) and IOPS and latency over time. Its size is
/// bounded (a few hundred KiB) whatever the trace length.
#[derive(Debug, Clone, Default)]
pub struct Pictures {
    pub hists: Run,
    pub timeline: Timeline,
}

impl Pictures {
    /// A complete row.
    pub fn add(&mut self, row: &IoRow) {
        let (layers, e2e) = split(&row.b);
        self.hists.add(row.op.name(), e2e, &layers);
        self.timeline.add(row, e2e);
    }
}

/// Time slots kept while recording; adjacent slots merge (and the slot width doubles)
/// when a trace outlasts them.
pub(crate) const SLOTS: usize = 512;
/// Latency bins per slot: a quarter octave each, from 256 ns.
pub(crate) const BINS: usize = 128;
/// Slot width to start with: 1 ms.
pub(crate) const FIRST_WIDTH: u64 = 1_000_000;

pub(crate) fn bin(ns: u64) -> usize {
    let x = (ns.max(256) as f64 / 256.0).log2() * 4.0;
    (x as usize).min(BINS - 1)
}

/// The geometric middle of a bin, ns.
pub(crate) fn bin_mid(b: usize) -> f64 {
    256.0 * 2f64.powf((b as f64 + 0.5) / 4.0)
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) ios: u32,
    pub(crate) bytes: u64,
    pub(crate) sum_ns: f64,
    pub(crate) bins: [u32; BINS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            ios: 0,
            bytes: 0,
            sum_ns: 0.0,
            bins: [0; BINS],
        }
    }
}

impl Slot {
    pub(crate) fn merge(&mut self, o: &Slot) {
        self.ios += o.ios;
        self.bytes += o.bytes;
        self.sum_ns += o.sum_ns;
        for (a, b) in self.bins.iter_mut().zip(o.bins.iter()) {
            *a += b;
        }
    }

    /// The q-quantile from the bins (within a quarter octave, ±9%).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        let want = ((q * self.ios as f64).ceil() as u64).max(1);
        let mut acc = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            acc += u64::from(c);
            if acc >= want {
                return bin_mid(i);
            }
        }
        bin_mid(BINS - 1)
    }
}

/// Complete IOs per op in time slots by completion time, from the first IO's start.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub(crate) t0: u64,
    pub(crate) width: u64,
    pub(crate) series: Vec<(&'static str, Vec<Slot>)>,
}

impl Timeline {
    pub(crate) fn add(&mut self, row: &IoRow, e2e: u64) {
        let start = row.b.iter().copied().filter(|&t| t != 0).min().unwrap_or(0);
        let end = row.b.iter().copied().max().unwrap_or(0);
        if end == 0 {
            return;
        }
        if self.width == 0 {
            self.t0 = start;
            self.width = FIRST_WIDTH;
        }
        let mut i = (end.saturating_sub(self.t0) / self.width) as usize;
        while i >= SLOTS {
            self.halve();
            i = (end.saturating_sub(self.t0) / self.width) as usize;
        }
        let op = row.op.name();
        let s = match self.series.iter().position(|(o, _)| *o == op) {
            Some(s) => s,
            None => {
                self.series.push((op, Vec::new()));
                self.series.len() - 1
            }
        };
        let slots = &mut self.series[s].1;
        if slots.len() <= i {
            slots.resize(i + 1, Slot::default());
        }
        let slot = &mut slots[i];
        slot.ios += 1;
        slot.bytes += row.bytes;
        slot.sum_ns += e2e as f64;
        slot.bins[bin(e2e)] += 1;
    }

    /// Merge slot pairs: twice as wide, half as many.
    pub(crate) fn halve(&mut self) {
        self.width *= 2;
        for (_, slots) in &mut self.series {
            *slots = merge_pairs(slots, 2);
        }
    }

    /// The series regrouped into at most `n` slots for drawing: (slot width in ns,
    /// per op the slots).
    pub(crate) fn coarse(&self, n: usize) -> (u64, Vec<(&'static str, Vec<Slot>)>) {
        let len = self.series.iter().map(|s| s.1.len()).max().unwrap_or(0);
        let k = len.div_ceil(n.max(1)).max(1);
        let series = self
            .series
            .iter()
            .map(|(op, slots)| {
                let mut v = merge_pairs(slots, k);
                v.resize(len.div_ceil(k), Slot::default());
                (*op, v)
            })
            .collect();
        (self.width * k as u64, series)
    }
}

pub(crate) fn merge_pairs(slots: &[Slot], k: usize) -> Vec<Slot> {
    slots
        .chunks(k)
        .map(|c| {
            let mut m = Slot::default();
            for s in c {
                m.merge(s);
            }
            m
        })
        .collect()
}

/// The lower edge of a bin, ns.
pub(crate) fn bin_lo(b: usize) -> f64 {
    256.0 * 2f64.powf(b as f64 / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Boundary;

    #[test]
    pub(crate) fn bins_are_quarter_octaves_and_contain_their_values() {
        for ns in [256u64, 300, 1000, 4096, 123_456, 9_999_999, 3_000_000_000] {
            let b = bin(ns);
            assert!(bin_lo(b) <= ns as f64 * 1.000_001, "{ns} {b}");
            assert!(bin_lo(b + 1) > ns as f64, "{ns} {b}");
        }
        assert_eq!(bin(0), 0);
        assert_eq!(bin(u64::MAX), BINS - 1);
    }

    #[test]
    pub(crate) fn slot_quantiles_are_within_a_quarter_octave() {
        let mut s = Slot::default();
        for ns in 1..=1000u64 {
            s.ios += 1;
            s.bins[bin(ns * 1000)] += 1;
        }
        let p99 = s.quantile(0.99);
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.1, "{p99}");
    }

    #[test]
    pub(crate) fn timelines_stay_bounded_and_keep_every_io() {
        let mut t = Timeline::default();
        let mut row = IoRow::example();
        for i in 0..10_000u64 {
            // Ten hours of IOs, one every 3.6 s.
            row.b[Boundary::Parsed] = 1 + i * 3_600_000_000;
            row.b[Boundary::Completed] = row.b[Boundary::Parsed] + 50_000;
            t.add(&row, 50_000);
        }
        let slots = &t.series[0].1;
        assert!(slots.len() <= SLOTS);
        assert_eq!(slots.iter().map(|s| u64::from(s.ios)).sum::<u64>(), 10_000);
        let (w, coarse) = t.coarse(150);
        assert!(coarse[0].1.len() <= 150);
        assert_eq!(
            coarse[0].1.iter().map(|s| u64::from(s.ios)).sum::<u64>(),
            10_000
        );
        assert!(w >= t.width);
    }
}
