//! The load generator behind `creditd loadgen`: keep-alive HTTP/1.1 connections sending debits,
//! either as fast as answers come back (closed loop) or at a fixed rate (open loop). In the open
//! loop every request has an intended send time on a fixed schedule and its latency is measured
//! from that time, so a stalled server shows up as latency instead of as fewer requests
//! (no coordinated omission). Latencies go into an HDR histogram.
//!
//! With `--pool`, every user draws on one credit pool and its own wallet is left empty, so every
//! debit takes the pool's path (the user's lock, then the pool's): the cost of an organisation's
//! shared balance under load.
//!
//! A soak run (`benches/soak.sh`) adds a mix and a running report ([`MixOptions`]): a share of the
//! operations are a reservation followed by its capture, a share are small batches, the rest
//! single debits; and every `--report-every` seconds one `interval` line gives that interval's
//! operations, answers by class and p50/p99 latency, so a long run shows drift as it happens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::client::Client;

/// How users are chosen for each debit.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Distribution {
    /// Every user equally likely.
    Uniform,
    /// Zipf-distributed (a few users get most debits), exponent `--zipf-exponent`.
    Zipf,
    /// One hot user gets every debit.
    Hot,
}

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A service (or stronger) API key.
    #[arg(long, default_value = "dev-service-secret-change-me")]
    pub key: String,
    /// An admin API key, to fund the users (or, with `--pool`, the pool) at setup: a service
    /// key's grants are capped per day (`limits.service_key_grants_per_day`), far below what a
    /// load run spends.
    #[arg(long, default_value = "dev-admin-secret-change-me")]
    pub admin_key: String,
    /// Open connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long to measure, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Unmeasured run before measuring, seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Requests per second across all connections (open loop); 0 = as fast as possible (closed loop).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// How debits pick users.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Debits per request: 1 sends `POST /v1/users/{id}/debit`, more sends `POST /v1/debits/batch`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Credits per debit.
    #[arg(long, default_value_t = 1)]
    pub amount: i64,
    /// Send a unique Idempotency-Key with every debit.
    #[arg(long, default_value_t = false)]
    pub idempotency_keys: bool,
    /// Skip creating and funding the users (they exist from an earlier run).
    #[arg(long, default_value_t = false)]
    pub skip_setup: bool,
    /// Only create and fund the users, then exit (to drive the load with another tool, e.g. wrk).
    #[arg(long, default_value_t = false)]
    pub setup_only: bool,
    /// Prefix of user ids, so runs can share or separate users.
    #[arg(long, default_value = "lg")]
    pub user_prefix: String,
    /// Make every user a member of this credit pool, created (and funded) at setup, and leave the
    /// users' own wallets unfunded: every debit is then paid by the pool. Needs `--admin-key`.
    #[arg(long)]
    pub pool: Option<String>,
    /// With `--pool`: each member's daily cap (none: no cap).
    #[arg(long)]
    pub pool_daily_cap: Option<i64>,
    /// A mix of operations and a report per interval, for long runs.
    #[command(flatten)]
    pub mix: MixOptions,
}

/// A mix of operations, and a report every few seconds (for soak runs). The default is no mix
/// and no interval report: every operation is a debit of `--batch` items.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MixOptions {
    /// Percent of operations that reserve `--amount` and then capture the reservation (two
    /// requests; latency runs from the intended start to the capture's answer).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub reserve_percent: u8,
    /// Percent of operations sent as one `POST /v1/debits/batch` of `--mix-batch` debits.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub batch_percent: u8,
    /// Debits per batch in the mix (`--batch-percent`).
    #[arg(long, default_value_t = 10)]
    pub mix_batch: usize,
    /// Print one `interval` line every this many seconds of the measured run (0: none).
    #[arg(long, default_value_t = 0)]
    pub report_every: u64,
}

/// What one operation of a run is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Operation {
    /// `--batch` debits (one request; a single debit when `--batch` is 1).
    Debit,
    /// A reservation, then its capture.
    ReserveCapture,
    /// A batch of `--mix-batch` debits.
    MixBatch,
}

impl MixOptions {
    /// Picks the next operation.
    fn pick(&self, rng: &mut SmallRng) -> Operation {
        if self.reserve_percent == 0 && self.batch_percent == 0 {
            return Operation::Debit;
        }
        let draw: u8 = rng.random_range(0..100);
        if draw < self.reserve_percent {
            Operation::ReserveCapture
        } else if draw < self.reserve_percent.saturating_add(self.batch_percent) {
            Operation::MixBatch
        } else {
            Operation::Debit
        }
    }
}

/// The figures of one reporting interval, shared by every connection.
struct Interval {
    operations: u64,
    debits: u64,
    statuses: [u64; 5],
    latency: Histogram<u64>,
}

impl Interval {
    fn new() -> Interval {
        Interval {
            operations: 0,
            debits: 0,
            statuses: [0; 5],
            latency: new_histogram(),
        }
    }

    /// One line: `interval t=… ops=… debits=… ok=… insufficient=… other_4xx=… 5xx=… errors=…
    /// p50_us=… p99_us=… max_us=…`, `t` the seconds since the measured run began.
    fn line(&self, seconds: u64) -> String {
        let quantile = |q: f64| self.latency.value_at_quantile(q);
        format!(
            "interval t={seconds} ops={} debits={} ok={} insufficient={} other_4xx={} 5xx={} \
             errors={} p50_us={} p99_us={} max_us={}",
            self.operations,
            self.debits,
            self.statuses[0],
            self.statuses[1],
            self.statuses[2],
            self.statuses[3],
            self.statuses[4],
            quantile(0.5),
            quantile(0.99),
            self.latency.max(),
        )
    }
}

/// Prints an `interval` line every `every` from `from` until `until`, then one for what is left.
async fn report_intervals(
    interval: Arc<parking_lot::Mutex<Interval>>,
    from: Instant,
    every: Duration,
    until: Instant,
) {
    let mut next = from + every;
    loop {
        tokio::time::sleep_until(next.min(until).into()).await;
        let taken = std::mem::replace(&mut *interval.lock(), Interval::new());
        let seconds = Instant::now().saturating_duration_since(from).as_secs_f64();
        println!("{}", taken.line(seconds.round() as u64));
        if next >= until {
            return;
        }
        next += every;
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests answered in the measured window.
    pub requests: u64,
    /// Debits carried by those requests.
    pub debits: u64,
    /// Answers by status class: 2xx, 402, other 4xx, 5xx, transport errors.
    pub statuses: [u64; 5],
    /// Seconds measured.
    pub seconds: f64,
    /// Latency, microseconds.
    pub latency: Histogram<u64>,
    /// Latency of the answers that were 2xx alone, microseconds, from when each request was
    /// sent (not from its intended time: what the server took, whether or not the client kept
    /// to its schedule).
    pub latency_ok: Histogram<u64>,
    /// Seconds from the start of the measured window to the last answer: more than `seconds`
    /// when an open loop fell behind its schedule.
    pub answered_seconds: f64,
    /// Answers 503 (the server refused the request: busy, shutting down…), among the 5xx.
    pub shed: u64,
}

impl LoadReport {
    /// One human-readable block.
    pub fn render(&self, options: &LoadOptions) -> String {
        let quantile = |q: f64| self.latency.value_at_quantile(q);
        let ok_quantile = |q: f64| self.latency_ok.value_at_quantile(q);
        let mode = if options.rate > 0 {
            format!("open loop at {} req/s", options.rate)
        } else {
            "closed loop".into()
        };
        let pool = options
            .pool
            .as_deref()
            .map_or(String::new(), |pool| format!(", paid by pool {pool}"));
        let mix = &options.mix;
        let mix = if mix.reserve_percent > 0 || mix.batch_percent > 0 {
            format!(
                ", mix: {} % reserve + capture, {} % batches of {}",
                mix.reserve_percent, mix.batch_percent, mix.mix_batch
            )
        } else {
            String::new()
        };
        format!(
            "{mode}, {} connections, {} users ({:?}), batch {}, idempotency keys {}{pool}{mix}\n\
             requests: {} in {:.1} s = {:.0} req/s; debits {:.0}/s\n\
             status: 2xx {}  402 {}  other 4xx {}  5xx {}  transport errors {}\n\
             latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n\
             2xx latency from send µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n\
             shed (503): {} ({:.1} %); answered in {:.1} s: 2xx {:.0}/s",
            options.connections,
            options.users,
            options.distribution,
            options.batch,
            options.idempotency_keys,
            self.requests,
            self.seconds,
            self.requests as f64 / self.seconds,
            self.debits as f64 / self.seconds,
            self.statuses[0],
            self.statuses[1],
            self.statuses[2],
            self.statuses[3],
            self.statuses[4],
            quantile(0.5),
            quantile(0.9),
            quantile(0.99),
            quantile(0.999),
            self.latency.max(),
            ok_quantile(0.5),
            ok_quantile(0.9),
            ok_quantile(0.99),
            ok_quantile(0.999),
            self.latency_ok.max(),
            self.shed,
            100.0 * self.shed as f64 / self.requests.max(1) as f64,
            self.answered_seconds,
            self.statuses[0] as f64 / self.answered_seconds.max(self.seconds),
        )
    }
}

/// Picks user indexes.
struct Picker {
    cumulative: Vec<f64>,
    distribution: Distribution,
    users: usize,
}

impl Picker {
    fn new(options: &LoadOptions) -> Picker {
        let cumulative = if options.distribution == Distribution::Zipf {
            let mut sum = 0.0;
            (1..=options.users)
                .map(|rank| {
                    sum += 1.0 / (rank as f64).powf(options.zipf_exponent);
                    sum
                })
                .collect()
        } else {
            Vec::new()
        };
        Picker {
            cumulative,
            distribution: options.distribution,
            users: options.users.max(1),
        }
    }

    fn pick(&self, rng: &mut SmallRng) -> usize {
        match self.distribution {
            Distribution::Uniform => rng.random_range(0..self.users),
            Distribution::Hot => 0,
            Distribution::Zipf => {
                let total = self.cumulative.last().copied().unwrap_or(1.0);
                let target = rng.random::<f64>() * total;
                self.cumulative
                    .partition_point(|&c| c < target)
                    .min(self.users - 1)
            }
        }
    }
}

/// Creates and funds the users, `connections` at a time; with `--pool`, creates and funds the
/// pool and makes every user a member of it instead of funding the user.
pub async fn setup(options: &LoadOptions) -> Result<(), String> {
    let client = Client::new(&options.url, &options.key).map_err(|e| e.to_string())?;
    let admin = Client::new(&options.url, &options.admin_key).map_err(|e| e.to_string())?;
    if let Some(pool) = &options.pool {
        fund_pool(&admin, pool).await?;
    }
    let users = if options.distribution == Distribution::Hot {
        1
    } else {
        options.users
    };
    let funding = 1_000_000_000_000i64;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..options.connections.clamp(1, 64) {
        let (client, admin, next, prefix) = (
            client.clone(),
            admin.clone(),
            Arc::clone(&next),
            options.user_prefix.clone(),
        );
        let (pool, cap) = (options.pool.clone(), options.pool_daily_cap);
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= users {
                    return Ok::<(), String>(());
                }
                let user = format!("{prefix}-{index}");
                client
                    .put_user(&user, None)
                    .await
                    .map_err(|e| format!("creating {user}: {e}"))?;
                if let Some(pool) = &pool {
                    let body = serde_json::json!({"pool_id": pool, "daily_cap": cap});
                    let path = format!("/v1/users/{user}/pool");
                    admin_call(&admin, Method::PUT, &path, &body).await?;
                    continue;
                }
                let wallet = client
                    .wallet(&user, None)
                    .await
                    .map_err(|e| e.to_string())?;
                if wallet.balance < funding / 2 {
                    admin
                        .credit(&user, funding, Some("load generator funding"), None)
                        .await
                        .map_err(|e| format!("funding {user}: {e}"))?;
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Creates the pool `pool` if it is new and tops it up to far more than a run spends.
async fn fund_pool(admin: &Client, pool: &str) -> Result<(), String> {
    let funding = 1_000_000_000_000_000i64;
    let path = format!("/v1/pools/{pool}");
    let answer = admin_call(admin, Method::PUT, &path, &serde_json::json!({})).await?;
    let balance = answer["balance"].as_i64().unwrap_or(0);
    if balance < funding / 2 {
        let body = serde_json::json!({"amount": funding, "reason": "loadgen"});
        admin_call(admin, Method::POST, &format!("{path}/credit"), &body).await?;
    }
    Ok(())
}

/// One admin request of the pool's setup: its JSON answer, or why it failed.
async fn admin_call(
    admin: &Client,
    method: Method,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let (status, _, answer) = admin
        .send(method.clone(), path, Some(bytes), None)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    serde_json::from_slice(&answer).map_err(|e| format!("{method} {path}: {e}"))
}

/// Runs the load and returns what was measured.
pub async fn run(options: &LoadOptions) -> Result<LoadReport, String> {
    if !options.skip_setup {
        setup(options).await?;
    }
    let address = options
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let picker = Arc::new(Picker::new(options));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(options.warmup);
    let stop_at = measure_from + Duration::from_secs(options.duration.max(1));
    let stopping = Arc::new(AtomicBool::new(false));
    let run_id: u32 = rand::random();
    let interval = Arc::new(parking_lot::Mutex::new(Interval::new()));
    let reporter = (options.mix.report_every > 0).then(|| {
        let every = Duration::from_secs(options.mix.report_every);
        tokio::spawn(report_intervals(
            Arc::clone(&interval),
            measure_from,
            every,
            stop_at,
        ))
    });
    let mut tasks = Vec::new();
    for connection in 0..options.connections.max(1) {
        let job = Job {
            address: address.clone(),
            options: options.clone(),
            picker: Arc::clone(&picker),
            connection,
            started,
            measure_from,
            stop_at,
            run_id,
            stopping: Arc::clone(&stopping),
            interval: (options.mix.report_every > 0).then(|| Arc::clone(&interval)),
        };
        tasks.push(tokio::spawn(job.run()));
    }
    let mut report = LoadReport {
        requests: 0,
        debits: 0,
        statuses: [0; 5],
        seconds: options.duration.max(1) as f64,
        latency: new_histogram(),
        latency_ok: new_histogram(),
        answered_seconds: 0.0,
        shed: 0,
    };
    for task in tasks {
        let part = task.await.map_err(|e| e.to_string())??;
        report.requests += part.requests;
        report.debits += part.debits;
        for (total, count) in report.statuses.iter_mut().zip(part.statuses) {
            *total += count;
        }
        report
            .latency
            .add(&part.latency)
            .map_err(|e| e.to_string())?;
        report
            .latency_ok
            .add(&part.latency_ok)
            .map_err(|e| e.to_string())?;
        report.shed += part.shed;
        report.answered_seconds = report.answered_seconds.max(part.answered_seconds);
    }
    if let Some(reporter) = reporter {
        reporter.await.map_err(|e| e.to_string())?;
    }
    Ok(report)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Sends `request` and reads the whole answer: its status and body, or `None` when the
/// connection failed.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Option<(u16, Bytes)> {
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    Some((status, body))
}

struct Job {
    address: String,
    options: LoadOptions,
    picker: Arc<Picker>,
    connection: usize,
    started: Instant,
    measure_from: Instant,
    stop_at: Instant,
    run_id: u32,
    stopping: Arc<AtomicBool>,
    /// The current reporting interval, with `--report-every`.
    interval: Option<Arc<parking_lot::Mutex<Interval>>>,
}

impl Job {
    async fn run(self) -> Result<LoadReport, String> {
        let stream = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("connect {}: {e}", self.address))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let authorization = HeaderValue::from_str(&format!("Bearer {}", self.options.key))
            .map_err(|e| e.to_string())?;
        let mut rng =
            SmallRng::seed_from_u64(self.run_id as u64 ^ ((self.connection as u64) << 32));
        let mut report = LoadReport {
            requests: 0,
            debits: 0,
            statuses: [0; 5],
            seconds: 0.0,
            latency: new_histogram(),
            latency_ok: new_histogram(),
            answered_seconds: 0.0,
            shed: 0,
        };
        let connections = self.options.connections.max(1) as u64;
        let period = (self.options.rate > 0)
            .then(|| Duration::from_secs_f64(connections as f64 / self.options.rate as f64));
        let offset = period
            .map(|p| p.mul_f64(self.connection as f64 / connections as f64))
            .unwrap_or_default();
        let mut sequence = 0u64;
        loop {
            // Open loop: this connection's next slot on the fixed schedule, whether or not the
            // previous answer was late.
            let intended = match period {
                Some(period) => self.started + offset + period.mul_f64(sequence as f64),
                None => Instant::now(),
            };
            if intended >= self.stop_at || self.stopping.load(Ordering::Relaxed) {
                break;
            }
            // Only the open loop waits: sleeping until "now" would cost a timer tick (1 ms).
            if period.is_some() && intended > Instant::now() {
                tokio::time::sleep_until(intended.into()).await;
            }
            let sent = Instant::now();
            let operation = self.options.mix.pick(&mut rng);
            let (outcome, debits) = match operation {
                Operation::ReserveCapture => {
                    let outcome = self
                        .reserve_and_capture(&mut sender, &mut rng, sequence, &authorization)
                        .await?;
                    (outcome, 1)
                }
                Operation::Debit | Operation::MixBatch => {
                    let items = match operation {
                        Operation::MixBatch => self.options.mix.mix_batch.max(1),
                        _ => self.options.batch.max(1),
                    };
                    let request = self.request(&mut rng, sequence, items, &authorization)?;
                    (
                        send(&mut sender, request).await.map(|(status, _)| status),
                        items,
                    )
                }
            };
            sequence += 1;
            let finished = Instant::now();
            if intended < self.measure_from {
                continue;
            }
            report.requests += 1;
            report.debits += debits as u64;
            let class = match outcome {
                Some(200..=299) => 0,
                Some(402) => 1,
                Some(400..=499) => 2,
                Some(_) => 3,
                None => 4,
            };
            report.statuses[class] += 1;
            let micros = finished
                .duration_since(intended)
                .as_micros()
                .min(u128::from(u64::MAX)) as u64;
            let _ = report.latency.record(micros.max(1));
            if let Some(interval) = &self.interval {
                let mut interval = interval.lock();
                interval.operations += 1;
                interval.debits += debits as u64;
                interval.statuses[class] += 1;
                let _ = interval.latency.record(micros.max(1));
            }
            if class == 0 {
                let served = finished.duration_since(sent).as_micros();
                let served = served.min(u128::from(u64::MAX)) as u64;
                let _ = report.latency_ok.record(served.max(1));
            }
            report.answered_seconds = finished.duration_since(self.measure_from).as_secs_f64();
            if outcome == Some(503) {
                report.shed += 1;
            }
            if outcome.is_none() {
                // The connection is gone; the others carry on.
                break;
            }
        }
        Ok(report)
    }

    /// A reservation of `--amount` for a random user, then (if it was made) its capture. The
    /// status is the capture's, or the reservation's when that failed.
    async fn reserve_and_capture(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        rng: &mut SmallRng,
        sequence: u64,
        authorization: &HeaderValue,
    ) -> Result<Option<u16>, String> {
        let options = &self.options;
        let user = match options.distribution {
            Distribution::Hot => format!("{}-0", options.user_prefix),
            _ => format!("{}-{}", options.user_prefix, self.picker.pick(rng)),
        };
        let body = format!("{{\"amount\":{}}}", options.amount);
        let path = format!("/v1/users/{user}/reservations");
        let key = options
            .idempotency_keys
            .then(|| format!("lg-{:08x}-{}-{sequence}-r", self.run_id, self.connection));
        let request = self.post(&path, body, key.as_deref(), authorization)?;
        let Some((status, answer)) = send(sender, request).await else {
            return Ok(None);
        };
        if status != 201 {
            return Ok(Some(status));
        }
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        let Some(reservation) = answer["reservation_id"].as_str() else {
            // A 201 without an id is the server's fault: counted with the 5xx.
            return Ok(Some(599));
        };
        let path = format!("/v1/reservations/{reservation}/capture");
        let key = key.map(|key| format!("{key}c"));
        let request = self.post(&path, "{}".into(), key.as_deref(), authorization)?;
        Ok(send(sender, request).await.map(|(status, _)| status))
    }

    /// A POST of `body` to `path`, with an Idempotency-Key if one is given.
    fn post(
        &self,
        path: &str,
        body: String,
        key: Option<&str>,
        authorization: &HeaderValue,
    ) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder()
            .header(header::HOST, "creditd")
            .header(header::AUTHORIZATION, authorization.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .method(Method::POST)
            .uri(path);
        if let Some(key) = key {
            builder = builder.header("idempotency-key", key);
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())
    }

    fn request(
        &self,
        rng: &mut SmallRng,
        sequence: u64,
        items: usize,
        authorization: &HeaderValue,
    ) -> Result<Request<Full<Bytes>>, String> {
        let options = &self.options;
        let key = |item: usize| {
            format!(
                "lg-{:08x}-{}-{sequence}-{item}",
                self.run_id, self.connection
            )
        };
        let user = |rng: &mut SmallRng| match options.distribution {
            Distribution::Hot => format!("{}-0", options.user_prefix),
            _ => format!("{}-{}", options.user_prefix, self.picker.pick(rng)),
        };
        let mut builder = Request::builder()
            .header(header::HOST, "creditd")
            .header(header::AUTHORIZATION, authorization.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .method(Method::POST);
        let body = if items <= 1 {
            builder = builder.uri(format!("/v1/users/{}/debit", user(rng)));
            if options.idempotency_keys {
                builder = builder.header("idempotency-key", key(0));
            }
            format!("{{\"amount\":{}}}", options.amount)
        } else {
            builder = builder.uri("/v1/debits/batch");
            let items: Vec<String> = (0..items)
                .map(|item| {
                    let key = if options.idempotency_keys {
                        format!(",\"idempotency_key\":\"{}\"", key(item))
                    } else {
                        String::new()
                    };
                    format!(
                        "{{\"user_id\":\"{}\",\"amount\":{}{key}}}",
                        user(rng),
                        options.amount
                    )
                })
                .collect();
            format!("{{\"debits\":[{}]}}", items.join(","))
        };
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())
    }
}
