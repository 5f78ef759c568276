//! The AdvisoryFeed reconciler (cluster-scoped): fetch, parse, check, swap
//! into the shared advisory store; a failed or suspect refresh keeps the last
//! good data and says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use super::feed_source::{self, FeedContent, Fetched, Validators};
use super::{Error, Shared, now, observed, write_status};
use crate::api::AdvisoryFeed;
use crate::api::common::{DurationError, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::feed::{AdvisoryFeedStatus, EcosystemCount};

/// The field manager of AdvisoryFeed status.
pub const MANAGER: &str = "patchloop-feed";

/// What the feed reconciler remembers between refreshes of one feed.
#[derive(Debug, Default, Clone)]
struct Held {
    /// [`settings_key`] of the spec the data was loaded with: the
    /// validators and digest below describe the result of those settings
    /// only.
    settings: String,
    validators: Validators,
    digest: String,
}

/// A digest of everything in a feed's spec that decides what its data is:
/// the source (URL, ConfigMap, path and their settings), the format and the
/// ecosystems kept. When it changes, the held validators and digest no
/// longer describe what the spec asks for: the next refresh downloads
/// unconditionally and parses even content whose bytes are unchanged.
fn settings_key(feed: &AdvisoryFeed) -> String {
    let mut ecosystems = feed.spec.ecosystems.clone();
    ecosystems.sort_unstable();
    ecosystems.dedup();
    let settings = serde_json::json!({
        "source": feed.spec.source,
        "format": feed.spec.format,
        "ecosystems": ecosystems,
    });
    let digest = Sha256::digest(settings.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The feed reconciler's context.
pub struct FeedContext {
    /// Shared client, store, metrics.
    pub shared: Arc<Shared>,
    /// Feed downloads.
    pub http: reqwest::Client,
    held: Mutex<HashMap<String, Held>>,
}

impl FeedContext {
    /// A context around the shared parts.
    pub fn new(shared: Arc<Shared>, http: reqwest::Client) -> Self {
        FeedContext {
            shared,
            http,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a deleted feed and removes its data (the rebuild runs on a
    /// blocking thread).
    pub async fn forget(&self, feed: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(feed);
        }
        let shared = Arc::clone(&self.shared);
        let name = feed.to_owned();
        if let Err(e) =
            tokio::task::spawn_blocking(move || shared.advisories.set_feed(&name, None)).await
        {
            tracing::error!(feed, error = %e, "removing a deleted feed's data failed");
        }
        self.shared.metrics.forget_feed(feed);
    }
}

fn ecosystem_counts(content: &FeedContent, wanted: &[String]) -> Vec<EcosystemCount> {
    let FeedContent::Osv(records) = content else {
        return Vec::new();
    };
    let mut counts: BTreeMap<&str, i32> = BTreeMap::new();
    for r in records {
        let mut seen: Vec<&str> = r
            .affected
            .iter()
            .filter_map(|a| a.package.as_ref())
            .map(|p| p.ecosystem.as_str())
            .filter(|e| !e.is_empty() && (wanted.is_empty() || wanted.iter().any(|w| w == e)))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for e in seen {
            *counts.entry(e).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(name, advisories)| EcosystemCount {
            name: name.to_owned(),
            advisories,
        })
        .collect()
}

/// Reconciles one AdvisoryFeed.
pub async fn reconcile(feed: Arc<AdvisoryFeed>, ctx: Arc<FeedContext>) -> Result<Action, Error> {
    let shared = Arc::clone(&ctx.shared);
    observed(
        &shared,
        "feed",
        feed.as_ref(),
        reconcile_inner(Arc::clone(&feed), &ctx),
    )
    .await
}

enum Outcome {
    /// New data parsed, with its per-ecosystem counts, the validators and
    /// the content digest.
    Loaded(FeedContent, Vec<EcosystemCount>, Validators, String),
    /// The data held is current.
    Unchanged,
    /// The refresh failed or was refused; the last good data stays.
    Failed(&'static str, String),
}

/// Fetches the feed's data and parses it, unless the source or the
/// content is unchanged since the data held; refuses a suspect drop.
async fn refresh(
    ctx: &FeedContext,
    feed: &AdvisoryFeed,
    name: &str,
    held: &Held,
    settings: &str,
) -> Outcome {
    // Validators and the digest count only for data loaded with the same
    // settings: after a change of URL or ecosystems a 304 or identical bytes
    // must not keep data the new spec did not ask for.
    let current = ctx.shared.advisories.feed_size(name).is_some() && held.settings == settings;
    let validators = if current {
        held.validators.clone()
    } else {
        Validators::default()
    };
    let fetched = feed_source::fetch(
        &ctx.shared.client,
        &ctx.http,
        &feed.spec.source,
        &validators,
        ctx.shared.settings.feed_max_bytes,
    )
    .await;
    let (blobs, validators) = match fetched {
        Ok(Fetched::NotModified) => return Outcome::Unchanged,
        Ok(Fetched::Content { blobs, validators }) => (blobs, validators),
        Err(e) => return Outcome::Failed(e.reason(), e.to_string()),
    };
    let held_digest = current.then(|| held.digest.clone());
    let (content, counts, digest) = match parse_off_runtime(ctx, feed, blobs, held_digest).await {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Outcome::Unchanged,
        Err((reason, message)) => return Outcome::Failed(reason, message),
    };
    let previous = ctx.shared.advisories.feed_size(name).unwrap_or(0);
    if feed_source::is_suspect_drop(previous, content.len(), feed.spec.max_drop_percent) {
        return Outcome::Failed(
            "SuspectDrop",
            format!(
                "the refresh has {} advisories where the last good data had {previous}: more than maxDropPercent ({}%) lost, kept out",
                content.len(),
                feed.spec.max_drop_percent
            ),
        );
    }
    Outcome::Loaded(content, counts, validators, digest)
}

/// Parsed feed data: the content, its per-ecosystem counts and its digest.
type Parsed = (FeedContent, Vec<EcosystemCount>, String);

/// Hashes and parses `blobs` off the runtime's worker threads (it takes
/// seconds on a large feed); `None` when their digest is `held_digest`.
async fn parse_off_runtime(
    ctx: &FeedContext,
    feed: &AdvisoryFeed,
    blobs: Vec<feed_source::Blob>,
    held_digest: Option<String>,
) -> Result<Option<Parsed>, RefreshError> {
    let spec = feed.spec.clone();
    let ceiling = ctx.shared.settings.feed_max_bytes;
    let parsed = tokio::task::spawn_blocking(move || {
        let digest = feed_source::content_digest(&blobs);
        if held_digest.as_ref() == Some(&digest) {
            return Ok(None);
        }
        let limits = feed_source::zip_limits(&spec.source, ceiling);
        let content = feed_source::parse(spec.format, &spec.ecosystems, &blobs, "", limits)?;
        drop(blobs);
        let counts = ecosystem_counts(&content, &spec.ecosystems);
        Ok(Some((content, counts, digest)))
    })
    .await;
    match parsed {
        Ok(Ok(loaded)) => Ok(loaded),
        Ok(Err(e)) => {
            let e: feed_source::FetchError = e;
            Err((e.reason(), e.to_string()))
        }
        Err(e) => Err(("ParseFailed", format!("the parser task failed: {e}"))),
    }
}

async fn reconcile_inner(feed: Arc<AdvisoryFeed>, ctx: &Arc<FeedContext>) -> Result<Action, Error> {
    let name = feed.name_any();
    let now = now();
    let held = ctx
        .held
        .lock()
        .ok()
        .and_then(|h| h.get(&name).cloned())
        .unwrap_or_default();
    let settings = settings_key(&feed);
    let outcome = refresh(ctx, &feed, &name, &held, &settings).await;
    let refreshed = apply(ctx, &name, outcome, settings, now).await;
    let has_data = ctx.shared.advisories.feed_size(&name).is_some();
    let decided = decide(&feed, refreshed, has_data, now);
    update_status(ctx, &feed, &decided).await?;
    Ok(Action::requeue(decided.retry))
}

/// What a refresh left: the loaded data's facts for the status, or why it
/// failed (the last good data stays in the store either way).
enum Refreshed {
    /// New data is in the store.
    Loaded {
        advisories: i32,
        ecosystems: Vec<EcosystemCount>,
        digest: String,
        validators: Validators,
    },
    /// The data held is current.
    Unchanged,
    /// The refresh, or the index rebuild, failed: reason and message.
    Failed(&'static str, String),
}

/// Puts a refresh's data into the shared store (off the runtime's worker
/// threads), remembers what it was loaded with, and counts it.
async fn apply(
    ctx: &FeedContext,
    name: &str,
    outcome: Outcome,
    settings: String,
    now: Timestamp,
) -> Refreshed {
    let shared = &ctx.shared;
    match outcome {
        Outcome::Loaded(content, ecosystems, validators, digest) => {
            let held = Held {
                settings,
                validators,
                digest,
            };
            swap_in(ctx, name, content, ecosystems, held, now).await
        }
        Outcome::Unchanged => {
            // A load is recorded as attempted once its data is in the store.
            shared.advisories.attempted(name);
            shared.metrics.set_feed_last_success(name, now);
            Refreshed::Unchanged
        }
        Outcome::Failed(reason, message) => {
            shared.advisories.attempted(name);
            shared.metrics.feed_error(name);
            Refreshed::Failed(reason, message)
        }
    }
}

/// Replaces the feed's data in the store with `content` (rebuilding the
/// index on a blocking thread) and remembers what it was loaded with.
async fn swap_in(
    ctx: &FeedContext,
    name: &str,
    content: FeedContent,
    ecosystems: Vec<EcosystemCount>,
    held: Held,
    now: Timestamp,
) -> Refreshed {
    let shared = &ctx.shared;
    let advisories = i32::try_from(content.len()).unwrap_or(i32::MAX);
    let store = Arc::clone(shared);
    let feed_name = name.to_owned();
    let swapped =
        tokio::task::spawn_blocking(move || store.advisories.set_feed(&feed_name, Some(content)))
            .await;
    shared.advisories.attempted(name);
    let diff = match swapped {
        Ok(diff) => diff,
        Err(e) => {
            tracing::error!(error = %e, "rebuilding the advisory index failed");
            shared.metrics.feed_error(name);
            let message = "rebuilding the advisory index with this data failed";
            return Refreshed::Failed("IndexFailed", message.to_owned());
        }
    };
    tracing::info!(advisories, changed_keys = diff.changed.len(), "feed loaded");
    let (validators, digest) = (held.validators.clone(), held.digest.clone());
    if let Ok(mut h) = ctx.held.lock() {
        h.insert(name.to_owned(), held);
    }
    shared.metrics.feed_refreshed(name, now, &ecosystems);
    Refreshed::Loaded {
        advisories,
        ecosystems,
        digest,
        validators,
    }
}

/// What a feed's reconcile decided: its status, the Event of a `Degraded`
/// transition, and when to refresh again.
#[derive(Debug)]
struct Decided {
    status: AdvisoryFeedStatus,
    event: Option<(bool, String, String)>,
    retry: std::time::Duration,
}

/// The feed's status after a refresh (pure). `has_data`: the store holds
/// data of this feed (this refresh's or the last good one).
fn decide(feed: &AdvisoryFeed, refreshed: Refreshed, has_data: bool, now: Timestamp) -> Decided {
    let previous = feed.status.clone().unwrap_or_default();
    let mut status = AdvisoryFeedStatus {
        observed_generation: feed.metadata.generation,
        ..previous.clone()
    };
    let error = record_refresh(&mut status, refreshed, now);
    let interval = feed.spec.interval.parse();
    let ready = ready_condition(
        interval.as_ref().err(),
        has_data,
        error.as_ref(),
        status.advisories,
    );
    let degraded = degraded_condition(error.as_ref(), has_data);
    let (conds, transitions) = conditions::merge(
        &previous.conditions,
        &[ready, degraded],
        feed.metadata.generation,
        &time(now),
    );
    status.conditions = conds;
    let event = match &error {
        _ if !transitions.contains(&types::DEGRADED) => None,
        Some((reason, message)) => Some((true, (*reason).to_owned(), message.clone())),
        // Only a feed judged before recovers.
        None if conditions::find(&previous.conditions, types::DEGRADED).is_some() => Some((
            false,
            "Recovered".to_owned(),
            "the feed refreshed successfully again".to_owned(),
        )),
        None => None,
    };
    let interval = match interval {
        Ok(d) => std::time::Duration::from_secs(u64::try_from(d.as_secs()).unwrap_or(3600).max(10)),
        Err(_) => std::time::Duration::from_secs(3600),
    };
    // A failing feed is tried again within a minute.
    let retry = match error {
        Some(_) => interval.min(std::time::Duration::from_secs(60)),
        None => interval,
    };
    Decided {
        status,
        event,
        retry,
    }
}

/// A failed refresh's reason and message.
type RefreshError = (&'static str, String);

/// Records a refresh's facts in `status` (a failure changes none: the last
/// good data's stay); returns the failure.
fn record_refresh(
    status: &mut AdvisoryFeedStatus,
    refreshed: Refreshed,
    now: Timestamp,
) -> Option<RefreshError> {
    match refreshed {
        Refreshed::Loaded {
            advisories,
            ecosystems,
            digest,
            validators,
        } => {
            status.advisories = advisories;
            status.ecosystems = ecosystems;
            status.content_digest = Some(digest);
            status.etag = validators.etag;
            status.last_modified = validators.last_modified;
            status.last_sync_time = Some(time(now));
            None
        }
        Refreshed::Unchanged => {
            status.last_sync_time = Some(time(now));
            None
        }
        Refreshed::Failed(reason, message) => Some((reason, message)),
    }
}

/// `Ready`: data is held (whatever this refresh did), or why none is.
fn ready_condition(
    bad_interval: Option<&DurationError>,
    has_data: bool,
    error: Option<&RefreshError>,
    advisories: i32,
) -> DesiredCondition {
    let (status, reason, message) = match (bad_interval, has_data, error) {
        (Some(e), _, _) => (
            ConditionStatus::False,
            "InvalidSpec",
            format!("spec.interval: {e}"),
        ),
        (None, true, _) => (
            ConditionStatus::True,
            "Loaded",
            format!("{advisories} advisories loaded"),
        ),
        (None, false, Some((reason, message))) => {
            (ConditionStatus::False, *reason, message.clone())
        }
        (None, false, None) => (
            ConditionStatus::False,
            "NoData",
            "nothing loaded yet".to_owned(),
        ),
    };
    DesiredCondition::new(types::READY, status, reason, message)
}

/// `Degraded`: whether the last refresh failed (and whether the last good
/// data is kept).
fn degraded_condition(error: Option<&RefreshError>, has_data: bool) -> DesiredCondition {
    match error {
        Some((reason, message)) => DesiredCondition::new(
            types::DEGRADED,
            ConditionStatus::True,
            *reason,
            if has_data {
                format!("{message}; the last good data is kept")
            } else {
                message.clone()
            },
        ),
        None => DesiredCondition::new(
            types::DEGRADED,
            ConditionStatus::False,
            "RefreshSucceeded",
            "the last refresh succeeded",
        ),
    }
}

/// Writes the status when it changed, and the Event of a `Degraded`
/// transition — on the leader only: standbys load feeds too (a failover
/// starts with data) but write nothing. A 304 or an unchanged download
/// moves only `lastSyncTime`, at most once per interval, so a steady feed
/// causes no write storm.
async fn update_status(
    ctx: &FeedContext,
    feed: &AdvisoryFeed,
    decided: &Decided,
) -> Result<(), Error> {
    let shared = &ctx.shared;
    if !shared.leadership.is_leader() {
        return Ok(());
    }
    let previous = feed.status.clone().unwrap_or_default();
    if decided.status != previous {
        let api: Api<AdvisoryFeed> = Api::all(shared.client.clone());
        let name = feed.name_any();
        write_status(
            shared,
            &api,
            &name,
            "feed",
            MANAGER,
            &decided.status,
            &previous,
            None,
        )
        .await?;
    }
    if let Some((warning, reason, message)) = &decided.event {
        shared.event(feed, *warning, reason, message.clone()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(interval: &str) -> AdvisoryFeed {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
            "metadata": {"name": "osv-debian", "generation": 1},
            "spec": {"source": {"url": {"url": "https://feeds.example/all.zip"}}, "format": "OSV",
                     "interval": interval}
        }))
        .expect("a feed")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn loaded() -> Refreshed {
        Refreshed::Loaded {
            advisories: 42,
            ecosystems: Vec::new(),
            digest: "abc".into(),
            validators: Validators {
                etag: Some("\"v1\"".into()),
                last_modified: None,
            },
        }
    }

    fn condition(d: &Decided, type_: &str) -> (String, String, String) {
        let c = conditions::find(&d.status.conditions, type_).expect("the condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn a_failure_keeps_the_last_good_data_retries_within_a_minute_and_recovers_once() {
        let mut f = feed("6h");
        let first = decide(&f, loaded(), true, at("2026-12-05T10:00:00Z"));
        assert_eq!(condition(&first, types::READY).1, "Loaded");
        assert_eq!(condition(&first, types::DEGRADED).1, "RefreshSucceeded");
        assert_eq!(first.status.advisories, 42);
        assert_eq!(first.status.etag.as_deref(), Some("\"v1\""));
        assert_eq!(first.retry, std::time::Duration::from_secs(6 * 3600));
        assert_eq!(first.event, None, "a first success announces nothing");

        f.status = Some(first.status);
        let failed = Refreshed::Failed("Unreachable", "connection refused".into());
        let down = decide(&f, failed, true, at("2026-12-05T16:00:00Z"));
        assert_eq!(condition(&down, types::READY).1, "Loaded");
        assert_eq!(
            condition(&down, types::DEGRADED),
            (
                "True".into(),
                "Unreachable".into(),
                "connection refused; the last good data is kept".into()
            )
        );
        assert_eq!(
            down.status.advisories, 42,
            "the last good data's facts stay"
        );
        assert_eq!(down.retry, std::time::Duration::from_secs(60));
        assert_eq!(
            down.event,
            Some((true, "Unreachable".into(), "connection refused".into()))
        );

        f.status = Some(down.status);
        let up = decide(&f, Refreshed::Unchanged, true, at("2026-12-05T16:01:00Z"));
        assert_eq!(condition(&up, types::DEGRADED).1, "RefreshSucceeded");
        assert_eq!(
            up.status.last_sync_time.as_ref().map(|t| t.0),
            Some(at("2026-12-05T16:01:00Z"))
        );
        assert_eq!(up.event.as_ref().map(|e| e.1.as_str()), Some("Recovered"));
    }

    #[test]
    fn no_data_and_a_bad_interval_are_named() {
        let failed = Refreshed::Failed("TooLarge", "over maxBytes".into());
        let none = decide(&feed("1h"), failed, false, at("2026-12-05T10:00:00Z"));
        assert_eq!(
            condition(&none, types::READY),
            ("False".into(), "TooLarge".into(), "over maxBytes".into())
        );
        let bad = decide(
            &feed("soon"),
            Refreshed::Unchanged,
            false,
            at("2026-12-05T10:00:00Z"),
        );
        let (status, reason, message) = condition(&bad, types::READY);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
        assert!(message.starts_with("spec.interval: "), "{message}");
        assert_eq!(bad.retry, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn the_conditions_say_whether_data_is_held_and_kept() {
        let nothing = ready_condition(None, false, None, 0);
        assert_eq!(
            (nothing.reason.as_str(), nothing.message.as_str()),
            ("NoData", "nothing loaded yet")
        );
        let error = ("HttpStatus", "https://feeds.example: HTTP 500".to_owned());
        let kept = degraded_condition(Some(&error), true);
        assert_eq!(
            kept.message,
            "https://feeds.example: HTTP 500; the last good data is kept"
        );
        let none_kept = degraded_condition(Some(&error), false);
        assert_eq!(none_kept.message, "https://feeds.example: HTTP 500");
        let mut status = AdvisoryFeedStatus::default();
        let failed = Refreshed::Failed(error.0, error.1.clone());
        assert_eq!(
            record_refresh(&mut status, failed, at("2026-12-05T10:00:00Z")),
            Some(error)
        );
        assert_eq!(
            status,
            AdvisoryFeedStatus::default(),
            "a failure records nothing"
        );
    }
}
