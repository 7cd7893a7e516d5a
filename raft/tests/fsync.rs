//! Acknowledged means on the disk: a vote, an append (small, and over
//! sled's blob threshold) and a truncation are each followed by an
//! `fdatasync` of the file that holds them before they are acknowledged,
//! seen as syscalls under `strace` (a power cut cannot be simulated here;
//! what reaches the disk's stable storage is what `fdatasync` flushes).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use openraft::Vote;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use tempfile::TempDir;

use common::{adjust, log_id, normal};

/// Environment variable that makes `fsync_child` run (and names its
/// storage directory).
const CHILD_DIR_ENV: &str = "RESERVOIR_FSYNC_CHILD_DIR";

/// Marks the child writes to stderr around each operation; `strace` records
/// each as one `write` syscall, in order with the syncs.
const MARK: &str = "MARK ";

/// The operations the child runs, in order, each between `MARK {op}-begin`
/// and `MARK {op}-acked`.
const OPS: [&str; 4] = ["vote", "append", "blob", "truncate"];

/// A value over sled's blob threshold (segment_size / 4 - 20 = 131,052
/// bytes): sled keeps it in its own file under `blobs/`.
const BLOB_VALUE_BYTES: usize = 200 * 1024;

/// Each acknowledged write is preceded by an `fdatasync` of sled's data
/// file (and a blob by an `fdatasync` of the blob file and an `fsync` of
/// `blobs/`), between the marks around it.
#[test]
fn acknowledged_writes_are_fdatasynced() {
    let strace_ok = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        strace_ok,
        "this test needs strace (apt-get install strace; .ci/run installs it)"
    );
    let dir = TempDir::new().expect("temp dir");
    let trace = dir.path().join("strace.txt");
    let data = dir.path().join("data");
    let exe = std::env::current_exe().expect("test binary");
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "64", "-e", "signal=none"])
        .args(["-e", "trace=fdatasync,fsync,sync_file_range,write", "-o"])
        .arg(&trace)
        .arg(exe)
        .args([
            "--exact",
            "fsync_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the child under strace");
    assert!(status.success(), "child under strace failed: {status}");
    let trace = std::fs::read_to_string(&trace).expect("read strace output");

    let db = format!("{}>", data.join("db").display());
    let blobs_dir = format!("{}>", data.join("blobs").display());
    let blob_file = format!("{}/", data.join("blobs").display());
    for op in OPS {
        let window = between(&trace, &format!("{MARK}{op}-begin"), &format!("{MARK}{op}-acked"));
        let synced_db = window
            .iter()
            .any(|line| line.contains("fdatasync(") && line.contains(&db));
        assert!(
            synced_db,
            "{op}: no fdatasync of {db} before the acknowledgement; syscalls:\n{}",
            window.join("\n")
        );
        if op == "blob" {
            let synced_blob = window
                .iter()
                .any(|line| line.contains("fdatasync(") && line.contains(&blob_file));
            let synced_dir = window
                .iter()
                .any(|line| line.contains("fsync(") && line.contains(&blobs_dir));
            assert!(
                synced_blob && synced_dir,
                "blob: blob file synced {synced_blob}, {blobs_dir} synced {synced_dir}; syscalls:\n{}",
                window.join("\n")
            );
        }
    }
}

/// The trace lines strictly between the `write` of mark `begin` and the
/// `write` of mark `end`.
fn between<'a>(trace: &'a str, begin: &str, end: &str) -> Vec<&'a str> {
    let is_mark =
        |line: &str, mark: &str| line.contains("write(") && line.contains(&format!("\"{mark}\\n\""));
    let lines: Vec<&str> = trace.lines().collect();
    let start = lines
        .iter()
        .position(|l| is_mark(l, begin))
        .unwrap_or_else(|| panic!("no mark {begin:?} in the trace"));
    let stop = lines[start..]
        .iter()
        .position(|l| is_mark(l, end))
        .unwrap_or_else(|| panic!("no mark {end:?} after {begin:?} in the trace"));
    lines[start + 1..start + stop].to_vec()
}

/// Writes `MARK {text}` to stderr in one `write`.
fn mark(text: &str) {
    use std::io::Write;
    let line = format!("{MARK}{text}\n");
    std::io::stderr().write_all(line.as_bytes()).expect("write mark");
}

/// Not a test on its own: the child process of
/// `acknowledged_writes_are_fdatasynced`, which runs it by name under
/// strace. Without its environment variable it returns at once.
#[test]
#[ignore = "the child process of acknowledged_writes_are_fdatasynced"]
fn fsync_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (_storage, mut stores) = common::open(Path::new(&dir));
        mark("vote-begin");
        stores.log.save_vote(&Vote::new(1, 1)).await.expect("vote");
        mark("vote-acked");
        mark("append-begin");
        let entries = (1..=3).map(|index| normal(1, index, vec![adjust(&format!("r{index}"), "sku-a", 1)]));
        stores.log.blocking_append(entries).await.expect("append");
        mark("append-acked");
        mark("blob-begin");
        let big = normal(1, 4, vec![adjust("r4", &"s".repeat(BLOB_VALUE_BYTES), 1)]);
        stores.log.blocking_append([big]).await.expect("append a blob");
        mark("blob-acked");
        mark("truncate-begin");
        stores.log.truncate(log_id(1, 3)).await.expect("truncate");
        mark("truncate-acked");
    });
}
