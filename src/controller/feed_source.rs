//! Fetching an AdvisoryFeed's data: an HTTP(S) download with conditional
//! requests, a ConfigMap, or a file or directory mounted into the controller;
//! then parsing it into OSV records or a KEV catalog.
//!
//! Everything read from the network, the cluster or the disk is bounded: a
//! download is refused as soon as it grows past `maxBytes` (and before it
//! starts when its `Content-Length` already says so), gzip is decompressed
//! under the same kind of limit (a zip-bomb guard), and a body cut short is an
//! error, never partial data.
//!
//! # TLS
//!
//! `reqwest` is built with `rustls-no-provider` and this crate depends on
//! `rustls` with the `ring` provider only, the same one `kube` uses, so
//! aws-lc-rs is not compiled in (`cargo tree -i aws-lc-rs` finds nothing) and
//! rustls can pick the process-wide provider unambiguously. Because reqwest's
//! builder asks rustls for the process default without installing one, a
//! `reqwest::Client` must be built after [`install_crypto_provider`] ran:
//! [`http_client`] and [`http_client_builder`] do that; building one with
//! `reqwest::Client::new()` before it panics.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use sha2::{Digest, Sha256};

use crate::api::feed::{ConfigMapSource, DEFAULT_MAX_BYTES, FeedFormat, FeedSource, UrlSource};
use crate::engine::advisory::{
    AdvisoryError, KevCatalog, OsvFilter, OsvRecord, ZipLimits, parse_kev, parse_osv_bytes,
    parse_osv_filtered,
};

/// The most a ConfigMap source may hold, all keys together, after gzip
/// `binaryData` is decompressed. A ConfigMap stores at most 1 MiB, so this
/// only bites on a decompression bomb.
pub const CONFIG_MAP_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The most a path source may hold, all files together (after gzip files are
/// decompressed): the default of `url.maxBytes`.
pub const PATH_MAX_BYTES: u64 = DEFAULT_MAX_BYTES;

/// Redirects followed per download before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// Directory levels followed below a path source before giving up (a guard
/// against symlink loops).
const MAX_DEPTH: usize = 32;

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// HTTP cache validators from the previous successful download, sent back as
/// `If-None-Match` / `If-Modified-Since`.
///
/// Pass them only while the data they describe is still held: a `304 Not
/// Modified` answer carries no body, so a controller that restarted (and lost
/// the data) must fetch with `Validators::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// The `ETag` response header.
    pub etag: Option<String>,
    /// The `Last-Modified` response header.
    pub last_modified: Option<String>,
}

impl Validators {
    /// True when neither validator is known.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// One piece of fetched data: a download, a ConfigMap key or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Where it came from, for messages: the URL, `configmap NS/NAME key K`,
    /// or the file's path.
    pub name: String,
    /// The content, gzip already decompressed.
    pub bytes: Vec<u8>,
}

/// The outcome of a successful fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The server answered `304 Not Modified` to a conditional request: the
    /// data held from last time is current.
    NotModified,
    /// Fresh content.
    Content {
        /// The data: one blob for a download or a file, one per key for a
        /// ConfigMap, one per `*.json`, `*.zip` or `*.gz` file for a
        /// directory (in path order).
        blobs: Vec<Blob>,
        /// Validators for the next conditional request (URL sources; empty
        /// for the others).
        validators: Validators,
    },
}

/// Parsed feed data.
#[derive(Clone, Debug)]
pub enum FeedContent {
    /// OSV records (already restricted to the feed's ecosystems where that
    /// cannot change the result, see [`parse`]).
    Osv(Vec<OsvRecord>),
    /// The KEV catalog (several blobs merged).
    Kev(KevCatalog),
}

impl FeedContent {
    /// Records (OSV) or catalog entries (KEV) loaded.
    pub fn len(&self) -> usize {
        match self {
            FeedContent::Osv(records) => records.len(),
            FeedContent::Kev(catalog) => catalog.entries.len(),
        }
    }

    /// True when nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a feed could not be fetched or parsed. `Display` is a one-line
/// message fit for a condition; [`FetchError::reason`] its CamelCase reason.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source is unusable as written (none or several of url/configMap/
    /// path set, a bad URL, timeout or size limit).
    #[error("invalid source: {0}")]
    InvalidSource(String),
    /// No connection could be made or kept (DNS, refused, TLS, reset before
    /// any response, the Kubernetes API unavailable).
    #[error("{origin}: unreachable: {message}")]
    Unreachable {
        /// The URL or object.
        origin: String,
        /// The cause.
        message: String,
    },
    /// No complete answer within the source's timeout.
    #[error("{url}: no complete response within {timeout}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout as written in the spec.
        timeout: String,
    },
    /// The server answered with a status other than 2xx (or an unrequested 304).
    #[error("{url}: HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The content is larger than allowed.
    #[error("{origin}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL, ConfigMap key or file.
        origin: String,
        /// The limit.
        limit: u64,
    },
    /// An archive holds more than its limits allow (a zip bomb guard).
    #[error("{0}")]
    ArchiveTooLarge(String),
    /// The server redirected somewhere Patchloop does not follow: from
    /// https to http (a downgrade), or too many times.
    #[error("{url}: {message}")]
    Redirect {
        /// The URL asked for.
        url: String,
        /// Why the redirect was refused.
        message: String,
    },
    /// The body ended before its announced end (connection closed early).
    #[error("{url}: truncated response: {message}")]
    Truncated {
        /// The URL.
        url: String,
        /// What was missing.
        message: String,
    },
    /// The content is not what the format says (bad JSON, corrupt zip or gzip).
    #[error("{0}")]
    Malformed(String),
    /// The ConfigMap, key, file or directory does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The controller may not read the ConfigMap, file or directory.
    #[error("{origin}: access denied: {message}")]
    Forbidden {
        /// The object or path.
        origin: String,
        /// The cause.
        message: String,
    },
    /// A file or directory could not be read for another reason.
    #[error("{origin}: {message}")]
    Unreadable {
        /// The path.
        origin: String,
        /// The cause.
        message: String,
    },
    /// The Kubernetes API refused the read for another reason.
    #[error("{origin}: Kubernetes API error: {message}")]
    Api {
        /// The object.
        origin: String,
        /// The apiserver's message.
        message: String,
    },
}

impl FetchError {
    /// The CamelCase reason for a condition.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::InvalidSource(_) => "InvalidSource",
            FetchError::Unreachable { .. } => "Unreachable",
            FetchError::Timeout { .. } => "Timeout",
            FetchError::HttpStatus { .. } => "HttpStatus",
            FetchError::TooLarge { .. } | FetchError::ArchiveTooLarge(_) => "TooLarge",
            FetchError::Redirect { .. } => "Redirect",
            FetchError::Truncated { .. } => "Truncated",
            FetchError::Malformed(_) => "Malformed",
            FetchError::NotFound(_) => "NotFound",
            FetchError::Forbidden { .. } => "Forbidden",
            FetchError::Unreadable { .. } => "Unreadable",
            FetchError::Api { .. } => "ApiError",
        }
    }

    /// True when retrying soon may help (network trouble, 5xx, 408, 429),
    /// false when the source or its content must change first.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Unreachable { .. }
            | FetchError::Timeout { .. }
            | FetchError::Truncated { .. }
            | FetchError::Api { .. } => true,
            FetchError::HttpStatus { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            _ => false,
        }
    }
}

/// Installs rustls' `ring` provider as the process default unless a provider
/// is installed already. Idempotent and cheap; call it before building any
/// `reqwest::Client`.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A `reqwest` builder set up for feed downloads (crypto provider installed,
/// a `patchloop/VERSION` user agent, gzip accepted, redirects limited by
/// [`redirect_policy`]). Timeouts are per request (`url.timeout`), so none
/// is set here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("patchloop/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect_policy())
}

/// Follows at most [`MAX_REDIRECTS`] redirects and never one from https to
/// http: a feed the operator asked to fetch over TLS is never read in the
/// clear, where anyone on the path could rewrite the advisories.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error(RedirectRefused(
                "redirected from https to http; a downgrade to plain http is refused".into(),
            ))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(RedirectRefused(format!(
                "more than {MAX_REDIRECTS} redirects; refused"
            )))
        } else {
            attempt.follow()
        }
    })
}

/// Why a redirect was not followed (the cause inside reqwest's error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RedirectRefused(String);

/// The HTTP client for feed downloads; build one and share it.
pub fn http_client() -> Result<reqwest::Client, FetchError> {
    http_client_builder().build().map_err(|e| {
        FetchError::InvalidSource(format!("cannot build an HTTP client: {}", chain(&e)))
    })
}

/// Fetches a feed's data from its source.
///
/// `validators` are those of the previous successful download of the same URL
/// (ignored by the other sources); a `304 Not Modified` answer becomes
/// [`Fetched::NotModified`].
///
/// `ceiling` is the controller's own bound on `url.maxBytes`
/// (`--feed-max-bytes`): whoever may write AdvisoryFeeds must not be able to
/// size every replica's memory.
pub async fn fetch(
    client: &kube::Client,
    http: &reqwest::Client,
    source: &FeedSource,
    validators: &Validators,
    ceiling: u64,
) -> Result<Fetched, FetchError> {
    match (&source.url, &source.config_map, &source.path) {
        (Some(url), None, None) => fetch_url(http, url, validators, ceiling).await,
        (None, Some(cm), None) => fetch_config_map(client, cm, ceiling).await,
        (None, None, Some(path)) => fetch_path(path, ceiling).await,
        (None, None, None) => Err(FetchError::InvalidSource(
            "one of url, configMap or path must be set".into(),
        )),
        _ => Err(FetchError::InvalidSource(
            "only one of url, configMap or path may be set".into(),
        )),
    }
}

// ---------------------------------------------------------------------------
// URL sources.

/// Fetches a URL source (see [`fetch`]).
pub async fn fetch_url(
    http: &reqwest::Client,
    source: &UrlSource,
    validators: &Validators,
    ceiling: u64,
) -> Result<Fetched, FetchError> {
    let checked = CheckedUrl::of(source, ceiling)?;
    let mut request = http.get(checked.url).timeout(checked.timeout);
    if let Some(etag) = &validators.etag {
        request = request.header(IF_NONE_MATCH, etag);
    }
    if let Some(since) = &validators.last_modified {
        request = request.header(IF_MODIFIED_SINCE, since);
    }
    let mut response = request.send().await.map_err(|e| send_error(e, source))?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED && !validators.is_empty() {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        return Err(FetchError::HttpStatus {
            url: source.url.clone(),
            status,
        });
    }
    let header = |h| {
        response
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let next = Validators {
        etag: header(ETAG),
        last_modified: header(LAST_MODIFIED),
    };
    let body = read_body(&mut response, source, checked.limit).await?;
    let blobs = gunzip_blobs(vec![(source.url.clone(), body)], checked.limit).await?;
    Ok(Fetched::Content {
        blobs,
        validators: next,
    })
}

/// A URL source's settings, checked.
#[derive(Debug, PartialEq)]
struct CheckedUrl {
    url: reqwest::Url,
    timeout: std::time::Duration,
    /// The most the body may hold.
    limit: u64,
}

impl CheckedUrl {
    /// An http(s) URL, a positive timeout and a positive size limit within
    /// the controller's `ceiling` (pure).
    fn of(source: &UrlSource, ceiling: u64) -> Result<CheckedUrl, FetchError> {
        let invalid = FetchError::InvalidSource;
        let url = reqwest::Url::parse(&source.url)
            .map_err(|e| invalid(format!("url {:?}: {e}", source.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "url {:?}: only http and https are supported",
                source.url
            )));
        }
        let timeout = source
            .timeout
            .parse()
            .map_err(|e| invalid(format!("timeout: {e}")))?;
        let timeout = std::time::Duration::try_from(timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| invalid(format!("timeout {} must be positive", source.timeout)))?;
        let limit = u64::try_from(source.max_bytes)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| invalid(format!("maxBytes {} must be positive", source.max_bytes)))?;
        if limit > ceiling {
            return Err(invalid(format!(
                "maxBytes {limit} is above this controller's ceiling of {ceiling} bytes (its --feed-max-bytes flag, the chart's feedMaxBytes): lower url.maxBytes, or raise the ceiling together with the controller's memory limit"
            )));
        }
        Ok(CheckedUrl {
            url,
            timeout,
            limit,
        })
    }
}

/// No complete answer from `source` within its timeout.
fn timed_out(source: &UrlSource) -> FetchError {
    FetchError::Timeout {
        url: source.url.clone(),
        timeout: source.timeout.to_string(),
    }
}

/// Why a request to `source` got no response.
fn send_error(e: reqwest::Error, source: &UrlSource) -> FetchError {
    if e.is_timeout() {
        timed_out(source)
    } else if e.is_redirect() {
        // The refusal's own words; reqwest's wrapper and the redirect
        // target (chosen by the server) are left out.
        let refused = std::iter::successors(std::error::Error::source(&e), |s| s.source())
            .find_map(|s| s.downcast_ref::<RedirectRefused>())
            .map(|r| r.0.clone());
        let message = refused.unwrap_or_else(|| chain(&e.without_url()));
        FetchError::Redirect {
            url: source.url.clone(),
            message,
        }
    } else if e.is_builder() {
        FetchError::InvalidSource(format!("url {:?}: {}", source.url, chain(&e.without_url())))
    } else {
        FetchError::Unreachable {
            origin: source.url.clone(),
            message: chain(&e.without_url()),
        }
    }
}

/// Reads the body within `limit`: refused as soon as it grows past it (or
/// before it starts when its length already says so), and an error when it
/// ends before its announced length.
async fn read_body(
    response: &mut reqwest::Response,
    source: &UrlSource,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge {
        origin: source.url.clone(),
        limit,
    };
    // The size of the body as it will be read (unknown when reqwest decodes
    // a Content-Encoding, or for chunked and close-delimited bodies).
    let expected = response.content_length();
    if expected.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let capacity = expected.unwrap_or(0).min(limit).min(64 * 1024 * 1024);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|e| body_error(e, source))? {
        if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
            // Dropping the response closes the connection: nothing more is read.
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    match expected {
        Some(expected) if body.len() as u64 != expected => Err(FetchError::Truncated {
            url: source.url.clone(),
            message: format!("got {} of {expected} bytes", body.len()),
        }),
        _ => Ok(body),
    }
}

/// Why a body could not be read after the headers arrived.
fn body_error(e: reqwest::Error, source: &UrlSource) -> FetchError {
    if e.is_timeout() {
        timed_out(source)
    } else {
        // The connection was closed or reset mid-body, or a chunked /
        // encoded body ended early or was corrupt.
        FetchError::Truncated {
            url: source.url.clone(),
            message: chain(&e.without_url()),
        }
    }
}

// ---------------------------------------------------------------------------
// ConfigMap sources.

/// Fetches a ConfigMap source (see [`fetch`]): one blob per selected key,
/// gzip values decompressed within [`CONFIG_MAP_MAX_BYTES`] (and the
/// controller's `ceiling`) in all.
pub async fn fetch_config_map(
    client: &kube::Client,
    source: &ConfigMapSource,
    ceiling: u64,
) -> Result<Fetched, FetchError> {
    let origin = format!("configmap {}/{}", source.namespace, source.name);
    if source.namespace.is_empty() || source.name.is_empty() {
        return Err(FetchError::InvalidSource(
            "configMap needs a namespace and a name".into(),
        ));
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &source.namespace);
    let cm = api
        .get_opt(&source.name)
        .await
        .map_err(|e| kube_error(&origin, e))?
        .ok_or_else(|| FetchError::NotFound(origin.clone()))?;

    let selected = selected_values(cm, source.key.as_deref(), &origin)?;
    let named = selected
        .into_iter()
        .map(|(key, value)| (format!("{origin} key {key}"), value))
        .collect();
    let blobs = gunzip_blobs(named, CONFIG_MAP_MAX_BYTES.min(ceiling)).await?;
    Ok(Fetched::Content {
        blobs,
        validators: Validators::default(),
    })
}

/// The ConfigMap's values of `key` (every key, from both maps, in key
/// order, when no key is named); none is an error (pure).
fn selected_values(
    cm: ConfigMap,
    key: Option<&str>,
    origin: &str,
) -> Result<Vec<(String, Vec<u8>)>, FetchError> {
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (key, value) in cm.data.unwrap_or_default() {
        values.insert(key, value.into_bytes());
    }
    for (key, value) in cm.binary_data.unwrap_or_default() {
        values.insert(key, value.0);
    }
    let selected: Vec<(String, Vec<u8>)> = match key {
        Some(key) if !key.is_empty() => {
            let Some(value) = values.remove(key) else {
                let known: Vec<&str> = values.keys().map(String::as_str).take(10).collect();
                return Err(FetchError::NotFound(format!(
                    "key {key:?} of {origin} (keys: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            vec![(key.to_owned(), value)]
        }
        _ => values.into_iter().collect(),
    };
    if selected.is_empty() {
        return Err(FetchError::NotFound(format!("data in {origin}")));
    }
    Ok(selected)
}

fn kube_error(origin: &str, error: kube::Error) -> FetchError {
    match error {
        kube::Error::Api(status) if status.is_not_found() => {
            FetchError::NotFound(origin.to_owned())
        }
        kube::Error::Api(status) if status.is_forbidden() || status.code == 401 => {
            FetchError::Forbidden {
                origin: origin.to_owned(),
                message: one_line(&status.message),
            }
        }
        kube::Error::Api(status) => FetchError::Api {
            origin: origin.to_owned(),
            message: one_line(&format!("{} ({})", status.message, status.code)),
        },
        other => FetchError::Unreachable {
            origin: origin.to_owned(),
            message: chain(&other),
        },
    }
}

// ---------------------------------------------------------------------------
// Path sources.

/// Fetches a path source (see [`fetch`]) on a blocking thread, within
/// [`PATH_MAX_BYTES`] (and the controller's `ceiling`).
pub async fn fetch_path(path: &str, ceiling: u64) -> Result<Fetched, FetchError> {
    if path.is_empty() {
        return Err(FetchError::InvalidSource("path is empty".into()));
    }
    let path = PathBuf::from(path);
    let limit = PATH_MAX_BYTES.min(ceiling);
    let blobs = tokio::task::spawn_blocking(move || read_path(&path, limit))
        .await
        .map_err(|e| FetchError::Unreadable {
            origin: "path source".into(),
            message: format!("reader task failed: {e}"),
        })??;
    Ok(Fetched::Content {
        blobs,
        validators: Validators::default(),
    })
}

/// Reads a file, or every `*.json`, `*.zip` and `*.gz` file below a
/// directory (recursively, in name order, as
/// [`load_osv_path`] walks it), within `limit` bytes in all.
///
/// Unlike `load_osv_path`, names starting with `.` are skipped: a mounted
/// ConfigMap or Secret volume holds each file three times (`NAME`, a
/// `..data/NAME` symlink and a `..TIMESTAMP/NAME` directory) and only the
/// visible one counts.
fn read_path(path: &Path, limit: u64) -> Result<Vec<Blob>, FetchError> {
    let mut budget = limit;
    let mut blobs = Vec::new();
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        read_dir(path, 0, &mut budget, &mut blobs)?;
    } else {
        blobs.push(read_file(path, &mut budget)?);
    }
    Ok(blobs)
}

fn read_dir(
    dir: &Path,
    depth: usize,
    budget: &mut u64,
    out: &mut Vec<Blob>,
) -> Result<(), FetchError> {
    if depth > MAX_DEPTH {
        return Err(FetchError::Unreadable {
            origin: dir.display().to_string(),
            message: format!("more than {MAX_DEPTH} directory levels (a symlink loop?)"),
        });
    }
    let mut entries = std::fs::read_dir(dir)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| io_error(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let child = entry.path();
        // Follows symlinks, as load_osv_path does.
        let meta = std::fs::metadata(&child).map_err(|e| io_error(&child, e))?;
        if meta.is_dir() {
            read_dir(&child, depth + 1, budget, out)?;
        } else if meta.is_file()
            && child
                .extension()
                .is_some_and(|e| e == "json" || e == "zip" || e == "gz")
        {
            out.push(read_file(&child, budget)?);
        }
    }
    Ok(())
}

fn read_file(path: &Path, budget: &mut u64) -> Result<Blob, FetchError> {
    let name = path.display().to_string();
    let too_large = |limit| FetchError::TooLarge {
        origin: name.clone(),
        limit,
    };
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let len = file.metadata().map_err(|e| io_error(path, e))?.len();
    if len > *budget {
        return Err(too_large(*budget));
    }
    // The file may grow while it is read: never read past the budget.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(budget.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > *budget {
        return Err(too_large(*budget));
    }
    let bytes = if bytes.starts_with(&GZIP_MAGIC) {
        // The compressed size does not count against the budget, the
        // decompressed one does.
        gunzip_if_gzip(bytes, &name, budget)?
    } else {
        *budget -= bytes.len() as u64;
        bytes
    };
    Ok(Blob { name, bytes })
}

fn io_error(path: &Path, e: std::io::Error) -> FetchError {
    let origin = path.display().to_string();
    match e.kind() {
        std::io::ErrorKind::NotFound => FetchError::NotFound(origin),
        std::io::ErrorKind::PermissionDenied => FetchError::Forbidden {
            origin,
            message: e.to_string(),
        },
        _ => FetchError::Unreadable {
            origin,
            message: e.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------
// Shared helpers.

/// Makes blobs of (name, bytes) pairs, decompressing the gzip ones within
/// `limit` bytes in all, on a blocking thread (decompression is CPU work
/// that must not hold up the async runtime).
async fn gunzip_blobs(named: Vec<(String, Vec<u8>)>, limit: u64) -> Result<Vec<Blob>, FetchError> {
    tokio::task::spawn_blocking(move || {
        let mut budget = limit;
        named
            .into_iter()
            .map(|(name, bytes)| {
                let bytes = gunzip_if_gzip(bytes, &name, &mut budget)?;
                Ok(Blob { name, bytes })
            })
            .collect()
    })
    .await
    .map_err(|e| FetchError::Malformed(format!("the decompression task failed: {e}")))?
}

/// Decompresses `bytes` when they start with the gzip magic (concatenated
/// members included), refusing output beyond `budget`, which is reduced by
/// the size of what is returned (compressed or not).
fn gunzip_if_gzip(bytes: Vec<u8>, name: &str, budget: &mut u64) -> Result<Vec<u8>, FetchError> {
    let out = if bytes.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .take(budget.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| FetchError::Malformed(format!("{name}: corrupt gzip data: {e}")))?;
        out
    } else {
        bytes
    };
    if out.len() as u64 > *budget {
        return Err(FetchError::TooLarge {
            origin: name.to_owned(),
            limit: *budget,
        });
    }
    *budget -= out.len() as u64;
    Ok(out)
}

/// An error and its sources on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    one_line(&text)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// Parsing.

/// Parses fetched blobs as the feed's format. `origin` names the feed in
/// messages (e.g. `AdvisoryFeed debian-12`).
///
/// OSV: each blob is one JSON record, a JSON array of records or a zip
/// archive of records (read within `zip_limits`, see [`zip_limits`]). With
/// `ecosystems` set, records that cannot matter are dropped as they are read
/// ([`OsvFilter`]): those none of whose `affected` entries names one of the
/// ecosystems and that cannot lend a severity to another record (they name
/// no CVE as id or alias, or carry no severity of their own). The engine
/// applies the exact ecosystem filter again.
///
/// KEV: each blob is a catalog; several are merged (earliest `dateAdded`
/// wins).
pub fn parse(
    format: FeedFormat,
    ecosystems: &[String],
    blobs: &[Blob],
    origin: &str,
    zip_limits: ZipLimits,
) -> Result<FeedContent, FetchError> {
    let malformed = |e: AdvisoryError| match e {
        AdvisoryError::TooLarge { .. } => FetchError::ArchiveTooLarge(one_line(&e.to_string())),
        e => FetchError::Malformed(one_line(&e.to_string())),
    };
    let blob_origin = |blob: &Blob| {
        if origin.is_empty() {
            blob.name.clone()
        } else {
            format!("{origin}: {}", blob.name)
        }
    };
    match format {
        FeedFormat::Osv => {
            let filter = OsvFilter { ecosystems };
            let mut records = Vec::new();
            for blob in blobs {
                records.extend(
                    parse_osv_filtered(&blob.bytes, &blob_origin(blob), filter, zip_limits)
                        .map_err(malformed)?,
                );
            }
            Ok(FeedContent::Osv(records))
        }
        FeedFormat::Kev => {
            let mut catalog = KevCatalog::default();
            for blob in blobs {
                catalog.merge(parse_kev(&blob.bytes, &blob_origin(blob)).map_err(malformed)?);
            }
            Ok(FeedContent::Kev(catalog))
        }
    }
}

/// The zip limits of a source's archives: derived from the most bytes the
/// source may fetch (`url.maxBytes`, [`CONFIG_MAP_MAX_BYTES`],
/// [`PATH_MAX_BYTES`]), never above the controller's `ceiling`.
pub fn zip_limits(source: &FeedSource, ceiling: u64) -> ZipLimits {
    let fetch_limit = match (&source.url, &source.config_map) {
        (Some(url), _) => u64::try_from(url.max_bytes).unwrap_or(DEFAULT_MAX_BYTES),
        (None, Some(_)) => CONFIG_MAP_MAX_BYTES,
        (None, None) => PATH_MAX_BYTES,
    };
    ZipLimits::for_archive_limit(fetch_limit.min(ceiling))
}

/// The SHA-256 (lowercase hex) of the fetched content: of the bytes alone for
/// a single blob (the same as `sha256sum` of the download), else of every
/// blob's name and bytes, length-framed, in order. Equal digests mean
/// nothing to reload.
pub fn content_digest(blobs: &[Blob]) -> String {
    let mut hasher = Sha256::new();
    if let [only] = blobs {
        hasher.update(&only.bytes);
    } else {
        for blob in blobs {
            hasher.update((blob.name.len() as u64).to_be_bytes());
            hasher.update(blob.name.as_bytes());
            hasher.update((blob.bytes.len() as u64).to_be_bytes());
            hasher.update(&blob.bytes);
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a refresh from `previous` to `next` advisories loses more than
/// `max_drop_percent` percent of them.
///
/// Exact integer arithmetic, no rounding: suspect iff `(previous - next) *
/// 100 > previous * max_drop_percent`. Losing 1 of 3 (33.3…%) is suspect at
/// 33 and not at 34; losing exactly the percentage is not suspect. `previous
/// == 0` (first load) and growth are never suspect; a percentage below 0
/// counts as 0 (any loss is suspect), above 100 as 100 (never suspect).
pub fn is_suspect_drop(previous: usize, next: usize, max_drop_percent: i32) -> bool {
    if previous == 0 || next >= previous {
        return false;
    }
    let percent = u128::from(max_drop_percent.clamp(0, 100).unsigned_abs());
    let dropped = (previous - next) as u128;
    dropped * 100 > previous as u128 * percent
}

/// Reads OSV records from a file (JSON record or zip archive) or a directory
/// (every `*.json` and `*.zip` below it, recursively, in name order), for
/// `patchloop evaluate` and the tests; the engine itself reads no files.
pub fn load_osv_path(path: &Path) -> Result<Vec<OsvRecord>, AdvisoryError> {
    let io = |source| AdvisoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        let mut records = Vec::new();
        for entry in entries {
            // Dot-names are a mounted ConfigMap volume's `..data` links:
            // reading them would load every record again.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let child = entry.path();
            let is_data = child.extension().is_some_and(|e| e == "json" || e == "zip");
            if child.is_dir() || is_data {
                records.extend(load_osv_path(&child)?);
            }
        }
        return Ok(records);
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_osv_bytes(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(spec: serde_json::Value) -> UrlSource {
        serde_json::from_value(spec).expect("a url source")
    }

    #[test]
    fn a_url_source_is_checked_before_anything_is_sent() {
        let ok = CheckedUrl::of(
            &source(serde_json::json!({"url": "https://feeds.example/all.zip", "timeout": "30s", "maxBytes": 1000})),
            2000,
        )
        .expect("usable");
        assert_eq!(ok.timeout, std::time::Duration::from_secs(30));
        assert_eq!(ok.limit, 1000);
        let refused = |spec, ceiling| {
            CheckedUrl::of(&source(spec), ceiling)
                .expect_err("refused")
                .to_string()
        };
        assert!(
            refused(
                serde_json::json!({"url": "ftp://feeds.example/all.zip"}),
                u64::MAX
            )
            .contains("only http and https")
        );
        assert!(
            refused(
                serde_json::json!({"url": "https://f.example", "timeout": "0s"}),
                u64::MAX
            )
            .contains("must be positive")
        );
        assert!(
            refused(
                serde_json::json!({"url": "https://f.example", "maxBytes": 3000}),
                2000
            )
            .contains("above this controller's ceiling of 2000 bytes")
        );
    }

    #[test]
    fn a_config_map_key_is_found_or_the_keys_are_named() {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "osv", "namespace": "feeds"},
            "data": {"b.json": "[]", "a.json": "{}"}
        }))
        .expect("a ConfigMap");
        let origin = "configmap feeds/osv";
        let all = selected_values(cm.clone(), None, origin).expect("every key");
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.json", "b.json"]);
        let missing = selected_values(cm, Some("c.json"), origin).expect_err("no such key");
        assert_eq!(
            missing.to_string(),
            "key \"c.json\" of configmap feeds/osv (keys: a.json, b.json) not found"
        );
        let empty = selected_values(ConfigMap::default(), None, origin).expect_err("no data");
        assert_eq!(empty.to_string(), "data in configmap feeds/osv not found");
    }
}
