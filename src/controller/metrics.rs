//! Prometheus metrics for the controller, in the OpenMetrics text format.
//!
//! Every label set here is bounded: controllers, job kinds and states are
//! fixed lists, and the only object names used as labels are those of
//! PatchPolicies and AdvisoryFeeds, of which a cluster has few. Workload and
//! Template names never become labels — a fleet has thousands of them and a
//! series per machine would make the metrics cost more than the controller.
//! Per-object detail belongs in the objects' status, where `kubectl` shows it.
//!
//! Series for objects that go away are removed ([`Metrics::forget_policy`],
//! [`Metrics::forget_feed`]) so a deleted policy does not keep reporting its
//! last counts forever.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `patchloop_reconciles_total` | counter | `controller` |
//! | `patchloop_reconcile_errors_total` | counter | `controller` |
//! | `patchloop_reconcile_duration_seconds` | histogram | `controller` |
//! | `patchloop_status_writes_total` | counter | `controller` |
//! | `patchloop_workloads` | gauge | `namespace`, `policy`, `state` |
//! | `patchloop_templates` | gauge | `namespace`, `policy`, `state` |
//! | `patchloop_feed_last_success_timestamp_seconds` | gauge | `feed` |
//! | `patchloop_feed_advisories` | gauge | `feed`, `ecosystem` |
//! | `patchloop_feed_errors_total` | counter | `feed` |
//! | `patchloop_jobs_created_total` | counter | `kind` |
//! | `patchloop_exceptions_expired_total` | counter | — |
//! | `patchloop_leader` | gauge | — |
//! | `patchloop_lease_renewal_failures_total` | counter | — |

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

use super::jobs::Purpose;
use crate::api::feed::EcosystemCount;
use crate::api::policy::{TemplateCounts, WorkloadCounts};

/// The controllers, as used in the `controller` label. Their series are
/// created up front so that `rate()` and absence alerts see a zero rather
/// than no series before the first reconcile.
pub const CONTROLLERS: [&str; 7] = [
    "workload",
    "policy",
    "exception",
    "inventory",
    "feed",
    "template",
    "change",
];

/// Upper bounds of the reconcile duration buckets, in seconds: 1 ms (a
/// no-op reconcile from the cache) up to 30 s (a large policy fan-out or a
/// slow API server); anything slower lands in `+Inf`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `state` label values of `patchloop_workloads`, in [`WorkloadCounts`]
/// field order. They partition a policy's matched Workloads by verdict; the
/// other counts in the status (remediating, failed, …) overlap these and stay
/// in the status only.
pub const WORKLOAD_STATES: [&str; 5] = ["compliant", "pending", "overdue", "exempt", "unknown"];

/// The `state` label values of `patchloop_templates`.
pub const TEMPLATE_STATES: [&str; 2] = ["compliant", "noncompliant"];

/// What a Job was created for; the `kind` label of
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyStateLabels {
    namespace: String,
    policy: String,
    state: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FeedLabels {
    feed: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FeedEcosystemLabels {
    feed: String,
    ecosystem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
}

/// A gauge holding a float: Unix timestamps need sub-second precision and
/// more range than the default `i64` gauge conveys in the exposition.
type FloatGauge = Gauge<f64, AtomicU64>;

type DurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A metric's name, help text and unit, as the exposition shows them.
struct Described {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
}

const RECONCILES: Described = Described {
    name: "patchloop_reconciles",
    help: "Reconciles run, by controller, failed ones included",
    unit: None,
};

const RECONCILE_ERRORS: Described = Described {
    name: "patchloop_reconcile_errors",
    help: "Reconciles that returned an error and were requeued with backoff",
    unit: None,
};

const RECONCILE_DURATION: Described = Described {
    name: "patchloop_reconcile_duration",
    help: "Wall time of one reconcile, by controller",
    unit: Some(Unit::Seconds),
};

const STATUS_WRITES: Described = Described {
    name: "patchloop_status_writes",
    help: "Status patches sent to the API server; flat in steady state, \
          since an unchanged status is not written",
    unit: None,
};

const WORKLOADS: Described = Described {
    name: "patchloop_workloads",
    help: "Workloads a policy matches, by compliance state \
          (compliant, pending, overdue, exempt, unknown)",
    unit: None,
};

const TEMPLATES: Described = Described {
    name: "patchloop_templates",
    help: "Templates a policy matches, by compliance state (compliant, noncompliant)",
    unit: None,
};

const FEED_LAST_SUCCESS: Described = Described {
    name: "patchloop_feed_last_success_timestamp",
    help: "Unix time of the last successful refresh of an advisory feed; \
          alert on time() minus this to catch a stale feed",
    unit: Some(Unit::Seconds),
};

const FEED_ADVISORIES: Described = Described {
    name: "patchloop_feed_advisories",
    help: "Advisories loaded from a feed, by ecosystem",
    unit: None,
};

const FEED_ERRORS: Described = Described {
    name: "patchloop_feed_errors",
    help: "Failed refreshes of an advisory feed (the last good data is kept)",
    unit: None,
};

const JOBS_CREATED: Described = Described {
    name: "patchloop_jobs_created",
    help: "Jobs created, by kind (remediation, build, test)",
    unit: None,
};

const EXCEPTIONS_EXPIRED: Described = Described {
    name: "patchloop_exceptions_expired",
    help: "PatchExceptions seen to expire, after which their findings count again",
    unit: None,
};

const LEADER: Described = Described {
    name: "patchloop_leader",
    help: "1 while this replica holds the leader lease and reconciles, else 0",
    unit: None,
};

const LEASE_RENEWAL_FAILURES: Described = Described {
    name: "patchloop_lease_renewal_failures",
    help: "Failed attempts of the leader to renew its lease (retried until the renew deadline)",
    unit: None,
};

/// Registers `metric` as `described` and returns it; the registry keeps a
/// clone sharing its values.
fn register<M: Metric + Clone>(registry: &mut Registry, described: &Described, metric: M) -> M {
    let Described { name, help, unit } = described;
    match unit {
        Some(unit) => registry.register_with_unit(*name, *help, unit.clone(), metric.clone()),
        None => registry.register(*name, *help, metric.clone()),
    }
    metric
}

/// The controller's metrics. Cloning is cheap (one `Arc`); every clone
/// records into the same registry, so each controller task gets its own.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Built once in [`Metrics::new`] and never changed after, so scrapes
    /// read it without a lock; the metrics inside are atomics.
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_duration: DurationFamily,
    status_writes: Family<ControllerLabels, Counter>,
    workloads: Family<PolicyStateLabels, Gauge>,
    templates: Family<PolicyStateLabels, Gauge>,
    feed_last_success: Family<FeedLabels, FloatGauge>,
    feed_advisories: Family<FeedEcosystemLabels, Gauge>,
    feed_errors: Family<FeedLabels, Counter>,
    /// The ecosystems last reported per feed: the family cannot be searched
    /// by feed alone, and an ecosystem that drops out of a feed (or the
    /// whole feed) must have its series removed.
    feed_ecosystems: Mutex<HashMap<String, Vec<String>>>,
    jobs_created: Family<JobLabels, Counter>,
    exceptions_expired: Counter,
    leader: Gauge,
    lease_renewal_failures: Counter,
}

impl Inner {
    /// Creates the series of every controller and Job kind, so that `rate()`
    /// and absence alerts see a zero before the first event. The guards are
    /// dropped at once: only the series' existence matters.
    fn create_fixed_series(&self) {
        for controller in CONTROLLERS {
            let labels = ControllerLabels { controller };
            drop(self.reconciles.get_or_create(&labels));
            drop(self.reconcile_errors.get_or_create(&labels));
            drop(self.reconcile_duration.get_or_create(&labels));
            drop(self.status_writes.get_or_create(&labels));
        }
        for kind in Purpose::ALL {
            drop(self.jobs_created.get_or_create(&JobLabels {
                kind: kind.as_str(),
            }));
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered. Create one per process
    /// and clone it; two registries would each expose only half the counts.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let inner = Inner {
            reconciles: register(&mut r, &RECONCILES, Family::default()),
            reconcile_errors: register(&mut r, &RECONCILE_ERRORS, Family::default()),
            reconcile_duration: register(
                &mut r,
                &RECONCILE_DURATION,
                Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            ),
            status_writes: register(&mut r, &STATUS_WRITES, Family::default()),
            workloads: register(&mut r, &WORKLOADS, Family::default()),
            templates: register(&mut r, &TEMPLATES, Family::default()),
            feed_last_success: register(&mut r, &FEED_LAST_SUCCESS, Family::default()),
            feed_advisories: register(&mut r, &FEED_ADVISORIES, Family::default()),
            feed_errors: register(&mut r, &FEED_ERRORS, Family::default()),
            feed_ecosystems: Mutex::new(HashMap::new()),
            jobs_created: register(&mut r, &JOBS_CREATED, Family::default()),
            exceptions_expired: register(&mut r, &EXCEPTIONS_EXPIRED, Counter::default()),
            leader: register(&mut r, &LEADER, Gauge::default()),
            lease_renewal_failures: register(&mut r, &LEASE_RENEWAL_FAILURES, Counter::default()),
            registry: r,
        };
        inner.create_fixed_series();
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Starts timing one reconcile of `controller` (one of [`CONTROLLERS`]).
    /// The returned guard records the count and duration when dropped, so
    /// every exit path of the reconcile — `?` included — is measured; call
    /// [`ReconcileTimer::error`] on the failure path.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            start: Instant::now(),
            failed: false,
        }
    }

    /// Counts one status patch sent by `controller`.
    pub fn status_write(&self, controller: &'static str) {
        self.inner
            .status_writes
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    /// Sets a policy's Workload gauges from the counts in its status.
    pub fn set_workload_counts(&self, namespace: &str, policy: &str, counts: &WorkloadCounts) {
        let values = [
            counts.compliant,
            counts.pending,
            counts.overdue,
            counts.exempt,
            counts.unknown,
        ];
        set_states(
            &self.inner.workloads,
            namespace,
            policy,
            WORKLOAD_STATES.into_iter().zip(values),
        );
    }

    /// Sets a policy's Template gauges from the counts in its status.
    pub fn set_template_counts(&self, namespace: &str, policy: &str, counts: &TemplateCounts) {
        let values = [counts.compliant, counts.non_compliant];
        set_states(
            &self.inner.templates,
            namespace,
            policy,
            TEMPLATE_STATES.into_iter().zip(values),
        );
    }

    /// Removes every series of a policy, for when it is deleted.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        for (family, states) in [
            (&self.inner.workloads, &WORKLOAD_STATES[..]),
            (&self.inner.templates, &TEMPLATE_STATES[..]),
        ] {
            for &state in states {
                family.remove(&PolicyStateLabels {
                    namespace: namespace.to_owned(),
                    policy: policy.to_owned(),
                    state,
                });
            }
        }
    }

    /// Records a successful refresh of `feed` at `at`, with the advisories it
    /// loaded per ecosystem. Ecosystems missing from `ecosystems` that an
    /// earlier call reported lose their series.
    pub fn feed_refreshed(&self, feed: &str, at: jiff::Timestamp, ecosystems: &[EcosystemCount]) {
        self.set_feed_last_success(feed, at);
        self.set_feed_advisories(feed, ecosystems);
    }

    /// Sets the time of `feed`'s last successful refresh, e.g. from its
    /// status after a restart.
    pub fn set_feed_last_success(&self, feed: &str, at: jiff::Timestamp) {
        // Milliseconds are exact in an f64 for any plausible date.
        let seconds = at.as_millisecond() as f64 / 1000.0;
        self.inner
            .feed_last_success
            .get_or_create(&FeedLabels {
                feed: feed.to_owned(),
            })
            .set(seconds);
    }

    /// Sets the advisories loaded from `feed` per ecosystem, replacing what
    /// was set before.
    pub fn set_feed_advisories(&self, feed: &str, ecosystems: &[EcosystemCount]) {
        let mut known = self
            .inner
            .feed_ecosystems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let names: Vec<String> = ecosystems.iter().map(|e| e.name.clone()).collect();
        if let Some(previous) = known.insert(feed.to_owned(), names) {
            for ecosystem in previous {
                if !ecosystems.iter().any(|e| e.name == ecosystem) {
                    self.inner.feed_advisories.remove(&FeedEcosystemLabels {
                        feed: feed.to_owned(),
                        ecosystem,
                    });
                }
            }
        }
        for e in ecosystems {
            self.inner
                .feed_advisories
                .get_or_create(&FeedEcosystemLabels {
                    feed: feed.to_owned(),
                    ecosystem: e.name.clone(),
                })
                .set(i64::from(e.advisories));
        }
    }

    /// Counts one failed refresh of `feed`.
    pub fn feed_error(&self, feed: &str) {
        self.inner
            .feed_errors
            .get_or_create(&FeedLabels {
                feed: feed.to_owned(),
            })
            .inc();
    }

    /// Removes every series of a feed, for when it is deleted.
    pub fn forget_feed(&self, feed: &str) {
        let mut known = self
            .inner
            .feed_ecosystems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for ecosystem in known.remove(feed).unwrap_or_default() {
            self.inner.feed_advisories.remove(&FeedEcosystemLabels {
                feed: feed.to_owned(),
                ecosystem,
            });
        }
        let labels = FeedLabels {
            feed: feed.to_owned(),
        };
        self.inner.feed_last_success.remove(&labels);
        self.inner.feed_errors.remove(&labels);
    }

    /// Counts one Job created.
    pub fn job_created(&self, kind: Purpose) {
        self.inner
            .jobs_created
            .get_or_create(&JobLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts one PatchException seen to expire.
    pub fn exception_expired(&self) {
        self.inner.exceptions_expired.inc();
    }

    /// Sets whether this replica leads (and so reconciles).
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Counts one failed attempt of the leader to renew its lease.
    pub fn lease_renewal_failed(&self) {
        self.inner.lease_renewal_failures.inc();
    }

    /// Reconciles run by `controller` so far; for tests and logs.
    pub fn reconciles(&self, controller: &'static str) -> u64 {
        counter_value(&self.inner.reconciles, &ControllerLabels { controller })
    }

    /// Failed reconciles of `controller` so far; for tests and logs.
    pub fn reconcile_errors(&self, controller: &'static str) -> u64 {
        counter_value(
            &self.inner.reconcile_errors,
            &ControllerLabels { controller },
        )
    }

    /// Status patches sent by `controller` so far. Tests read it to prove a
    /// steady state writes nothing.
    pub fn status_writes(&self, controller: &'static str) -> u64 {
        counter_value(&self.inner.status_writes, &ControllerLabels { controller })
    }

    /// Jobs of `kind` created so far; for tests and logs.
    pub fn jobs_created(&self, kind: Purpose) -> u64 {
        counter_value(
            &self.inner.jobs_created,
            &JobLabels {
                kind: kind.as_str(),
            },
        )
    }

    /// Every metric in the OpenMetrics text format, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and every label value is a
        // valid string; an error here would be a bug in the encoder.
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

fn set_states(
    family: &Family<PolicyStateLabels, Gauge>,
    namespace: &str,
    policy: &str,
    states: impl IntoIterator<Item = (&'static str, i32)>,
) {
    for (state, value) in states {
        family
            .get_or_create(&PolicyStateLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                state,
            })
            .set(i64::from(value));
    }
}

fn counter_value<S: Clone + std::hash::Hash + Eq>(family: &Family<S, Counter>, labels: &S) -> u64 {
    family.get(labels).map_or(0, |c| c.get())
}

/// Times one reconcile; see [`Metrics::reconcile`]. Recording happens on
/// drop, so keep it bound (`let mut timer = …`) for the whole reconcile.
#[must_use = "the timer records when dropped; dropping it at once measures nothing"]
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: Metrics,
    controller: &'static str,
    start: Instant,
    failed: bool,
}

impl ReconcileTimer {
    /// Marks this reconcile as failed: it is counted in
    /// `patchloop_reconcile_errors_total` as well as the total.
    pub fn error(&mut self) {
        self.failed = true;
    }

    /// Marks the reconcile failed if `result` is an error, and passes the
    /// result through, so `timer.observe(reconcile(..).await)` records both.
    pub fn observe<T, E>(&mut self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let labels = ControllerLabels {
            controller: self.controller,
        };
        let inner = &self.metrics.inner;
        inner
            .reconcile_duration
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
        inner.reconciles.get_or_create(&labels).inc();
        if self.failed {
            inner.reconcile_errors.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' '))
    }

    #[test]
    fn known_series_exist_before_any_event() {
        let text = Metrics::new().encode();
        for controller in CONTROLLERS {
            let line = format!("patchloop_reconciles_total{{controller=\"{controller}\"}}");
            assert_eq!(sample(&text, &line), Some("0"), "{line} in\n{text}");
        }
        assert_eq!(
            sample(&text, "patchloop_jobs_created_total{kind=\"build\"}"),
            Some("0")
        );
        assert_eq!(sample(&text, "patchloop_leader"), Some("0"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn timer_counts_errors_and_durations() {
        let metrics = Metrics::new();
        drop(metrics.reconcile("policy"));
        let mut timer = metrics.reconcile("policy");
        let _ = timer.observe(Err::<(), _>("boom"));
        drop(timer);
        assert_eq!(metrics.reconciles("policy"), 2);
        assert_eq!(metrics.reconcile_errors("policy"), 1);
        let text = metrics.encode();
        assert_eq!(
            sample(
                &text,
                "patchloop_reconcile_duration_seconds_count{controller=\"policy\"}"
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                "patchloop_reconcile_duration_seconds_bucket{le=\"30.0\",controller=\"policy\"}"
            ),
            Some("2"),
            "{text}"
        );
    }

    #[test]
    fn feed_ecosystems_that_drop_out_lose_their_series() {
        let metrics = Metrics::new();
        let count = |name: &str, advisories| EcosystemCount {
            name: name.to_owned(),
            advisories,
        };
        let at = jiff::Timestamp::from_second(1_700_000_000).expect("valid");
        metrics.feed_refreshed(
            "osv",
            at,
            &[count("Debian:12", 5), count("Alpine:v3.20", 2)],
        );
        metrics.set_feed_advisories("osv", &[count("Debian:12", 7)]);
        let text = metrics.encode();
        assert_eq!(
            sample(
                &text,
                "patchloop_feed_advisories{feed=\"osv\",ecosystem=\"Debian:12\"}"
            ),
            Some("7")
        );
        assert!(!text.contains("Alpine"), "{text}");
        assert_eq!(
            sample(
                &text,
                "patchloop_feed_last_success_timestamp_seconds{feed=\"osv\"}"
            ),
            Some("1700000000.0")
        );
        metrics.feed_error("osv");
        metrics.forget_feed("osv");
        assert!(!metrics.encode().contains("feed=\"osv\""));
    }
}
