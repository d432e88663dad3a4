//! Log-bucketed latency histograms: exact below 128 ns, then 128 buckets per power of
//! two (a quantile read from them is within 0.4%), with each bucket's exact sum so
//! means are exact. A run's histograms per (op, layer) are what `compare` resamples
//! and what the pages draw.

use std::collections::BTreeMap;

/// Histogram bucket of a latency in ns: exact below 128 ns, then 128 buckets per power
/// of two.
pub(crate) fn bucket(ns: u64) -> u32 {
    if ns < 128 {
        return ns as u32;
    }
    let e = 63 - ns.leading_zeros();
    let m = (ns >> (e - 7)) & 127;
    (e - 6) * 128 + m as u32
}

/// The middle of a bucket, in ns.
pub(crate) fn bucket_mid(b: u32) -> f64 {
    if b < 128 {
        return b as f64;
    }
    let e = b / 128 + 6;
    let m = (b % 128) as u64 + 128;
    let lo = (m << (e - 7)) as f64;
    lo + (1u64 << (e - 7)) as f64 / 2.0
}

/// Latencies of one (op, layer) in one run.
#[derive(Debug, Clone, Default)]
pub struct Hist {
    /// Bucket → (IOs, sum of their latencies in ns).
    buckets: BTreeMap<u32, (u64, f64)>,
    pub n: u64,
}

impl Hist {
    pub fn add(&mut self, ns: u64) {
        let b = self.buckets.entry(bucket(ns)).or_default();
        b.0 += 1;
        b.1 += ns as f64;
        self.n += 1;
    }

    /// Add another histogram's IOs.
    pub fn merge(&mut self, o: &Hist) {
        for (&b, &(c, sum)) in &o.buckets {
            let e = self.buckets.entry(b).or_default();
            e.0 += c;
            e.1 += sum;
        }
        self.n += o.n;
    }

    /// The sum of the latencies (exact up to f64 rounding).
    pub fn sum(&self) -> f64 {
        self.buckets.values().map(|b| b.1).sum()
    }

    /// The `q` quantile by nearest rank (the first value with at least ⌈q·n⌉ values at or
    /// below it), as the middle of its bucket: within 0.4%.
    pub fn quantile(&self, q: f64) -> f64 {
        let want = ((q * self.n as f64).ceil() as u64).max(1);
        let mut acc = 0;
        for (&b, &(c, _)) in &self.buckets {
            acc += c;
            if acc >= want {
                return bucket_mid(b);
            }
        }
        self.buckets
            .keys()
            .next_back()
            .map_or(0.0, |&b| bucket_mid(b))
    }

    /// (middle of the bucket in ns, IOs), fastest first: for drawing.
    pub fn counts(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets.iter().map(|(&b, &(c, _))| (bucket_mid(b), c))
    }

    pub(crate) fn dense(&self) -> Vec<Bucket> {
        self.buckets
            .iter()
            .map(|(&b, &(c, s))| (bucket_mid(b), c, s))
            .collect()
    }
}

/// A histogram bucket: (middle ns, IOs, sum of their ns).
pub(crate) type Bucket = (f64, u64, f64);
/// One run's buckets with a weight (resampled count) per bucket.
pub(crate) type Weighted<'a> = (&'a [Bucket], &'a [f64]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_0_4_percent() {
        for ns in [0u64, 1, 127, 128, 129, 1000, 55_555, 1 << 40, u64::MAX / 3] {
            let mid = bucket_mid(bucket(ns));
            assert!(
                (mid - ns as f64).abs() <= ns as f64 / 256.0 + 0.5,
                "{ns} → {mid}"
            );
        }
    }
}
