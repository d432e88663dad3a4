//! Input mutation shared by the fuzz targets (`layouts/tests/fuzz.rs`,
//! `reporter/tests/fuzz_trace.rs`): few mutations keep most inputs valid enough to
//! reach the deep code.

// Each fuzz target uses one of the hot regions.
#![allow(dead_code)]

/// Where half of the overwrites go: the part of the input the parser reads first.
#[derive(Clone, Copy)]
pub enum Hot {
    /// The first this-many bytes (headers and tables).
    Head(usize),
    /// The last this-many bytes (a trace's losses, layout and end chunks).
    Tail(usize),
}

/// Apply up to four byte overwrites, half of them in the `hot` region, and truncate one
/// input in eight.
pub fn mutate(seed: &[u8], muts: &[(u32, u8)], cut: Option<u32>, hot: Hot) -> Vec<u8> {
    let mut b = seed.to_vec();
    if b.is_empty() {
        return b;
    }
    for &(pos, val) in muts.iter().take(4) {
        let at = (pos >> 1) as usize;
        let p = match (pos & 1 == 0, hot) {
            (true, Hot::Head(n)) => at % n,
            (true, Hot::Tail(n)) => b.len().saturating_sub(n) + at % n,
            (false, _) => at,
        };
        let i = p % b.len();
        b[i] = val;
    }
    if let Some(c) = cut.filter(|c| c % 8 == 0) {
        b.truncate((c / 8) as usize % (b.len() + 1));
    }
    b
}
