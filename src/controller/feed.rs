//! The AdvisoryFeed reconciler (cluster-scoped): fetch, parse, check, swap
//! into the shared advisory store; a failed or suspect refresh keeps the last
//! good data and says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use super::feed_source::{self, FeedContent, Fetched, Validators};
use super::{Error, Shared, now, observed, write_status};
use crate::api::AdvisoryFeed;
use crate::api::common::time;
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
    let fetched = match feed_source::fetch(
        &ctx.shared.client,
        &ctx.http,
        &feed.spec.source,
        &validators,
        ctx.shared.settings.feed_max_bytes,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(e.reason(), e.to_string()),
    };
    let (blobs, validators) = match fetched {
        Fetched::NotModified => return Outcome::Unchanged,
        Fetched::Content { blobs, validators } => (blobs, validators),
    };
    // Hashing and parsing take seconds on a large feed: off the runtime's
    // worker threads.
    let spec = feed.spec.clone();
    let held_digest = current.then(|| held.digest.clone());
    let parsed = tokio::task::spawn_blocking(move || {
        let digest = feed_source::content_digest(&blobs);
        if held_digest.as_ref() == Some(&digest) {
            return Ok(None);
        }
        let limits = feed_source::zip_limits(&spec.source);
        let content = feed_source::parse(spec.format, &spec.ecosystems, &blobs, "", limits)?;
        drop(blobs);
        let counts = ecosystem_counts(&content, &spec.ecosystems);
        Ok(Some((content, counts, digest)))
    })
    .await;
    let (content, counts, digest) = match parsed {
        Ok(Ok(Some(loaded))) => loaded,
        Ok(Ok(None)) => return Outcome::Unchanged,
        Ok(Err(e)) => {
            let e: feed_source::FetchError = e;
            return Outcome::Failed(e.reason(), e.to_string());
        }
        Err(e) => return Outcome::Failed("ParseFailed", format!("the parser task failed: {e}")),
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

async fn reconcile_inner(feed: Arc<AdvisoryFeed>, ctx: &Arc<FeedContext>) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let name = feed.name_any();
    let now = now();
    let previous = feed.status.clone().unwrap_or_default();
    let interval = match feed.spec.interval.parse() {
        Ok(d) => std::time::Duration::from_secs(u64::try_from(d.as_secs()).unwrap_or(3600).max(10)),
        Err(_) => std::time::Duration::from_secs(3600),
    };
    let held = ctx
        .held
        .lock()
        .ok()
        .and_then(|h| h.get(&name).cloned())
        .unwrap_or_default();

    let mut status = AdvisoryFeedStatus {
        observed_generation: feed.metadata.generation,
        ..previous.clone()
    };
    let settings = settings_key(&feed);
    let outcome = refresh(ctx, &feed, &name, &held, &settings).await;
    // A load is recorded as attempted once its data is in the store (below).
    if !matches!(outcome, Outcome::Loaded(..)) {
        shared.advisories.attempted(&name);
    }
    let (degraded, error) = match outcome {
        Outcome::Loaded(content, counts, validators, digest) => {
            let advisories = i32::try_from(content.len()).unwrap_or(i32::MAX);
            let store = Arc::clone(shared);
            let feed_name = name.clone();
            let swapped = tokio::task::spawn_blocking(move || {
                store.advisories.set_feed(&feed_name, Some(content))
            })
            .await;
            shared.advisories.attempted(&name);
            match swapped {
                Ok(diff) => {
                    status.advisories = advisories;
                    status.ecosystems = counts.clone();
                    status.content_digest = Some(digest.clone());
                    status.etag = validators.etag.clone();
                    status.last_modified = validators.last_modified.clone();
                    status.last_sync_time = Some(time(now));
                    tracing::info!(advisories, changed_keys = diff.changed.len(), "feed loaded");
                    if let Ok(mut h) = ctx.held.lock() {
                        h.insert(
                            name.clone(),
                            Held {
                                settings,
                                validators,
                                digest,
                            },
                        );
                    }
                    shared.metrics.feed_refreshed(&name, now, &counts);
                    (false, None)
                }
                Err(e) => {
                    tracing::error!(error = %e, "rebuilding the advisory index failed");
                    shared.metrics.feed_error(&name);
                    (
                        true,
                        Some((
                            "IndexFailed",
                            "rebuilding the advisory index with this data failed".to_owned(),
                        )),
                    )
                }
            }
        }
        Outcome::Unchanged => {
            status.last_sync_time = Some(time(now));
            shared.metrics.set_feed_last_success(&name, now);
            (false, None)
        }
        Outcome::Failed(reason, message) => {
            shared.metrics.feed_error(&name);
            (true, Some((reason, message)))
        }
    };
    let has_data = shared.advisories.feed_size(&name).is_some();
    let interval_error = feed.spec.interval.parse().err();
    let ready = match (&interval_error, has_data, &error) {
        (Some(e), _, _) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidSpec",
            format!("spec.interval: {e}"),
        ),
        (None, true, _) => DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Loaded",
            format!("{} advisories loaded", status.advisories),
        ),
        (None, false, Some((reason, message))) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            *reason,
            message.clone(),
        ),
        (None, false, None) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "NoData",
            "nothing loaded yet",
        ),
    };
    let degraded_condition = match &error {
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
    };
    let (conds, transitions) = conditions::merge(
        &previous.conditions,
        &[ready, degraded_condition],
        feed.metadata.generation,
        &time(now),
    );
    status.conditions = conds;
    // A 304 or an unchanged download moves only lastSyncTime: write it at
    // most once per interval, so a steady feed causes no write storm.
    // Standbys load feeds too (a failover starts with data) but only the
    // leader writes.
    let leading = shared.leadership.is_leader();
    if status != previous && leading {
        let api: Api<AdvisoryFeed> = Api::all(shared.client.clone());
        write_status(shared, &api, &name, "feed", MANAGER, &status, &previous).await?;
    }
    if transitions.contains(&types::DEGRADED) && leading {
        match &error {
            Some((reason, message)) => {
                shared
                    .event(feed.as_ref(), true, reason, message.clone())
                    .await
            }
            None if conditions::find(&previous.conditions, types::DEGRADED).is_some() => {
                shared
                    .event(
                        feed.as_ref(),
                        false,
                        "Recovered",
                        "the feed refreshed successfully again".into(),
                    )
                    .await
            }
            None => {}
        }
    }
    let retry = if degraded {
        interval.min(std::time::Duration::from_secs(60))
    } else {
        interval
    };
    Ok(Action::requeue(retry))
}
