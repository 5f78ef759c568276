//! The shared advisory store: the content of every loaded AdvisoryFeed,
//! merged into one immutable [`AdvisoryDb`] that is swapped whole when a feed
//! changes. Subscribers learn exactly which (ecosystem, package) keys changed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::broadcast;

use super::feed_source::FeedContent;
use crate::engine::advisory::{AdvisoryDb, IndexDiff, KevCatalog};

/// The advisory data of every feed and the merged database.
#[derive(Debug)]
pub struct AdvisoryStore {
    inner: RwLock<Inner>,
    changes: broadcast::Sender<Arc<IndexDiff>>,
    started: Timestamp,
    grace: SignedDuration,
}

#[derive(Debug, Default)]
struct Inner {
    feeds: BTreeMap<String, FeedContent>,
    db: Arc<AdvisoryDb>,
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
            inner: RwLock::new(Inner::default()),
            changes,
            started,
            grace,
        }
    }

    /// The current database.
    pub fn db(&self) -> Arc<AdvisoryDb> {
        self.inner
            .read()
            .map(|i| Arc::clone(&i.db))
            .unwrap_or_default()
    }

    /// Whether `ecosystem` has data, or is still within the grace period.
    pub fn data_state(&self, ecosystem: &str, now: Timestamp) -> DataState {
        if self.db().has_data_for(ecosystem) {
            return DataState::Loaded;
        }
        match self.started.checked_add(self.grace) {
            Ok(end) if now < end => DataState::Waiting(end),
            _ => DataState::Missing,
        }
    }

    /// Subscribes to index changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<IndexDiff>> {
        self.changes.subscribe()
    }

    /// The number of advisories `feed` contributed last time (for the
    /// suspect-drop check).
    pub fn feed_size(&self, feed: &str) -> Option<usize> {
        let inner = self.inner.read().ok()?;
        inner.feeds.get(feed).map(|c| match c {
            FeedContent::Osv(records) => records.len(),
            FeedContent::Kev(kev) => kev.entries.len(),
        })
    }

    /// Replaces one feed's content (or removes it with `None`), rebuilds the
    /// database and announces what changed. `ecosystems` filters OSV data.
    pub fn set_feed(&self, feed: &str, content: Option<FeedContent>) -> Arc<IndexDiff> {
        let Ok(mut inner) = self.inner.write() else {
            return Arc::new(IndexDiff::default());
        };
        match content {
            Some(c) => {
                inner.feeds.insert(feed.to_owned(), c);
            }
            None => {
                inner.feeds.remove(feed);
            }
        }
        let mut records = Vec::new();
        let mut kev = KevCatalog::default();
        for content in inner.feeds.values() {
            match content {
                FeedContent::Osv(r) => records.extend(r.iter().cloned()),
                FeedContent::Kev(k) => kev.merge(k.clone()),
            }
        }
        let (db, report) = AdvisoryDb::build(records, kev, &[]);
        if !report.errors.is_empty() {
            tracing::warn!(
                errors = report.errors.len(),
                first = ?report.errors.first(),
                "advisory entries with unreadable versions were left out"
            );
        }
        let diff = Arc::new(db.diff(&inner.db));
        inner.db = Arc::new(db);
        drop(inner);
        if !diff.is_empty() {
            // Nobody listening is fine (e.g. during start-up).
            let _ = self.changes.send(Arc::clone(&diff));
        }
        diff
    }
}
