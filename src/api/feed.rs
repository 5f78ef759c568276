//! `AdvisoryFeed` (cluster-scoped): where advisories come from. Advisories are
//! facts about the world, so one tenant cannot alter another's view of them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Duration;

/// AdvisoryFeed loads OSV records or the CISA KEV catalog from a URL, a
/// ConfigMap or a mounted path, and refreshes them on an interval.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "AdvisoryFeed",
    status = "AdvisoryFeedStatus",
    shortname = "afeed",
    category = "patchloop",
    doc = "AdvisoryFeed loads vendor advisories (OSV) or the CISA KEV catalog from a URL, a ConfigMap or a mounted path.",
    printcolumn(name = "Format", type_ = "string", json_path = ".spec.format"),
    printcolumn(
        name = "Advisories",
        type_ = "integer",
        json_path = ".status.advisories"
    ),
    printcolumn(name = "Last-Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AdvisoryFeedSpec {
    /// Where the data comes from: exactly one of `url`, `configMap`, `path`.
    pub source: FeedSource,
    /// `OSV` (a JSON record, a directory of records, or a zip archive as OSV
    /// distributes per ecosystem) or `KEV` (the CISA catalog JSON).
    pub format: FeedFormat,
    /// OSV only: load just these ecosystems (e.g. `Debian:12`); empty loads all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecosystems: Vec<String>,
    /// How often the feed is refreshed.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// A refresh that loses more than this percentage of the advisories loaded
    /// last time is suspect and kept out (`Degraded`).
    #[serde(default = "default_max_drop_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_drop_percent: i32,
}

fn default_interval() -> Duration {
    Duration::from_static("1h")
}

fn default_max_drop_percent() -> i32 {
    50
}

/// Where a feed's data comes from: exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    {"required": ["url"]},
    {"required": ["configMap"]},
    {"required": ["path"]}
]))]
pub struct FeedSource {
    /// An HTTP(S) download, fetched with conditional requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    /// A ConfigMap holding the data (plain, or gzip in `binaryData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    /// A file or directory mounted into the controller (air-gapped mirrors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub path: Option<String>,
}

/// An HTTP(S) source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// The URL (http or https).
    #[schemars(regex(pattern = r"^https?://\S+$"))]
    pub url: String,
    /// Give up on a request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Refuse a response larger than this many bytes (after gzip decoding).
    /// A zip archive may decompress to 16 times this in all, and the records
    /// kept from it may hold this much JSON. Memory grows by about 7.5 times
    /// this during a refresh: raise it only with the memory limit.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: i64,
}

fn default_timeout() -> Duration {
    Duration::from_static("60s")
}

/// The default of `url.maxBytes` (and the limit of path sources): 48 MiB.
///
/// The chart's memory limit is 512 MiB and the controller runs at about
/// 130 MiB with a large fleet (BENCHMARKS.md). A refresh holds the download
/// (at most `maxBytes`) and records of at most `maxBytes` of JSON, which take
/// about 6.5 times their JSON size while the index is rebuilt (measured by
/// tests/feed_source.rs): 48 MiB × 7.5 + 130 MiB stays under 512 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 48 * 1024 * 1024;

fn default_max_bytes() -> i64 {
    DEFAULT_MAX_BYTES as i64
}

/// A ConfigMap source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// The ConfigMap's namespace.
    #[schemars(length(min = 1))]
    pub namespace: String,
    /// The ConfigMap's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Read only this key; empty reads every key (each one OSV record or
    /// archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Feed formats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FeedFormat {
    /// OSV records (schema 1.x).
    #[serde(rename = "OSV")]
    Osv,
    /// The CISA Known Exploited Vulnerabilities catalog.
    #[serde(rename = "KEV")]
    Kev,
}

/// Observed state of an AdvisoryFeed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdvisoryFeedStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (data loaded), Degraded (the last refresh failed; the last good
    /// data is kept).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The last successful refresh that changed or confirmed the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Advisories loaded in all (KEV: catalog entries).
    #[serde(default)]
    pub advisories: i32,
    /// Advisories loaded per ecosystem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub ecosystems: Vec<EcosystemCount>,
    /// A digest of the loaded content; unchanged content changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
    /// The ETag of the last successful download, for conditional requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The Last-Modified of the last successful download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// Advisories loaded for one ecosystem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcosystemCount {
    /// The OSV ecosystem, e.g. `Debian:12`.
    pub name: String,
    /// Advisories loaded for it.
    pub advisories: i32,
}
