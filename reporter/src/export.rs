//! The per-IO export: one row per IO with every layer and boundary, as CSV or Parquet,
//! streamed in batches so that an export never holds the whole trace.

use crate::join::{IoRow, flag_names, reason_names};
use crate::layers::{Boundary, LAYER_NAMES, NL, split};
use crate::layout::Layout;
use crate::report::ReportError;
use polars_core::prelude::*;
use polars_io::prelude::*;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Per-IO export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Parquet,
}

/// Rows per batch written.
const BATCH: usize = 1 << 16;

/// Streams rows to a CSV or Parquet file.
pub(crate) struct Exporter {
    rows: Vec<IoRow>,
    writer: ExportWriter,
    error: Option<PolarsError>,
}

type Out = BufWriter<Box<dyn Write + Send>>;

enum ExportWriter {
    Csv(polars_io::csv::write::BatchedWriter<Out>),
    Parquet(Box<polars_io::parquet::write::BatchedWriter<Out>>),
}

pub(crate) fn export_frame(rows: &[IoRow], layout: &Layout) -> PolarsResult<DataFrame> {
    let n = rows.len();
    let mut cols: Vec<Column> = Vec::with_capacity(16 + 2 * NL);
    cols.push(Column::new(
        "id".into(),
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "op".into(),
        rows.iter().map(|r| r.op.name()).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "offset".into(),
        rows.iter()
            .map(|r| r.offset.map(|o| o.0))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "bytes".into(),
        rows.iter().map(|r| r.bytes).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "source".into(),
        rows.iter()
            .map(|r| match r.source {
                crate::join::Source::Virtio => "virtio",
                crate::join::Source::QemuBlock => "qemu_block",
            })
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "device".into(),
        rows.iter()
            .map(|r| (r.bottom_dev != 0).then(|| layout.device_name(r.bottom_dev)))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "vm".into(),
        rows.iter()
            .map(|r| layout.vm_name(r.vm))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "disk".into(),
        rows.iter()
            .map(|r| r.disk.map(|d| layout.disk_name(d)))
            .collect::<Vec<_>>(),
    ));
    // The guest file (or filesystem structure) at the IO's first byte.
    let names: Vec<Option<crate::layout::GuestName>> = rows
        .iter()
        .map(|r| r.offset.and_then(|o| layout.guest_name(r.disk, o)))
        .collect();
    cols.push(Column::new(
        "guest_file".into(),
        names
            .iter()
            .map(|g| g.as_ref().map(|g| g.what))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "guest_file_offset".into(),
        names
            .iter()
            .map(|g| g.as_ref().and_then(|g| g.file_offset))
            .collect::<Vec<_>>(),
    ));
    let mut e2e = Vec::with_capacity(n);
    let mut layers: Vec<Vec<Option<u64>>> = (0..NL).map(|_| Vec::with_capacity(n)).collect();
    for r in rows {
        let (l, t) = split(&r.b);
        e2e.push(t);
        for (i, v) in l.iter().enumerate() {
            layers[i].push(*v);
        }
    }
    cols.push(Column::new("e2e_ns".into(), e2e));
    for (i, v) in layers.into_iter().enumerate() {
        cols.push(Column::new(format!("{}_ns", LAYER_NAMES[i]).into(), v));
    }
    for b in Boundary::ALL {
        cols.push(Column::new(
            format!("t_{}", b.name()).into(),
            rows.iter()
                .map(|r| (r.b[b] != 0).then_some(r.b[b]))
                .collect::<Vec<_>>(),
        ));
    }
    cols.push(Column::new(
        "host_ios".into(),
        rows.iter().map(|r| r.host_ios).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "meta_ios".into(),
        rows.iter().map(|r| r.meta_ios).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "meta_ns".into(),
        rows.iter().map(|r| r.meta_ns).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "throttle_ns".into(),
        rows.iter().map(|r| r.throttle_ns).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "readahead_bytes".into(),
        rows.iter().map(|r| r.readahead_bytes).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "synced_bytes".into(),
        rows.iter().map(|r| r.synced_bytes).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "dirty_wait_ns".into(),
        rows.iter().map(|r| r.dirty_wait_ns).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "bios".into(),
        rows.iter().map(|r| r.bios).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "requests".into(),
        rows.iter().map(|r| r.requests).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "flags".into(),
        rows.iter().map(|r| flag_names(r.flags)).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "partial".into(),
        rows.iter()
            .map(|r| reason_names(r.partial))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "merged_into".into(),
        rows.iter().map(|r| r.merged_into).collect::<Vec<_>>(),
    ));
    DataFrame::new(n, cols)
}

impl Exporter {
    /// An export to `path` (`-`: standard output).
    pub(crate) fn create(
        path: &Path,
        format: ExportFormat,
        layout: &Layout,
    ) -> Result<Exporter, ReportError> {
        let w: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(path)?)
        };
        let f = BufWriter::with_capacity(1 << 20, w);
        let schema = export_frame(&[], layout)?.schema().as_ref().clone();
        let writer = match format {
            ExportFormat::Csv => ExportWriter::Csv(CsvWriter::new(f).batched(&schema)?),
            ExportFormat::Parquet => {
                ExportWriter::Parquet(Box::new(ParquetWriter::new(f).batched(&schema)?))
            }
        };
        Ok(Exporter {
            rows: Vec::with_capacity(BATCH),
            writer,
            error: None,
        })
    }

    /// One more row; a full batch is written out.
    pub(crate) fn push(&mut self, row: &IoRow, layout: &Layout) {
        self.rows.push(row.clone());
        if self.rows.len() >= BATCH {
            self.flush(layout);
        }
    }

    /// Write the rows held. The first error is kept for [`Exporter::finish`]: the
    /// collector goes on with the report.
    fn flush(&mut self, layout: &Layout) {
        if self.rows.is_empty() || self.error.is_some() {
            return;
        }
        let r = export_frame(&self.rows, layout).and_then(|df| match &mut self.writer {
            ExportWriter::Csv(w) => w.write_batch(&df),
            ExportWriter::Parquet(w) => w.write_batch(&df),
        });
        if let Err(e) = r {
            self.error = Some(e);
        }
        self.rows.clear();
    }

    /// Write the rest and close the file.
    pub(crate) fn finish(mut self, layout: &Layout) -> Result<(), ReportError> {
        self.flush(layout);
        if let Some(e) = self.error {
            return Err(e.into());
        }
        match &mut self.writer {
            ExportWriter::Csv(w) => w.finish()?,
            ExportWriter::Parquet(w) => {
                w.finish()?;
            }
        }
        Ok(())
    }
}
