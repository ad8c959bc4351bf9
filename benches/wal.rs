//! The log with real `fdatasync` on the real disk: how many durable records per second group commit
//! gives, how large its batches get, and the raw sync rate of the disk it is bounded by.
//!
//! - `fdatasync_raw`: one thread writes 100 bytes and syncs, in a loop. `append` grows the file
//!   each time, as the log does (so each sync also commits the new file size to the ext4
//!   journal); `overwrite_preallocated` rewrites the same block of an already synced file, which
//!   is the cheapest sync the disk can do.
//! - `group_commit_closed_loop`: N producer threads each append one record (a real encoded debit
//!   event) and wait until it is durable, then append the next (a closed loop, like N clients each
//!   waiting for their answer). Producers are started once per N, outside the measurement. The
//!   log zeroes its segment ahead of its writes, as the server runs it; `N_producers_appending`
//!   (N = 1, 64) turns that off, so that every sync also commits a new file size: the ratio is
//!   what zeroing ahead wins.
//! - `group_commit_async`: N tasks on a two-worker tokio runtime (as the server runs them), each
//!   appending one record and awaiting `Wal::durable` for it, in a loop: the server's commit path
//!   without HTTP. The thread that awaits leads the sync when nobody else is syncing, so a lone
//!   task costs no hand-off to the writer thread and back; the context switches and CPU time of
//!   the whole process per record are printed at the end (a regression of the hand-offs shows
//!   there first: at one task they were 11.8 switches per debit through the server before the
//!   waiter led its own sync, 6 after).
//! - `append_batch_then_wait`: one thread appends B records and waits for the last one (B = 10 000
//!   is past the brief's range, to show how large a batch this disk needs for 1 M records/s).
//!
//! Records per batch (from `Wal::stats`) are printed at the end, with the data directory and its
//! file system. The directory is `<package>/target/bench-data` unless `$CREDITD_BENCH_DIR` says
//! otherwise; it must be on a real disk, since on tmpfs a sync costs nothing.
//!
//! Run: `CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench wal -- --warm-up-time 1 --measurement-time 3`

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};

use creditd::codec;
use creditd::wal::{AppendError, FsStorage, FsyncMode, Wal, WalOptions, WalStats};

#[allow(dead_code)]
mod common;

/// What one bench did to the log, for the batch-size table.
struct BatchFigures {
    bench: String,
    stats: WalStats,
}

/// The figures gathered while criterion runs, printed at the end.
static BATCHES: Mutex<Vec<BatchFigures>> = Mutex::new(Vec::new());

/// The payload of a typical debit record: a usage debit of 3 credits by `u-0000421337` of
/// `acme`, as the engine encodes it (the event schema is crate-private; the engine's test
/// `a_debit_encodes_as_the_wal_bench_payload` pins these bytes).
fn debit_payload() -> Vec<u8> {
    DEBIT_PAYLOAD.to_vec()
}

/// See [`debit_payload`].
const DEBIT_PAYLOAD: [u8; 74] = [
    4, 4, 97, 99, 109, 101, 12, 117, 45, 48, 48, 48, 48, 52, 50, 49, 51, 51, 55, 7, 99, 114, 101,
    100, 105, 116, 115, 0, 6, 253, 250, 31, 74, 169, 209, 1, 0, 0, 253, 250, 31, 74, 169, 209, 1,
    0, 0, 0, 0, 253, 0, 128, 89, 144, 51, 3, 0, 0, 11, 103, 97, 116, 101, 119, 97, 121, 45, 107,
    101, 121, 0, 0, 0, 0,
];

/// A log in a fresh directory under the data parent, syncing every batch, with the segment
/// zeroed ahead of its writes as the server runs it.
fn start_wal(parent: &Path) -> (Arc<Wal>, tempfile::TempDir) {
    start_wal_zeroing(parent, 4 * 1024 * 1024)
}

/// [`start_wal`] with `zero_ahead_bytes` of zeroed space ahead (0: every batch appends).
fn start_wal_zeroing(parent: &Path, zero_ahead_bytes: u64) -> (Arc<Wal>, tempfile::TempDir) {
    let dir = common::bench_dir(parent, "creditd-wal-bench-");
    let options = WalOptions {
        dir: dir.path().to_path_buf(),
        fsync: FsyncMode::Always,
        segment_bytes: 64 * 1024 * 1024,
        max_record_bytes: 1024 * 1024,
        queue_bytes: 64 * 1024 * 1024,
        zero_ahead_bytes,
        format_version: codec::FORMAT_VERSION,
    };
    let wal = Wal::start(Arc::new(FsStorage), options, 1).expect("start the log");
    (Arc::new(wal), dir)
}

/// Appends, waiting out backpressure (a full queue is an answer to wait on, not a failure).
fn append(wal: &Wal, payload: &[u8]) -> u64 {
    loop {
        match wal.append(payload) {
            Ok(lsn) => return lsn,
            Err(AppendError::Backpressure) => std::thread::yield_now(),
            Err(error) => panic!("append failed: {error}"),
        }
    }
}

/// N threads, each appending one record and waiting for it to be durable, in a loop.
struct Producers {
    work: Vec<mpsc::Sender<u64>>,
    finished: mpsc::Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Producers {
    fn start(wal: &Arc<Wal>, count: usize, payload: &Arc<Vec<u8>>) -> Producers {
        let (finished_sender, finished) = mpsc::channel();
        let mut work = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for _ in 0..count {
            let (sender, receiver) = mpsc::channel::<u64>();
            let wal = Arc::clone(wal);
            let payload = Arc::clone(payload);
            let finished = finished_sender.clone();
            threads.push(std::thread::spawn(move || {
                for records in receiver {
                    for _ in 0..records {
                        let lsn = append(&wal, &payload);
                        wal.wait_durable(lsn).expect("the log stays healthy");
                    }
                    if finished.send(()).is_err() {
                        return;
                    }
                }
            }));
            work.push(sender);
        }
        Producers {
            work,
            finished,
            threads,
        }
    }

    /// Makes `records` records durable, spread evenly over the producers; returns the wall time.
    fn run(&self, records: u64) -> Duration {
        let count = self.work.len() as u64;
        let started = Instant::now();
        for (index, sender) in self.work.iter().enumerate() {
            let share = records / count + u64::from((index as u64) < records % count);
            sender.send(share).expect("producer alive");
        }
        for _ in 0..count {
            self.finished.recv().expect("producer finished");
        }
        started.elapsed()
    }

    fn stop(self) {
        drop(self.work);
        for thread in self.threads {
            thread.join().expect("producer thread");
        }
    }
}

fn stats_since(wal: &Wal, before: WalStats) -> WalStats {
    let now = wal.stats();
    WalStats {
        records: now.records - before.records,
        batches: now.batches - before.batches,
        bytes: now.bytes - before.bytes,
        rotations: now.rotations - before.rotations,
        led: now.led - before.led,
        leads: now.leads - before.leads,
    }
}

fn record_batches(bench: String, stats: WalStats) {
    BATCHES
        .lock()
        .expect("batch table")
        .push(BatchFigures { bench, stats });
}

fn bench_raw_sync(criterion: &mut Criterion, parent: &Path) {
    let mut group = criterion.benchmark_group("fdatasync_raw");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    let dir = common::bench_dir(parent, "creditd-sync-bench-");
    let block = [0x5au8; 100];

    group.bench_function("append_100B", |b| {
        let path = dir.path().join("append.bin");
        let mut file = File::create(&path).expect("create");
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                file.write_all(&block).expect("write");
                file.sync_data().expect("fdatasync");
            }
            started.elapsed()
        });
    });

    group.bench_function("overwrite_preallocated_100B", |b| {
        let path = dir.path().join("overwrite.bin");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .expect("create");
        file.write_all(&[0u8; 4096]).expect("preallocate");
        file.sync_all().expect("sync");
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                file.seek(SeekFrom::Start(0)).expect("seek");
                file.write_all(&block).expect("write");
                file.sync_data().expect("fdatasync");
            }
            started.elapsed()
        });
    });
    group.finish();
}

fn bench_closed_loop(criterion: &mut Criterion, parent: &Path, payload: &Arc<Vec<u8>>) {
    let mut group = criterion.benchmark_group("group_commit_closed_loop");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    // The first two run with every batch appending to the file, as before the log zeroed its
    // space ahead: the ratio to the same counts zeroed is what zeroing ahead wins.
    let runs = [(1usize, 0u64), (64, 0)]
        .into_iter()
        .chain([1usize, 4, 16, 64, 256].map(|producers| (producers, 4 * 1024 * 1024)));
    for (producers, zero_ahead) in runs {
        let name = if zero_ahead == 0 {
            format!("{producers}_producers_appending")
        } else {
            format!("{producers}_producers")
        };
        let (wal, dir) = start_wal_zeroing(parent, zero_ahead);
        let pool = Producers::start(&wal, producers, payload);
        let before = wal.stats();
        group.bench_function(&name, |b| {
            b.iter_custom(|records| {
                let elapsed = pool.run(records);
                common::trim_segments(dir.path());
                elapsed
            });
        });
        record_batches(
            format!("group_commit_closed_loop/{name}"),
            stats_since(&wal, before),
        );
        pool.stop();
        drop(wal);
    }
    group.finish();
}

/// Context switches (voluntary and not) and CPU time (user and system) of the whole process.
fn process_usage() -> (u64, Duration) {
    // SAFETY: getrusage fills the struct it is given, which lives across the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
        time(usage.ru_utime) + time(usage.ru_stime),
    )
}

/// Switches and CPU per record of each `group_commit_async` run, printed at the end.
static ASYNC_COSTS: Mutex<Vec<(String, u64, f64, f64)>> = Mutex::new(Vec::new());

fn bench_async(criterion: &mut Criterion, parent: &Path, payload: &Arc<Vec<u8>>) {
    let mut group = criterion.benchmark_group("group_commit_async");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for tasks in [1usize, 64] {
        let name = format!("{tasks}_tasks");
        let (wal, dir) = start_wal(parent);
        let before = wal.stats();
        let (mut switches, mut cpu, mut records_done) = (0u64, Duration::ZERO, 0u64);
        group.bench_function(&name, |b| {
            b.iter_custom(|records| {
                let (switches_before, cpu_before) = process_usage();
                let started = Instant::now();
                runtime.block_on(async {
                    let mut handles = Vec::with_capacity(tasks);
                    for index in 0..tasks as u64 {
                        let share =
                            records / tasks as u64 + u64::from(index < records % tasks as u64);
                        let (wal, payload) = (Arc::clone(&wal), Arc::clone(payload));
                        handles.push(tokio::spawn(async move {
                            for _ in 0..share {
                                let lsn = append(&wal, &payload);
                                wal.durable(lsn).await.expect("the log stays healthy");
                            }
                        }));
                    }
                    for handle in handles {
                        handle.await.expect("task");
                    }
                });
                let elapsed = started.elapsed();
                let (switches_after, cpu_after) = process_usage();
                switches += switches_after - switches_before;
                cpu += cpu_after - cpu_before;
                records_done += records;
                common::trim_segments(dir.path());
                elapsed
            });
        });
        let per = records_done.max(1) as f64;
        ASYNC_COSTS.lock().expect("cost table").push((
            format!("group_commit_async/{name}"),
            records_done,
            switches as f64 / per,
            cpu.as_secs_f64() * 1e6 / per,
        ));
        record_batches(
            format!("group_commit_async/{name}"),
            stats_since(&wal, before),
        );
        drop(wal);
    }
    group.finish();
}

fn bench_batches(criterion: &mut Criterion, parent: &Path, payload: &[u8]) {
    let mut group = criterion.benchmark_group("append_batch_then_wait");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for batch in [1u64, 10, 100, 1000, 10_000] {
        let name = format!("{batch}_records");
        let (wal, dir) = start_wal(parent);
        let before = wal.stats();
        group.throughput(Throughput::Elements(batch));
        group.bench_function(&name, |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                for _ in 0..iterations {
                    let mut last = 0;
                    for _ in 0..batch {
                        last = append(&wal, payload);
                    }
                    wal.wait_durable(last).expect("the log stays healthy");
                }
                let elapsed = started.elapsed();
                common::trim_segments(dir.path());
                elapsed
            });
        });
        record_batches(
            format!("append_batch_then_wait/{name}"),
            stats_since(&wal, before),
        );
        drop(wal);
    }
    group.finish();
}

fn main() {
    let parent = common::disk_parent();
    std::fs::create_dir_all(&parent).expect("create the data directory");
    let file_system = common::file_system(&parent);
    eprintln!("machine: {}", common::machine());
    eprintln!("data directory: {} ({file_system})", parent.display());
    if file_system.starts_with("tmpfs") {
        eprintln!("WARNING: tmpfs: fdatasync costs nothing here; these are not disk figures");
    }
    let payload = Arc::new(debit_payload());
    eprintln!(
        "record: {} payload bytes + 16 header bytes (an encoded debit)",
        payload.len()
    );

    let mut criterion = Criterion::default().configure_from_args();
    bench_raw_sync(&mut criterion, &parent);
    bench_closed_loop(&mut criterion, &parent, &payload);
    bench_async(&mut criterion, &parent, &payload);
    bench_batches(&mut criterion, &parent, &payload);

    eprintln!("\nwhole process per record, tokio waiters (all samples, warm-up included):");
    eprintln!(
        "{:<45} {:>12} {:>10} {:>12}",
        "bench", "records", "switches", "CPU µs"
    );
    for (bench, records, switches, cpu) in ASYNC_COSTS.lock().expect("cost table").iter() {
        eprintln!("{bench:<45} {records:>12} {switches:>10.2} {cpu:>12.1}");
    }
    eprintln!("\nrecords per batch (all samples, warm-up included):");
    eprintln!(
        "{:<45} {:>12} {:>10} {:>12}",
        "bench", "records", "batches", "per batch"
    );
    for figures in BATCHES.lock().expect("batch table").iter() {
        let stats = figures.stats;
        eprintln!(
            "{:<45} {:>12} {:>10} {:>12.1}",
            figures.bench,
            stats.records,
            stats.batches,
            stats.records as f64 / stats.batches.max(1) as f64
        );
    }
    eprintln!("load average after: {}", common::load());
    criterion.final_summary();
}
