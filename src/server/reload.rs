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
//!
//! The files are read on the blocking pool with a timeout ([`READ_TIMEOUT`]): a read stuck on a
//! hung mount keeps the last good state in force and never holds an async worker (the poll
//! goes on waiting for that read; a second one is never started beside it). SIGHUP asks for a
//! reload now: the files are read at once and a change is acted on without waiting for it to
//! hold still, as nginx reloads on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use crate::files::{Contents, read_all};

/// Contents of the watched files, in the order they were given.
type Snapshot = Vec<Contents>;

/// How long reading the watched files may take before the poll reports it and moves on.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// How the files are read ([`read_all`]; a test may stand in a slow one).
    read: fn(&[PathBuf]) -> Vec<Contents>,
}

impl Watch {
    /// Starts from the files' current contents; the caller loads them from [`Watch::contents`].
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self::reading_with(paths, read_all)
    }

    fn reading_with(paths: Vec<PathBuf>, read: fn(&[PathBuf]) -> Vec<Contents>) -> Self {
        let now = read(&paths);
        Self {
            paths,
            acted_on: now.clone(),
            last_seen: now,
            read,
        }
    }

    /// The contents last acted on (at first, those read by [`Watch::new`]), one per path.
    pub fn contents(&self) -> &[Contents] {
        &self.acted_on
    }

    pub fn poll(&mut self) -> Poll {
        let now = (self.read)(&self.paths);
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

    /// Reads the files and acts on any change at once (SIGHUP: the operator says the files are
    /// ready).
    pub fn poll_now(&mut self) -> Poll {
        let now = (self.read)(&self.paths);
        let poll = if now == self.acted_on {
            Poll::Unchanged
        } else {
            self.acted_on = now.clone();
            Poll::Changed
        };
        self.last_seen = now;
        poll
    }
}

/// What the reload task reports besides a change.
pub trait Report: Send + 'static {
    /// The files are read on SIGHUP; `changed` says whether anything was reloaded.
    fn asked(&mut self, changed: bool);
    /// Reading the files has taken longer than [`READ_TIMEOUT`]; the last good state stays.
    fn stuck(&mut self);
}

/// Polls `watch` every `interval` (and whenever `now` is notified: SIGHUP) and calls `reload`
/// with the contents of each change, until the task is dropped. `reload` keeps whatever it
/// decides; it must not panic.
pub async fn run(
    watch: Watch,
    interval: Duration,
    read_timeout: Duration,
    now: Arc<Notify>,
    mut reload: impl FnMut(&[Contents]) + Send,
    mut report: impl Report,
) {
    // tokio panics on a zero period; the command line refuses zero, a library caller may not.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut idle = Some(watch);
    // A read that outlived its timeout: waited for again at the next poll, never doubled.
    let mut reading: Option<tokio::task::JoinHandle<(Watch, Poll, bool)>> = None;
    loop {
        let asked = tokio::select! {
            _ = ticker.tick() => false,
            () = now.notified() => true,
        };
        let mut read = match (reading.take(), idle.take()) {
            (Some(read), _) => read,
            (None, Some(mut watch)) => tokio::task::spawn_blocking(move || {
                let poll = if asked {
                    watch.poll_now()
                } else {
                    watch.poll()
                };
                (watch, poll, asked)
            }),
            (None, None) => return,
        };
        match tokio::time::timeout(read_timeout, &mut read).await {
            Ok(Ok((watch, poll, asked))) => {
                if poll == Poll::Changed {
                    reload(watch.contents());
                }
                if asked {
                    report.asked(poll == Poll::Changed);
                }
                idle = Some(watch);
            }
            // The read panicked: a bug. The files are not watched from now on.
            Ok(Err(error)) => {
                tracing::error!(%error, "reading watched files panicked; reloads stop");
                return;
            }
            Err(_) => {
                report.stuck();
                reading = Some(read);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Reads that hang while `HANG` is set (a hung mount), counting how many are under way.
    static HANG: AtomicBool = AtomicBool::new(false);
    static READING: AtomicUsize = AtomicUsize::new(0);
    static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);

    fn hanging_read(paths: &[PathBuf]) -> Vec<Contents> {
        let at_once = READING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_AT_ONCE.fetch_max(at_once, Ordering::SeqCst);
        while HANG.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        READING.fetch_sub(1, Ordering::SeqCst);
        read_all(paths)
    }

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<&'static str>>>);

    impl Report for Seen {
        fn asked(&mut self, changed: bool) {
            self.0
                .lock()
                .unwrap()
                .push(if changed { "asked, changed" } else { "asked" });
        }
        fn stuck(&mut self) {
            self.0.lock().unwrap().push("stuck");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_read_is_reported_waited_for_and_never_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "1").unwrap();
        let watch = Watch::reading_with(vec![a.clone()], hanging_read);
        let reloads = Arc::new(Mutex::new(Vec::new()));
        let seen = Seen::default();
        let task = {
            let reloads = reloads.clone();
            tokio::spawn(run(
                watch,
                Duration::from_millis(10),
                Duration::from_millis(50),
                Arc::new(Notify::new()),
                move |contents: &[Contents]| reloads.lock().unwrap().push(contents.to_vec()),
                seen.clone(),
            ))
        };
        HANG.store(true, Ordering::SeqCst);
        std::fs::write(&a, "2").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(seen.0.lock().unwrap().contains(&"stuck"));
        assert!(
            reloads.lock().unwrap().is_empty(),
            "nothing reloaded while stuck"
        );
        assert_eq!(
            MOST_AT_ONCE.load(Ordering::SeqCst),
            1,
            "a second read beside the stuck one"
        );
        HANG.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*reloads.lock().unwrap(), [vec![Ok(b"2".to_vec())]]);
        task.abort();
    }

    #[tokio::test]
    async fn asked_for_it_reloads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "1").unwrap();
        let now = Arc::new(Notify::new());
        let reloads = Arc::new(Mutex::new(Vec::new()));
        let seen = Seen::default();
        let task = {
            let (reloads, now) = (reloads.clone(), now.clone());
            tokio::spawn(run(
                Watch::new(vec![a.clone()]),
                Duration::from_secs(3600),
                READ_TIMEOUT,
                now,
                move |contents: &[Contents]| reloads.lock().unwrap().push(contents.to_vec()),
                seen.clone(),
            ))
        };
        std::fs::write(&a, "2").unwrap();
        now.notify_one();
        for _ in 0..100 {
            if !reloads.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *reloads.lock().unwrap(),
            [vec![Ok(b"2".to_vec())]],
            "no waiting for it to hold still"
        );
        assert_eq!(*seen.0.lock().unwrap(), ["asked, changed"]);
        now.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*seen.0.lock().unwrap(), ["asked, changed", "asked"]);
        task.abort();
    }

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
        let read_in_between = crate::files::read(&a);
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
