//! Reloading files that change under a running server: the serving certificate and key (and
//! client CA), and the policy file.
//!
//! Files are polled by content, not watched by name: Kubernetes updates a mounted Secret or
//! ConfigMap by swapping a `..data` symlink, which a watch on the file itself never sees, and
//! polling also catches editors that write in place (controller-runtime's certwatcher polls too).
//! A change is acted on once the contents have held still for one poll, so a pair written in two
//! steps is not loaded half-way. What is loaded is the very contents the watch compared, never a
//! second read of the files: a file that changed between the two and then changed back would
//! otherwise leave the server on contents the watch takes for the file's.

use std::path::PathBuf;
use std::time::Duration;

/// One file's contents, or why it could not be read.
pub type Contents = Result<Vec<u8>, String>;

/// Contents of the watched files, in the order they were given.
type Snapshot = Vec<Contents>;

/// Reads `path` whole.
pub fn read(path: &std::path::Path) -> Contents {
    std::fs::read(path).map_err(|e| e.to_string())
}

/// Reads each of `paths` whole, in order.
pub fn read_all(paths: &[PathBuf]) -> Vec<Contents> {
    paths.iter().map(|p| read(p)).collect()
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
    /// Starts from the files' current contents; the caller loads them from [`Watch::contents`].
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let now = read_all(&paths);
        Self {
            paths,
            acted_on: now.clone(),
            last_seen: now,
        }
    }

    /// The contents last acted on (at first, those read by [`Watch::new`]), one per path.
    pub fn contents(&self) -> &[Contents] {
        &self.acted_on
    }

    pub fn poll(&mut self) -> Poll {
        let now = read_all(&self.paths);
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

/// Polls `watch` every `interval` and calls `reload` with the contents of each settled change,
/// until the task is dropped. `reload` keeps whatever it decides; it must not panic.
pub async fn run(mut watch: Watch, interval: Duration, mut reload: impl FnMut(&[Contents]) + Send) {
    // tokio panics on a zero period; the command line refuses zero, a library caller may not.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if watch.poll() == Poll::Changed {
            reload(watch.contents());
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
        assert_eq!(watch.contents(), [Ok(b"2".to_vec()), Ok(b"2".to_vec())]);
        assert_eq!(watch.poll(), Poll::Unchanged);
    }

    #[test]
    fn what_is_loaded_is_what_was_compared() {
        // A file that changes and changes back between two polls is unchanged to the watch, so
        // the contents in force must be the watch's own, not a read made in between.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "warn").unwrap();
        let mut watch = Watch::new(vec![a.clone()]);
        std::fs::write(&a, "enforce").unwrap();
        let read_in_between = read(&a);
        std::fs::write(&a, "warn").unwrap();
        assert_eq!(watch.poll(), Poll::Unchanged);
        assert_eq!(watch.contents(), [Ok(b"warn".to_vec())]);
        assert_ne!(watch.contents(), [read_in_between]);
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
        let [Err(reason)] = watch.contents() else {
            panic!("{:?}", watch.contents())
        };
        assert!(reason.contains("No such file"), "{reason}");
    }
}
