//! The shared advisory store: the content of every loaded AdvisoryFeed,
//! merged into one immutable [`AdvisoryDb`] that is swapped whole when a feed
//! changes. Subscribers learn exactly which (ecosystem, package) keys changed.
//!
//! Readers never wait for a rebuild: the new database is built outside the
//! lock readers take, which is held only to copy or swap a pointer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::broadcast;

use super::feed_source::FeedContent;
use crate::engine::advisory::{AdvisoryDb, IndexDiff, KevCatalog};

/// The advisory data of every feed and the merged database.
#[derive(Debug)]
pub struct AdvisoryStore {
    /// What readers see; held only to clone or replace the `Arc`s.
    current: RwLock<Current>,
    /// Every feed's content. Held while a new database is built from it
    /// (on a blocking thread, never the async runtime), so two refreshes
    /// build one after the other and neither's swap loses the other's feed.
    feeds: Mutex<BTreeMap<String, FeedContent>>,
    changes: broadcast::Sender<Arc<IndexDiff>>,
    started: Timestamp,
    grace: SignedDuration,
    /// The feeds that existed at start, and those that have been tried once:
    /// until every one was tried (or the grace period ends), verdicts stay as
    /// they were, so a start does not flap through partial data (OSV loaded,
    /// the KEV catalog not yet).
    startup: std::sync::Mutex<Startup>,
}

#[derive(Debug, Default)]
struct Startup {
    expected: Option<std::collections::BTreeSet<String>>,
    attempted: std::collections::BTreeSet<String>,
    settled: bool,
}

#[derive(Debug, Default)]
struct Current {
    db: Arc<AdvisoryDb>,
    /// Records (OSV) or entries (KEV) per loaded feed.
    sizes: Arc<BTreeMap<String, usize>>,
}

/// Whether an ecosystem can be judged now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// Advisories are loaded for it.
    Loaded,
    /// Nothing loaded yet, still inside the start-up grace period: leave
    /// earlier compliance as it was until the given instant.
    Waiting(Timestamp),
    /// Nothing loaded and the grace period is over: Unknown.
    Missing,
}

impl AdvisoryStore {
    /// An empty store; `grace` is how long after `started` an ecosystem
    /// without data keeps its earlier compliance.
    pub fn new(started: Timestamp, grace: SignedDuration) -> Self {
        let (changes, _) = broadcast::channel(64);
        AdvisoryStore {
            current: RwLock::new(Current::default()),
            feeds: Mutex::new(BTreeMap::new()),
            changes,
            started,
            grace,
            startup: std::sync::Mutex::new(Startup::default()),
        }
    }

    /// The current database.
    pub fn db(&self) -> Arc<AdvisoryDb> {
        self.current
            .read()
            .map(|c| Arc::clone(&c.db))
            .unwrap_or_default()
    }

    /// Whether `ecosystem` can be judged now: loaded (and every feed of
    /// the start tried once), still within the grace period, or missing.
    pub fn data_state(&self, ecosystem: &str, now: Timestamp) -> DataState {
        let loaded = self.db().has_data_for(ecosystem);
        if loaded && self.settled() {
            return DataState::Loaded;
        }
        match self.started.checked_add(self.grace) {
            Ok(end) if now < end => DataState::Waiting(end),
            _ if loaded => DataState::Loaded,
            _ => DataState::Missing,
        }
    }

    /// True once every feed present at start has been tried once.
    pub fn settled(&self) -> bool {
        self.startup.lock().map(|s| s.settled).unwrap_or(true)
    }

    /// Records the feeds present at start.
    pub fn expect_feeds(&self, names: impl IntoIterator<Item = String>) {
        if let Ok(mut s) = self.startup.lock() {
            s.expected = Some(names.into_iter().collect());
        }
        self.check_settled();
    }

    /// Records that a feed was tried (successfully or not).
    pub fn attempted(&self, feed: &str) {
        if let Ok(mut s) = self.startup.lock() {
            s.attempted.insert(feed.to_owned());
        }
        self.check_settled();
    }

    fn check_settled(&self) {
        let newly = match self.startup.lock() {
            Ok(mut s) => {
                let done = !s.settled
                    && s.expected
                        .as_ref()
                        .is_some_and(|e| e.is_subset(&s.attempted));
                if done {
                    s.settled = true;
                }
                done
            }
            Err(_) => false,
        };
        if newly {
            // Every object on a loaded platform may be judged now.
            let ecosystems = self.db().ecosystems().keys().cloned().collect();
            let _ = self.changes.send(Arc::new(IndexDiff {
                changed: Default::default(),
                ecosystems,
            }));
        }
    }

    /// Subscribes to index changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<IndexDiff>> {
        self.changes.subscribe()
    }

    /// The number of advisories `feed` contributed last time (for the
    /// suspect-drop check).
    pub fn feed_size(&self, feed: &str) -> Option<usize> {
        let sizes = self.current.read().map(|c| Arc::clone(&c.sizes)).ok()?;
        sizes.get(feed).copied()
    }

    /// Replaces one feed's content (or removes it with `None`), rebuilds the
    /// database and announces what changed.
    ///
    /// Blocking (the rebuild takes seconds on a large feed): call it on a
    /// blocking thread (`tokio::task::spawn_blocking`).
    pub fn set_feed(&self, feed: &str, content: Option<FeedContent>) -> Arc<IndexDiff> {
        let Ok(mut feeds) = self.feeds.lock() else {
            return Arc::new(IndexDiff::default());
        };
        match content {
            Some(c) => {
                feeds.insert(feed.to_owned(), c);
            }
            None => {
                feeds.remove(feed);
            }
        }
        let mut records = Vec::new();
        let mut kev = KevCatalog::default();
        for content in feeds.values() {
            match content {
                FeedContent::Osv(r) => records.extend(r.iter().cloned()),
                FeedContent::Kev(k) => kev.merge(k.clone()),
            }
        }
        let sizes: BTreeMap<String, usize> = feeds
            .iter()
            .map(|(name, content)| (name.clone(), content.len()))
            .collect();
        let (db, report) = AdvisoryDb::build(records, kev, &[]);
        if !report.errors.is_empty() {
            tracing::warn!(
                errors = report.errors.len(),
                first = ?report.errors.first(),
                "advisory entries with unreadable versions were left out"
            );
        }
        // Only this thread replaces `current` (it holds `feeds`), so the
        // database diffed against is the one the swap replaces.
        let diff = Arc::new(db.diff(&self.db()));
        if let Ok(mut current) = self.current.write() {
            *current = Current {
                db: Arc::new(db),
                sizes: Arc::new(sizes),
            };
        }
        drop(feeds);
        if !diff.is_empty() {
            // Nobody listening is fine (e.g. during start-up).
            let _ = self.changes.send(Arc::clone(&diff));
        }
        diff
    }
}
