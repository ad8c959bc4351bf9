//! Core threads (`server.core_threads`): API connections served each on a single-threaded runtime
//! of its own, whose thread syncs the log itself when it has nothing left to run.
//!
//! With the shared worker pool, a durable request's path crosses threads: the request's task
//! waits, the log's writer thread syncs the batch and wakes the task, whose worker may be parked
//! and must be woken too. A core thread works as Redis's event loop does: it reads and runs every
//! request that is ready on its connections, each appending its record; when nothing is left to
//! run, its park hook ([`crate::wal::Wal::sync_before_park`]) writes and syncs the queued batch
//! on the spot and wakes the waiting tasks onto its own run queue, which then answer. Measured on
//! the development machine (2 cores, client on the same box): at 64 connections one core
//! thread served 94–95 k debits/s at 11 µs of server CPU and 0.06 context switches per debit,
//! against 69–70 k, 16 µs and 0.45 for the shared pool (`docs/design.md`, "Core threads").
//!
//! The price is the event loop's: while a core thread syncs, or its disk stalls, every
//! connection of that thread waits, probes included. Which is why it is not the default.
//!
//! The accept loop stays on the shared runtime (it counts connections and closes idle ones) and
//! hands each accepted socket to the next core thread in turn. Connections are not moved once
//! placed; background work (snapshots, history, notifications) stays where it was.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::connections::{self, Lease};
use super::ApiState;

type Handoff = (std::net::TcpStream, Lease);

/// The core threads and the way to them.
pub(super) struct Cores {
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl Cores {
    /// Starts `count` core threads serving connections with `builder`'s settings.
    pub(super) fn start(
        count: usize,
        state: &Arc<ApiState>,
        builder: &hyper::server::conn::http1::Builder,
        linger: Duration,
    ) -> std::io::Result<Cores> {
        let mut cores = Cores {
            senders: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
            next: 0,
        };
        for index in 0..count {
            let (sender, receiver) = mpsc::unbounded_channel::<Handoff>();
            let state = Arc::clone(state);
            let builder = builder.clone();
            let thread = std::thread::Builder::new()
                .name(format!("creditd-core-{index}"))
                .spawn(move || serve_core(&state, &builder, linger, receiver))?;
            cores.senders.push(sender);
            cores.threads.push(thread);
        }
        Ok(cores)
    }

    /// Hands an accepted connection to the next core thread. A socket that cannot be handed
    /// over is closed (its lease, dropped, frees its place).
    pub(super) fn dispatch(&mut self, stream: tokio::net::TcpStream, lease: Lease) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        self.next = (self.next + 1) % self.senders.len();
        let _ = self.senders[self.next].send((stream, lease));
    }

    /// Stops the threads once the accept loop is done and the connections had their grace:
    /// each finishes when its channel closes, and its runtime, dropped, ends what is left.
    pub(super) async fn stop(self) {
        drop(self.senders);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// One core thread: a single-threaded runtime whose park hook syncs the log.
fn serve_core(
    state: &Arc<ApiState>,
    builder: &hyper::server::conn::http1::Builder,
    linger: Duration,
    mut receiver: mpsc::UnboundedReceiver<Handoff>,
) {
    crate::wal::writer::mark_syncs_before_park();
    let engine = Arc::clone(&state.engine);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || engine.wal().sync_before_park())
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "a core thread could not start its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let heartbeat = tokio::spawn(super::keep_a_timer_pending());
        while let Some((stream, lease)) = receiver.recv().await {
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                continue;
            };
            let service = super::api_service(state, &lease);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connections::drive(connection, lease, linger));
        }
        heartbeat.abort();
    });
}
