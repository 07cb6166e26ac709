//! Reloading files that change under a running server: the serving certificate and key (and
//! client CA), and the policy file.
//!
//! Files are polled by content, not watched by name: Kubernetes updates a mounted Secret or
//! ConfigMap by swapping a `..data` symlink, which a watch on the file itself never sees, and
//! polling also catches editors that write in place (controller-runtime's certwatcher polls too).
//! A change is acted on once the contents have held still for one poll, so a pair written in two
//! steps is not loaded half-way.

use std::path::PathBuf;
use std::time::Duration;

/// Contents of the watched files (`None`: missing or unreadable).
type Snapshot = Vec<Option<Vec<u8>>>;

fn snapshot(paths: &[PathBuf]) -> Snapshot {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

/// What a poll concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    Unchanged,
    /// Changed since the last poll; waiting for it to hold still.
    Settling,
    /// Changed, and the same as at the last poll: act on it.
    Changed,
}

/// Tracks a set of files between polls.
#[derive(Debug)]
pub struct Watch {
    paths: Vec<PathBuf>,
    acted_on: Snapshot,
    last_seen: Snapshot,
}

impl Watch {
    /// Starts from the files' current contents, which the caller has already loaded.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let now = snapshot(&paths);
        Self {
            paths,
            acted_on: now.clone(),
            last_seen: now,
        }
    }

    pub fn poll(&mut self) -> Poll {
        let now = snapshot(&self.paths);
        let poll = if now == self.acted_on {
            Poll::Unchanged
        } else if now == self.last_seen {
            self.acted_on = now.clone();
            Poll::Changed
        } else {
            Poll::Settling
        };
        self.last_seen = now;
        poll
    }
}

/// Polls `watch` every `interval` and calls `reload` for each settled change, until the task is
/// dropped. `reload` keeps whatever it decides; it must not panic.
///
/// Make the [`Watch`] before loading the files the first time: a change between the snapshot
/// and the load is then seen as a change (and loaded again, harmlessly), never lost.
pub async fn run(mut watch: Watch, interval: Duration, mut reload: impl FnMut() + Send) {
    // tokio panics on a zero period; the command line refuses zero, a library caller may not.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if watch.poll() == Poll::Changed {
            reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_it_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let mut watch = Watch::new(vec![a.clone(), b.clone()]);
        assert_eq!(watch.poll(), Poll::Unchanged);
        std::fs::write(&a, "2").unwrap();
        assert_eq!(watch.poll(), Poll::Settling);
        std::fs::write(&b, "2").unwrap();
        assert_eq!(watch.poll(), Poll::Settling, "still moving");
        assert_eq!(watch.poll(), Poll::Changed);
        assert_eq!(watch.poll(), Poll::Unchanged);
    }

    #[test]
    fn symlink_swaps_are_seen() {
        // The way kubelet updates a Secret volume: files are links through `..data`, which is
        // replaced by renaming a new link over it.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("v1")).unwrap();
        std::fs::create_dir(d.join("v2")).unwrap();
        std::fs::write(d.join("v1/tls.crt"), "old").unwrap();
        std::fs::write(d.join("v2/tls.crt"), "new").unwrap();
        std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
        let mut watch = Watch::new(vec![d.join("tls.crt")]);
        std::os::unix::fs::symlink("v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_eq!(watch.poll(), Poll::Settling);
        assert_eq!(watch.poll(), Poll::Changed);
    }

    #[test]
    fn a_vanished_file_is_a_change_too() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "1").unwrap();
        let mut watch = Watch::new(vec![a.clone()]);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(watch.poll(), Poll::Settling);
        assert_eq!(watch.poll(), Poll::Changed);
    }
}
