//! device-mapper tables, as `dmsetup table` prints them, and the remapping of linear,
//! striped and crypt targets.

use super::{DevId, HostError};
use crate::addr::DeviceSector;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DmTargetKind {
    /// `linear <dev> <offset>`
    Linear { dev: DevId, offset: u64 },
    /// `striped <#stripes> <chunk sectors> (<dev> <offset>)+`
    Striped {
        chunk_sectors: u64,
        stripes: Vec<(DevId, u64)>,
    },
    /// `crypt <cipher> <key> <iv_offset> <dev> <offset> [<#opt> <opt>...]`: each sector
    /// at `offset` on `dev`, as linear (its bios are encrypted copies, queued there by
    /// dm-crypt's workers).
    Crypt { dev: DevId, offset: u64 },
    /// Any other target: reported, not remapped.
    Other { target: String, args: String },
}

/// One table line: sectors `[start, start + len)` of the dm device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmTarget {
    pub start: u64,
    pub len: u64,
    #[serde(flatten)]
    pub kind: DmTargetKind,
}

impl DmTarget {
    /// Map `sector` (of the dm device, inside this target) to (device, sector) and the
    /// number of sectors that stay contiguous from there.
    pub fn remap(&self, sector: DeviceSector) -> Option<(DevId, DeviceSector, u64)> {
        let sector = sector.0;
        let rel = sector - self.start;
        let left = self.start + self.len - sector;
        match &self.kind {
            DmTargetKind::Linear { dev, offset } | DmTargetKind::Crypt { dev, offset } => {
                Some((*dev, DeviceSector(offset + rel), left))
            }
            DmTargetKind::Striped {
                chunk_sectors,
                stripes,
            } => {
                let chunk = rel / chunk_sectors;
                let within = rel % chunk_sectors;
                let n = stripes.len() as u64;
                let (dev, offset) = stripes[(chunk % n) as usize];
                Some((
                    dev,
                    DeviceSector(offset + (chunk / n) * chunk_sectors + within),
                    left.min(chunk_sectors - within),
                ))
            }
            DmTargetKind::Other { .. } => None,
        }
    }
}

/// Parse table text. Lines may carry a `name: ` prefix (the output of `dmsetup table`
/// for all devices); `resolve_dev` turns a device argument (`7:0` or `/dev/loop0`) into
/// a device number. Returns (name or "", target) per line.
pub fn parse_table(
    text: &str,
    resolve_dev: &dyn Fn(&str) -> Result<DevId, HostError>,
) -> Result<Vec<(String, DmTarget)>, HostError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "No devices found" {
            continue;
        }
        let bad = |why: &str| HostError::DmTable {
            line: n + 1,
            text: line.to_owned(),
            problem: why.to_owned(),
        };
        let (name, rest) = match line.split_once(": ") {
            Some((name, rest)) if !name.contains(' ') => (name.to_owned(), rest),
            _ => (String::new(), line),
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 3 {
            return Err(bad("expected '<start> <length> <target> <args>'"));
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(&format!("'{s}' is not a number")))
        };
        let start = num(f[0])?;
        let len = num(f[1])?;
        if len == 0 || start.checked_add(len).is_none() {
            return Err(bad("empty or overflowing target"));
        }
        let kind = match f[2] {
            "linear" => {
                if f.len() != 5 {
                    return Err(bad("linear takes '<dev> <offset>'"));
                }
                DmTargetKind::Linear {
                    dev: resolve_dev(f[3])?,
                    offset: num(f[4])?,
                }
            }
            "striped" => {
                let stripes = num(f.get(3).ok_or_else(|| bad("missing stripe count"))?)?;
                let chunk = num(f.get(4).ok_or_else(|| bad("missing chunk size"))?)?;
                if stripes == 0 || chunk == 0 || f.len() as u64 != 5 + 2 * stripes {
                    return Err(bad("striped takes '<#stripes> <chunk> (<dev> <offset>)+'"));
                }
                let mut v = Vec::new();
                for i in 0..stripes as usize {
                    v.push((resolve_dev(f[5 + 2 * i])?, num(f[6 + 2 * i])?));
                }
                DmTargetKind::Striped {
                    chunk_sectors: chunk,
                    stripes: v,
                }
            }
            "crypt" => {
                // The key (masked, or a keyring reference) is one word; optional
                // parameters may follow the offset.
                if f.len() < 8 {
                    return Err(bad(
                        "crypt takes '<cipher> <key> <iv_offset> <dev> <offset> [<#opt> <opt>...]'",
                    ));
                }
                DmTargetKind::Crypt {
                    dev: resolve_dev(f[6])?,
                    offset: num(f[7])?,
                }
            }
            other => DmTargetKind::Other {
                target: other.to_owned(),
                args: f[3..].join(" "),
            },
        };
        out.push((name, DmTarget { start, len, kind }));
    }
    Ok(out)
}
