//! Fleet directories: per-IO Parquet exports of several hosts and runs, partitioned
//! hive-style, read back as one table by polars' own parquet scan (as DuckDB, Spark or
//! Trino would), and as runs by `compare::load`. The IO counts come from the synthetic
//! generator's ground truth.

use polars::prelude::*;
use viopath_reporter::synth::{SynthConfig, generate};
use viopath_reporter::{ExportFormat, Options, Partition, analyze, compare};

#[test]
fn a_multi_host_directory_reads_back_as_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    std::fs::create_dir(&fleet).unwrap();
    let mut expected = Vec::new();
    for (i, (host, run)) in [("db-1", "monday"), ("db-1", "tuesday"), ("web-7", "monday")]
        .into_iter()
        .enumerate()
    {
        let trace = dir.path().join(format!("{i}.trace"));
        let cfg = SynthConfig {
            ios: 300 + 100 * i as u64,
            seed: i as u64 + 1,
            ..SynthConfig::default()
        };
        let mut truths = 0u64;
        generate(
            &cfg,
            std::io::BufWriter::new(std::fs::File::create(&trace).unwrap()),
            |_| truths += 1,
        )
        .unwrap();
        let opts = Options {
            export: Some((fleet.clone(), ExportFormat::Parquet)),
            partition: Partition {
                host: Some(host.into()),
                run: Some(run.into()),
            },
            ..Options::default()
        };
        let (report, _) = analyze(&trace, &opts).unwrap();
        assert_eq!(
            report.exported_to.as_deref(),
            Some(
                fleet
                    .join(format!("host={host}/run={run}/ios.parquet"))
                    .as_path()
            )
        );
        expected.push((host, run, truths));
    }

    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            // Date inference needs polars' date types, which the reporter leaves out.
            try_parse_dates: false,
            ..HiveOptions::default()
        },
        ..ScanArgsParquet::default()
    };
    let path = PlRefPath::try_from_path(&fleet).unwrap();
    let df = LazyFrame::scan_parquet(path, args)
        .unwrap()
        .group_by([col("host"), col("run")])
        .agg([len().alias("ios")])
        .sort(["host", "run"], SortMultipleOptions::default())
        .collect()
        .unwrap();
    assert_eq!(df.height(), 3, "{df}");
    let hosts = df.column("host").unwrap().cast(&DataType::String).unwrap();
    let runs = df.column("run").unwrap().cast(&DataType::String).unwrap();
    let ios = df.column("ios").unwrap().cast(&DataType::UInt64).unwrap();
    for (i, (host, run, n)) in expected.iter().enumerate() {
        assert_eq!(hosts.str().unwrap().get(i), Some(*host), "{df}");
        assert_eq!(runs.str().unwrap().get(i), Some(*run), "{df}");
        assert_eq!(ios.u64().unwrap().get(i), Some(*n), "{df}");
    }

    // `viopath compare` takes the directory, or one host's part of it, as runs.
    let all = compare::load(&fleet, None).unwrap();
    assert_eq!(all.len(), 3);
    let db1 = compare::load(&fleet.join("host=db-1"), None).unwrap();
    assert_eq!(db1.len(), 2);
}
