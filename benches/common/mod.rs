//! What the benches share: the machine description, the file system a directory lives on, a cheap
//! random generator, user ids built without allocating, and an engine filled with users.
//!
//! Each bench target compiles this module on its own and uses a different part of it, so unused
//! items are expected (see the `allow(dead_code)` where the benches declare the module).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use creditd::engine::types::CreditKind;
use creditd::engine::ProfileUpdate;
use creditd::engine::{Context, CreditRequest, Engine, EngineOptions, SystemClock, Tenant};
use creditd::wal::{FsStorage, FsyncMode};

/// The actor every bench request is made by.
pub const BENCH: Context<'static> = Context {
    actor: "bench",
    idempotency: None,
};

/// The tenant every bench uses.
pub const TENANT: &str = "acme";

/// Credits given to each user at set-up: far more than any bench spends.
pub const STARTING_CREDITS: i64 = 1_000_000_000_000;

/// Bytes of a user id built by [`UserId`]: `u-` and 10 decimal digits.
const USER_ID_BYTES: usize = 12;

/// A user id (`u-0000000042`) built on the stack, so picking a random user costs no allocation
/// and no cache miss on a table of precomputed strings.
pub struct UserId([u8; USER_ID_BYTES]);

impl UserId {
    /// The id of user number `index`.
    pub fn new(index: u64) -> UserId {
        let mut bytes = *b"u-0000000000";
        let mut rest = index;
        for byte in bytes[2..].iter_mut().rev() {
            *byte = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        UserId(bytes)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and `u-` are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("u-invalid")
    }
}

/// SplitMix64: a few instructions per number, good enough to pick users uniformly.
pub struct Random(u64);

impl Random {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`, by multiply-shift (no division).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// The number of CPUs, the CPU model and the load average, as one line.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map_or("unknown", str::trim)
        .to_owned();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    format!(
        "{cpus} CPUs ({model}), {memory} GiB RAM, load average {}",
        load()
    )
}

/// The 1, 5 and 15 minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The file system type and device that `path` lives on, from `/proc/mounts` (longest matching
/// mount point wins).
pub fn file_system(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, mount_point, kind, ..] = fields[..] else {
            continue;
        };
        if path.starts_with(mount_point) && best.as_ref().is_none_or(|b| mount_point.len() > b.0) {
            best = Some((
                mount_point.len(),
                format!("{kind} on {device} ({mount_point})"),
            ));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, description)| description)
}

/// Where bench data on a real disk goes: `$CREDITD_BENCH_DIR`, else `<package>/target/bench-data`.
pub fn disk_parent() -> PathBuf {
    std::env::var_os("CREDITD_BENCH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"),
        PathBuf::from,
    )
}

/// Where bench data on tmpfs goes: `$CREDITD_BENCH_TMPFS_DIR`, else `/dev/shm`.
pub fn tmpfs_parent() -> PathBuf {
    std::env::var_os("CREDITD_BENCH_TMPFS_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

/// A fresh directory under `parent` (created if needed), removed when dropped.
pub fn bench_dir(parent: &Path, prefix: &str) -> tempfile::TempDir {
    std::fs::create_dir_all(parent).expect("create the bench directory's parent");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .expect("create a bench directory")
}

/// Engine options for a bench: no background threads (a bench that wants a snapshot takes it
/// itself), no automatic snapshot, the default shard count.
pub fn engine_options(data_dir: &Path, fsync: FsyncMode) -> EngineOptions {
    EngineOptions {
        data_dir: data_dir.to_path_buf(),
        fsync,
        background: false,
        snapshot_every_records: u64::MAX,
        snapshot_every_seconds: u64::MAX,
        ..EngineOptions::default()
    }
}

/// Opens an engine on the real file system with the system clock and creates the bench tenant.
pub fn open_engine(options: EngineOptions) -> (Arc<Engine>, Arc<Tenant>) {
    let engine =
        Engine::open(options, Arc::new(FsStorage), Arc::new(SystemClock)).expect("open the engine");
    let tenant = match engine.tenant(TENANT) {
        Some(tenant) => tenant,
        None => {
            engine
                .upsert_tenant(TENANT, Some("Acme"), None, &BENCH)
                .expect("create the tenant")
                .0
        }
    };
    (engine, tenant)
}

/// Users created between two waits for the log in [`add_users`].
const USERS_PER_FLUSH: u64 = 16 * 1024;

/// Creates users `0..count` (with an e-mail address if `with_email`) and, if `credits > 0`, gives
/// each that many credits. Waits for the log every [`USERS_PER_FLUSH`] users, so the log's queue
/// stays within the buffers it started with (a loop that outruns the writer would grow them to
/// the queue limit, and the memory-per-wallet figure would count them), and at the end. Returns
/// the seconds taken.
pub fn add_users(
    engine: &Engine,
    tenant: &Tenant,
    count: u64,
    with_email: bool,
    credits: i64,
) -> f64 {
    let started = Instant::now();
    let mut email = String::new();
    for index in 0..count {
        let user = UserId::new(index);
        email.clear();
        if with_email {
            email.push_str(user.as_str());
            email.push_str("@example.com");
        }
        let profile = ProfileUpdate {
            email: with_email.then_some(email.as_str()),
            name: None,
            metadata: None,
        };
        retry(|| engine.upsert_user(tenant, user.as_str(), profile, &BENCH));
        if credits > 0 {
            let request = CreditRequest::new(user.as_str(), credits, CreditKind::Grant);
            retry(|| engine.credit(tenant, &request, &BENCH));
        }
        if index % USERS_PER_FLUSH == USERS_PER_FLUSH - 1 {
            engine.wal().flush().expect("flush the log");
        }
    }
    engine.wal().flush().expect("flush the log");
    started.elapsed().as_secs_f64()
}

/// How many times [`retry`] found the log's queue full, since the process started.
pub static BACKPRESSURE_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Runs `operation` until the log accepts it: set-up loops outrun the writer, and a full queue
/// (backpressure) is an answer to wait on, not a failure. Each wait is counted in
/// [`BACKPRESSURE_RETRIES`], so a bench can say whether it measured the engine or the disk.
pub fn retry<T>(
    mut operation: impl FnMut() -> Result<T, creditd::engine::types::EngineError>,
) -> T {
    loop {
        match operation() {
            Ok(value) => return value,
            Err(creditd::engine::types::EngineError::Log(
                creditd::wal::AppendError::Backpressure,
            )) => {
                BACKPRESSURE_RETRIES.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
            Err(error) => panic!("bench operation failed: {error}"),
        }
    }
}

/// CPU time this process has used so far, all threads, user and system, seconds (from
/// `/proc/self/stat`, in clock ticks of 10 ms).
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Resident memory of this process, bytes (from `/proc/self/statm`).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * page_bytes()
}

fn page_bytes() -> u64 {
    // The page size is 4 KiB on every machine these benches run on; /proc/self/smaps would tell
    // otherwise, but reading it is slow.
    4096
}

/// Removes every log segment but the newest from `wal_dir`: the writer only ever appends to the
/// newest, and the engine benches would otherwise fill memory (tmpfs) or disk with gigabytes of
/// log that nothing reads.
pub fn trim_segments(wal_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(wal_dir) else {
        return;
    };
    let mut segments: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    // Segment names are zero-padded first LSNs, so name order is LSN order.
    segments.sort();
    segments.pop();
    for old in segments {
        let _ = std::fs::remove_file(old);
    }
}
