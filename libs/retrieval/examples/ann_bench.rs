//! Measures the retrieval index on a pipeline catalog: build time, bytes per item, and per
//! `ef_search` recall@k against given ground truth, queries/s on one thread and on all cores,
//! and distance evaluations per query. Prints one JSON object; `load-tests/ann/compare.py`
//! runs it beside hnswlib and faiss on the same vectors and prints the table.
//!
//! Queries and ground truth are raw little-endian files: `queries.f32` (rows of `dim` f32)
//! and `truth.u32` (rows of `k` row numbers of items.parquet, best first).
//!
//! Memory is reported as the servers hold it: on mimalloc (their allocator), the resident
//! set after the build, and that of a fresh process restored from the build's snapshot
//! (`--restore DIR`, run as a child), beside the bytes each part of the index and catalog
//! holds.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tandem_catalog::Catalog;
use tandem_retrieval::{Index, IndexParams, ItemFilter, Metric, SearchParams, SearchStats};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    items: PathBuf,
    queries: PathBuf,
    truth: PathBuf,
    k: usize,
    m: usize,
    ef_construction: usize,
    ef: Vec<usize>,
    threads: usize,
    metric: Metric,
    /// Walk on 8-bit codes and rescore exactly (tandem's default).
    quantized_walk: bool,
    /// Only restore the index from this snapshot directory and report memory.
    restore: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        items: PathBuf::new(),
        queries: PathBuf::new(),
        truth: PathBuf::new(),
        k: 10,
        m: 16,
        ef_construction: 200,
        ef: vec![16, 32, 64, 128, 256],
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        metric: Metric::InnerProduct,
        quantized_walk: true,
        restore: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--items" => args.items = value.into(),
            "--queries" => args.queries = value.into(),
            "--truth" => args.truth = value.into(),
            "--k" => args.k = num(&value)?,
            "--m" => args.m = num(&value)?,
            "--ef-construction" => args.ef_construction = num(&value)?,
            "--threads" => args.threads = num(&value)?,
            "--metric" => args.metric = value.parse()?,
            "--ef" => args.ef = value.split(',').map(num).collect::<Result<Vec<_>, _>>()?,
            "--restore" => args.restore = Some(value.into()),
            "--quantized-walk" => {
                args.quantized_walk = value.parse().map_err(|e| format!("{flag}: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn read_raw<T: Copy>(path: &PathBuf, from: fn([u8; 4]) -> T) -> Result<Vec<T>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| from([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The process's resident and peak resident memory now, in MiB (Linux; 0 elsewhere).
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The parts' bytes as JSON fields.
fn memory_json(catalog: &Catalog, index: &Index) -> String {
    let c = catalog.memory();
    let i = index.memory();
    format!(
        "\"index_vectors\":{},\"index_links\":{},\"index_rows\":{},\"catalog_embeddings\":{},\"catalog_ids\":{},\"catalog_id_lookup\":{},\"catalog_attributes\":{},\"catalog_bytes\":{}",
        i.vectors,
        i.links,
        i.rows,
        c.embeddings,
        c.item_ids,
        c.id_lookup,
        c.attributes + c.related,
        c.total()
    )
}

/// A restart: the index and its catalog restored from a snapshot, in a new process.
fn restore_only(dir: &std::path::Path, params: IndexParams) -> Result<(), String> {
    let started = Instant::now();
    let (index, _) = Index::from_snapshots(dir, params, None)
        .ok_or("the snapshot just written does not load")?;
    let load_s = started.elapsed().as_secs_f64();
    let (rss, peak) = memory_mib();
    println!(
        "{{\"load_s\":{load_s:.3},\"rss_mib\":{rss:.0},\"peak_rss_mib\":{peak:.0},{}}}",
        memory_json(index.catalog(), &index)
    );
    Ok(())
}

fn main() -> Result<(), String> {
    let args = parse()?;
    let params = IndexParams {
        max_connections: args.m,
        ef_construction: args.ef_construction,
        metric: args.metric,
        quantized_walk: args.quantized_walk,
        ..IndexParams::default()
    };
    if let Some(dir) = &args.restore {
        return restore_only(dir, params);
    }
    let catalog = Arc::new(Catalog::open(&args.items).map_err(|e| e.to_string())?);
    let dim = catalog.dim();
    let queries = read_raw(&args.queries, f32::from_le_bytes)?;
    let truth = read_raw(&args.truth, u32::from_le_bytes)?;
    let nq = queries.len() / dim;
    if truth.len() != nq * args.k {
        return Err(format!(
            "truth holds {} ids, expected {nq} queries x k {}",
            truth.len(),
            args.k
        ));
    }
    let started = Instant::now();
    let index = Index::build(catalog.clone(), params).map_err(|e| e.to_string())?;
    let build_s = started.elapsed().as_secs_f64();
    let (rss_after_build, peak_after_build) = memory_mib();
    // What a restart costs instead of a build: write a snapshot, load it in a new process.
    let snapshots = tempfile::tempdir().map_err(|e| e.to_string())?;
    index
        .snapshot(snapshots.path())
        .map_err(|e| e.to_string())?;
    let restart = restart_memory(&args, snapshots.path())?;
    let load_s = serde_json::from_str::<serde_json::Value>(&restart)
        .ok()
        .and_then(|v| v["load_s"].as_f64())
        .ok_or_else(|| format!("restore run printed no load_s: {restart}"))?;
    let none = ItemFilter::default();

    let mut runs = Vec::new();
    for &ef in &args.ef {
        let search = |q: &[f32], stats: &mut SearchStats| {
            let p = SearchParams {
                k: args.k,
                ef_search: Some(ef),
            };
            index
                .search_with_stats(q, &none, p)
                .map(|(found, s)| {
                    *stats += s;
                    found
                })
                .map_err(|e| e.to_string())
        };
        // Recall and work, one pass.
        let mut hits = 0usize;
        let mut stats = SearchStats::default();
        for (qi, q) in queries.chunks_exact(dim).enumerate() {
            let want: HashSet<u32> = truth[qi * args.k..(qi + 1) * args.k]
                .iter()
                .copied()
                .collect();
            hits += search(q, &mut stats)?
                .iter()
                .filter(|c| want.contains(&c.idx))
                .count();
        }
        // One thread, timed over several passes for a stable figure.
        let passes = (20_000 / nq).max(1);
        let t = Instant::now();
        for _ in 0..passes {
            for q in queries.chunks_exact(dim) {
                search(q, &mut SearchStats::default())?;
            }
        }
        let qps1 = (passes * nq) as f64 / t.elapsed().as_secs_f64();
        // All threads, each over the whole query set.
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..args.threads {
                s.spawn(|| {
                    for _ in 0..passes {
                        for q in queries.chunks_exact(dim) {
                            let _ = search(q, &mut SearchStats::default());
                        }
                    }
                });
            }
        });
        let qps_all = (args.threads * passes * nq) as f64 / t.elapsed().as_secs_f64();
        runs.push(format!(
            "{{\"ef\":{ef},\"recall\":{:.4},\"qps_1\":{qps1:.0},\"qps_all\":{qps_all:.0},\"dist_evals\":{:.1}}}",
            hits as f64 / (nq * args.k) as f64,
            stats.distance_evals as f64 / nq as f64
        ));
    }
    println!(
        "{{\"engine\":\"tandem\",\"items\":{},\"dim\":{dim},\"kernels\":\"{}\",\"quantized_walk\":{},\"threads\":{},\"build_s\":{build_s:.2},\"load_s\":{load_s:.3},\"bytes_per_item\":{:.0},\"rss_mib\":{rss_after_build:.0},\"peak_rss_mib\":{peak_after_build:.0},{},\"restart\":{restart},\"runs\":[{}]}}",
        catalog.len(),
        index.space().kernels().name,
        args.quantized_walk,
        args.threads,
        index.index_bytes() as f64 / catalog.len() as f64,
        memory_json(&catalog, &index),
        runs.join(",")
    );
    Ok(())
}

/// Runs this program again with `--restore` and returns the JSON it prints.
fn restart_memory(args: &Args, dir: &std::path::Path) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .arg("--items")
        .arg(&args.items)
        .args(["--m", &args.m.to_string()])
        .args(["--ef-construction", &args.ef_construction.to_string()])
        .args(["--metric", args.metric.as_str()])
        .args(["--quantized-walk", &args.quantized_walk.to_string()])
        .arg("--restore")
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "restore run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .map(str::to_owned)
        .ok_or_else(|| "restore run printed nothing".to_owned())
}
