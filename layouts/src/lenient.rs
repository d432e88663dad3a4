//! Reading JSON that may be damaged or from another version (a trace's chunks, its
//! layout snapshot) into typed structs without failing on one bad field: a field of
//! the wrong shape becomes its default and a list entry of the wrong shape is left
//! out, each counted, so the reader can say how much it skipped.
//!
//! Use [`lenient`] and [`lenient_list`] as `deserialize_with` on a struct's fields and
//! read the whole through [`parse`], which returns the count.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;
use std::cell::Cell;

/// A chunk read leniently: the value, and how many fields or entries of the wrong
/// shape were skipped (left at their defaults).
#[derive(Debug, Clone, Default)]
pub struct Parsed<T> {
    pub value: T,
    pub skipped: usize,
}

thread_local! {
    /// Entries skipped by the `lenient` deserializers of the chunk being parsed.
    static SKIPPED: Cell<usize> = const { Cell::new(0) };
}

/// Parse a chunk's JSON as `T`. Only JSON that is not an object of `T`'s shape at all
/// (not JSON, or not an object) is an error; a wrong field is skipped and counted.
pub fn parse<T: DeserializeOwned>(json: &Value) -> Result<Parsed<T>, serde_json::Error> {
    // serde would also take a struct from an array of its fields in order: a chunk
    // that is no object is no chunk of ours.
    if !json.is_object() {
        return Err(serde::de::Error::custom("not a JSON object"));
    }
    let before = SKIPPED.with(|s| s.replace(0));
    let value = T::deserialize(json);
    let skipped = SKIPPED.with(|s| s.replace(before));
    Ok(Parsed {
        value: value?,
        skipped,
    })
}

/// Note one skipped entry.
fn note_skipped() {
    SKIPPED.with(|s| s.set(s.get() + 1));
}

/// A field of the wrong shape becomes its default, counted.
pub fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
    d: D,
) -> Result<T, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(&v).unwrap_or_else(|_| {
        note_skipped();
        T::default()
    }))
}

/// A list whose entries of the wrong shape are left out, counted; not a list at all
/// is an empty one, counted.
pub fn lenient_list<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let v = Value::deserialize(d)?;
    let Value::Array(items) = v else {
        if !v.is_null() {
            note_skipped();
        }
        return Ok(Vec::new());
    };
    Ok(items
        .iter()
        .filter_map(|i| T::deserialize(i).map_err(|_| note_skipped()).ok())
        .collect())
}
