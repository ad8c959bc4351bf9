//! The outbox: the notifications accepted for delivery and not yet delivered nor given up on, and
//! their keeping across a clean stop. At the stop, what is still queued or being retried is written
//! to [`PENDING_FILE`] in the data directory (atomically, and only for records that are durable);
//! the next start reads it back once, removes it, and sends it again. A crash loses it: delivery is
//! at least once across clean stops only.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::payload::Notification;
use crate::engine::notify::TenantNotification;
use crate::engine::types::Lsn;

/// The file in the data directory that holds, between a clean stop and the next start, the
/// notifications not yet delivered.
pub const PENDING_FILE: &str = "events-pending.json";

/// The layout of [`PENDING_FILE`].
#[derive(Serialize, Deserialize)]
struct PendingFile {
    format: u32,
    #[serde(rename = "events")]
    notifications: Vec<Notification>,
}

const PENDING_FORMAT: u32 = 1;

/// The notifications accepted for delivery and not yet delivered nor given up on.
pub struct Outbox {
    pending: Mutex<Pending>,
    /// Another end of the channel, to take what delivery has not picked up yet at a stop.
    queue: crossbeam_channel::Receiver<TenantNotification>,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Dropped at the stop, which ends the thread that takes notifications in.
    stopper: Mutex<Option<crossbeam_channel::Sender<()>>>,
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    notifications: BTreeMap<u64, Notification>,
    stopped: bool,
}

impl Outbox {
    /// An outbox beside the delivery thread that takes from `queue`; dropping `stopper` (at the
    /// stop) ends that thread.
    pub(super) fn new(
        queue: crossbeam_channel::Receiver<TenantNotification>,
        stopper: Option<crossbeam_channel::Sender<()>>,
    ) -> Outbox {
        Outbox {
            pending: Mutex::default(),
            queue,
            stopping: tokio::sync::watch::Sender::new(false),
            stopper: Mutex::new(stopper),
        }
    }

    /// Takes a notification for delivery; `None` once stopped.
    pub(super) fn admit(&self, notification: Notification) -> Option<u64> {
        let mut pending = self.pending.lock();
        if pending.stopped {
            return None;
        }
        let id = pending.next_id;
        pending.next_id += 1;
        pending.notifications.insert(id, notification);
        Some(id)
    }

    /// A notification is done with: delivered, given up on, or never to be sent.
    pub(super) fn finish(&self, id: u64) {
        self.pending.lock().notifications.remove(&id);
    }

    /// Returns once the outbox is stopped.
    pub(super) async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }

    /// Stops delivery and writes the notifications not delivered yet to `path` (atomically: a
    /// temporary file, synced, renamed, the directory synced), for the next start to send. Only
    /// notifications whose record is durable (LSN ≤ `durable_lsn`) are kept: one whose record a
    /// failed log never wrote must not be announced, and its LSN may be reused after a restart.
    /// Returns how many it kept.
    pub fn stop_and_save(&self, path: &Path, durable_lsn: Lsn) -> std::io::Result<usize> {
        let notifications: Vec<Notification> = {
            let mut pending = self.pending.lock();
            pending.stopped = true;
            self.stopping.send_replace(true);
            self.stopper.lock().take();
            let queued: Vec<Notification> = self
                .queue
                .try_iter()
                .map(|e| Notification::new(&e))
                .collect();
            std::mem::take(&mut pending.notifications)
                .into_values()
                .chain(queued)
                .filter(|notification| notification.lsn <= durable_lsn)
                .collect()
        };
        if notifications.is_empty() {
            return Ok(0);
        }
        let file = PendingFile {
            format: PENDING_FORMAT,
            notifications,
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let temporary = path.with_extension("json.tmp");
        {
            let mut out = std::fs::File::create(&temporary)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
        }
        std::fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(file.notifications.len())
    }
}

/// Reads and removes the notifications a clean stop left at `path`. A file that cannot be read is
/// kept aside as `<path>.bad`, logged, and sends nothing.
pub fn restore(path: &Path) -> Vec<Notification> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            let path = path.display();
            tracing::error!(%error, %path, "pending events not readable; not sent");
            return Vec::new();
        }
    };
    let notifications = match serde_json::from_slice::<PendingFile>(&bytes) {
        Ok(file) if file.format == PENDING_FORMAT => {
            if let Err(error) = std::fs::remove_file(path) {
                let path = path.display();
                tracing::error!(%error, %path, "pending events not removed; not sent twice");
                return Vec::new();
            }
            file.notifications
        }
        Ok(file) => {
            set_aside(path, &format!("unknown format {}", file.format));
            return Vec::new();
        }
        Err(error) => {
            set_aside(path, &error.to_string());
            return Vec::new();
        }
    };
    if !notifications.is_empty() {
        tracing::info!(
            events = notifications.len(),
            "sending the events left undelivered at the last stop"
        );
    }
    notifications
}

fn set_aside(path: &Path, reason: &str) {
    let aside = path.with_extension("json.bad");
    let renamed = std::fs::rename(path, &aside);
    let (path, aside, renamed) = (path.display(), aside.display(), renamed.is_ok());
    tracing::error!(%reason, %path, %aside, renamed, "pending events unreadable; set aside, not sent");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notification(lsn: Lsn) -> Notification {
        Notification {
            tenant: "acme".into(),
            lsn,
            kind: "wallet.depleted".into(),
            body: json!({ "id": format!("evt_{lsn}_wallet_depleted") }),
        }
    }

    #[test]
    fn kept_notifications_are_read_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        assert!(restore(&path).is_empty(), "no file, nothing to send");
        let file = PendingFile {
            format: PENDING_FORMAT,
            notifications: vec![notification(3), notification(9)],
        };
        let bytes = serde_json::to_vec(&file).unwrap();
        // The file's layout is what earlier versions wrote and read.
        assert!(String::from_utf8_lossy(&bytes).starts_with(
            r#"{"format":1,"events":[{"tenant":"acme","lsn":3,"type":"wallet.depleted","body":"#
        ));
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(restore(&path), vec![notification(3), notification(9)]);
        assert!(!path.exists());
        assert!(restore(&path).is_empty(), "sent by one start only");
    }

    #[test]
    fn an_unreadable_file_is_set_aside_and_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        for bytes in [
            &b"{\"format\":1,\"events\":[{"[..],
            br#"{"format":2,"events":[]}"#,
        ] {
            std::fs::write(&path, bytes).unwrap();
            assert!(restore(&path).is_empty());
            assert!(!path.exists());
            assert_eq!(
                std::fs::read(path.with_extension("json.bad")).unwrap(),
                bytes
            );
        }
    }

    #[test]
    fn a_stop_keeps_only_notifications_whose_record_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PENDING_FILE);
        let (_sender, queue) = crossbeam_channel::bounded(4);
        let outbox = Outbox::new(queue, None);
        let first = outbox.admit(notification(5)).unwrap();
        outbox.admit(notification(12)).unwrap();
        outbox.admit(notification(7)).unwrap();
        outbox.finish(first);
        assert_eq!(outbox.stop_and_save(&path, 10).unwrap(), 1);
        assert_eq!(
            outbox.admit(notification(8)),
            None,
            "nothing is taken after the stop"
        );
        assert_eq!(restore(&path), vec![notification(7)]);
    }
}
