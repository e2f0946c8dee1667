//! Fleet scale: the DuckDB query documented in docs/analyzer.md ("Fleet scale") reads a
//! directory of many nodes' segments with `read_json` and gives the analyzer's per-node p99.
//! Runs the documented query itself (taken from the doc), through the `duckdb` Python package
//! that `cargo xtask setup` installs.

mod analyze_support;

use std::path::Path;
use std::process::Command;

use analyze_support::*;

const DOC: &str = include_str!("../../docs/analyzer.md");

/// The ```sql block of the "Fleet scale" section.
fn documented_query() -> String {
    let section = &DOC[DOC.find("## Fleet scale").expect("docs/analyzer.md has a Fleet scale section")..];
    let start = section.find("```sql\n").expect("an sql block") + 7;
    section[start..start + section[start..].find("```").unwrap()].to_string()
}

/// python3 with the duckdb package, by the project's rule for prerequisites
/// ([`blkio_agent::prereq`]): missing, the test fails naming the fix.
fn python_with_duckdb(test: &str) -> Option<&'static str> {
    let ok = Command::new("python3").args(["-c", "import duckdb"]).output().is_ok_and(|o| o.status.success());
    let missing: Vec<String> = if ok {
        vec![]
    } else {
        vec![
            "needs python3 with the duckdb package: run `cargo xtask setup` (or `python3 -m pip install duckdb`)"
                .into(),
        ]
    };
    blkio_agent::prereq::require(test, &missing).then_some("python3")
}

/// `nodes` nodes × 3 sealed segments each (in one directory per node), plus a staging file
/// that neither reader may use.
fn fleet(root: &Path, nodes: usize) {
    let mut rng = Rng(99);
    for n in 0..nodes {
        let node = format!("node-{n:02}");
        let dir = root.join(&node);
        std::fs::create_dir_all(&dir).unwrap();
        for seg in 0..3 {
            let lines: Vec<String> = (0..40)
                .map(|i| {
                    let k = seg * 40 + i;
                    let slow = 1 + (n as u64 % 4) * 3;
                    let devs = [
                        DevSample::new(
                            "nvme0n1",
                            259 << 20,
                            vec![
                                io("read", 30 + rng.below(60), 200 + rng.below(100)),
                                io("write", 100 * slow, 20 + rng.below(10)),
                                io("read", 2000 * slow, rng.below(4)),
                            ],
                            2,
                            6,
                        ),
                        DevSample::new("nvme1n1", 259 << 20 | 1, vec![io("write", 500 + rng.below(900), 50)], 1, 3),
                    ];
                    line(&snapshot(Schema::Current, Some(&node), T0 + k as f64 + 1.0, 1.0, k as u64, &devs))
                })
                .collect();
            write(&dir.join(format!("{node}-20251002T1420{seg:02}Z-{seg:06}.jsonl")), &lines);
        }
        let junk = line(&snapshot(Schema::Current, Some(&node), T0 + 500.0, 1.0, 500, &[]));
        std::fs::write(dir.join(format!(".{node}-20251002T143000Z-000003.jsonl.staging")), junk).unwrap();
    }
}

#[test]
fn documented_duckdb_query_reproduces_the_per_node_p99() {
    let Some(python) = python_with_duckdb("documented_duckdb_query_reproduces_the_per_node_p99") else { return };
    let dir = tempfile::tempdir().unwrap();
    let segs = dir.path().join("segments");
    fleet(&segs, 8);
    let (summary, _) = analyze_ok(&[&segs], &dir.path().join("out"), &["--percentiles", "99"]);

    let glob = format!("{}/**/*.jsonl", segs.display());
    let query = documented_query().replace("segments/**/*.jsonl", &glob);
    assert!(query.contains(&glob), "the documented query reads 'segments/**/*.jsonl':\n{query}");
    let script = "import duckdb, json, sys\nrows = duckdb.sql(sys.stdin.read()).fetchall()\nprint(json.dumps(rows))";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(query.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "duckdb failed:\n{}\n{query}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<(String, String, f64)> = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(rows.len(), 16, "8 nodes × 2 devices: {rows:?}");
    for (node, device_name, p99) in &rows {
        let want = device(&summary, Some(node), device_name)["percentiles_us"]["p99"].as_f64().unwrap();
        assert!((p99 - want).abs() <= 1e-9 * want, "{node}/{device_name}: duckdb {p99}, analyzer {want}");
    }
    // The nodes differ, so agreeing is not a coincidence of equal inputs.
    let distinct: std::collections::HashSet<u64> = rows.iter().map(|r| r.2.to_bits()).collect();
    assert!(distinct.len() >= 4, "{rows:?}");
}
