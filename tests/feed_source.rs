//! Feed sources against real transports: HTTP(S) over loopback from a scripted
//! HTTP/1.1 server written here (no mock of reqwest), files and directories on
//! disk, and ConfigMaps in the test control plane.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use patchloop::api::common::Duration as SpecDuration;
use patchloop::api::feed::{ConfigMapSource, FeedFormat, FeedSource, UrlSource};
use patchloop::controller::feed_source::load_osv_path;
use patchloop::controller::feed_source::{
    self, Blob, FeedContent, FetchError, Fetched, Validators, content_digest, fetch,
    is_suspect_drop,
};
use patchloop::engine::advisory::{AdvisoryDb, KevCatalog, ZipLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

/// Parses with the zip limits of a source at the default `maxBytes`.
fn parse(
    format: FeedFormat,
    ecosystems: &[String],
    blobs: &[Blob],
    origin: &str,
) -> Result<FeedContent, FetchError> {
    let limits = ZipLimits::for_archive_limit(patchloop::api::feed::DEFAULT_MAX_BYTES);
    feed_source::parse(format, ecosystems, blobs, origin, limits)
}

fn kev_bytes() -> Vec<u8> {
    std::fs::read(fixture("kev/known_exploited_vulnerabilities.json")).expect("KEV fixture")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

// ---------------------------------------------------------------------------
// A scripted HTTP/1.1 server.

/// A loopback server: every connection's request head is recorded, then
/// handed with the stream to the handler (with the request's index).
struct Server {
    base: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(usize, String, TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = Arc::clone(&heads);
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(head) = read_head(&mut stream).await else {
                    continue;
                };
                recorded.lock().expect("heads").push(head.clone());
                tokio::spawn(handler(n, head, stream));
                n += 1;
            }
        });
        Server {
            base: format!("http://{addr}"),
            heads,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The value of a request header (names compared case-insensitively).
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Writes a complete response and closes the connection.
async fn respond(mut stream: TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

fn url_source(url: &str, timeout: &str, max_bytes: i64) -> FeedSource {
    FeedSource {
        url: Some(UrlSource {
            url: url.to_owned(),
            timeout: SpecDuration(timeout.to_owned()),
            max_bytes,
        }),
        config_map: None,
        path: None,
    }
}

fn path_source(path: &Path) -> FeedSource {
    FeedSource {
        url: None,
        config_map: None,
        path: Some(path.display().to_string()),
    }
}

/// A client for sources that never reach the cluster (URL and path): built,
/// never used.
fn offline_kube() -> kube::Client {
    let uri = "http://127.0.0.1:9".parse().expect("uri");
    kube::Client::try_from(kube::Config::new(uri)).expect("offline kube client")
}

fn http() -> reqwest::Client {
    feed_source::http_client().expect("http client")
}

/// The controller's default `--feed-max-bytes`.
const CEILING: u64 = patchloop::api::feed::DEFAULT_MAX_BYTES;

async fn fetch_url(source: &FeedSource, validators: &Validators) -> Result<Fetched, FetchError> {
    fetch(&offline_kube(), &http(), source, validators, CEILING).await
}

fn content(fetched: Fetched) -> (Vec<Blob>, Validators) {
    match fetched {
        Fetched::Content { blobs, validators } => (blobs, validators),
        Fetched::NotModified => panic!("expected content, got NotModified"),
    }
}

fn assert_reason(result: Result<Fetched, FetchError>, reason: &str) -> FetchError {
    let err = result.expect_err("expected an error");
    assert_eq!(err.reason(), reason, "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    err
}

// ---------------------------------------------------------------------------
// HTTP.

#[tokio::test]
async fn etag_revalidation_gets_not_modified_then_new_content() {
    let server = Server::start(|n, head, stream| async move {
        match (n, header(&head, "if-none-match").as_deref()) {
            (0, None) => respond(stream, "200 OK", &[("ETag", "\"v1\"")], &kev_bytes()).await,
            (1, Some("\"v1\"")) => {
                respond(stream, "304 Not Modified", &[("ETag", "\"v1\"")], b"").await
            }
            (2, Some("\"v1\"")) => respond(stream, "200 OK", &[("ETag", "\"v2\"")], b"{}").await,
            _ => respond(stream, "400 Bad Request", &[], b"unexpected request").await,
        }
    })
    .await;
    let source = url_source(&server.url("/kev.json"), "10s", 1 << 20);

    let (blobs, validators) = content(
        fetch_url(&source, &Validators::default())
            .await
            .expect("first download"),
    );
    assert_eq!(blobs.len(), 1);
    assert_eq!(blobs[0].bytes, kev_bytes());
    assert_eq!(blobs[0].name, server.url("/kev.json"));
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    assert_eq!(validators.last_modified, None);

    let again = fetch_url(&source, &validators).await.expect("revalidation");
    assert_eq!(again, Fetched::NotModified);

    let (blobs, next) = content(fetch_url(&source, &validators).await.expect("changed"));
    assert_eq!(blobs[0].bytes, b"{}");
    assert_eq!(next.etag.as_deref(), Some("\"v2\""));

    let heads = server.heads();
    assert_eq!(heads.len(), 3);
    assert_eq!(header(&heads[0], "if-none-match"), None);
    assert_eq!(
        header(&heads[1], "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    assert_eq!(header(&heads[1], "if-modified-since"), None);
    assert!(
        header(&heads[0], "user-agent").is_some_and(|ua| ua.starts_with("patchloop/")),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn last_modified_revalidation_gets_not_modified() {
    const STAMP: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let server = Server::start(|_, head, stream| async move {
        if header(&head, "if-modified-since").as_deref() == Some(STAMP) {
            respond(stream, "304 Not Modified", &[], b"").await
        } else {
            respond(stream, "200 OK", &[("Last-Modified", STAMP)], b"[]").await
        }
    })
    .await;
    let source = url_source(&server.url("/all.json"), "10s", 1 << 20);
    let (_, validators) = content(
        fetch_url(&source, &Validators::default())
            .await
            .expect("download"),
    );
    assert_eq!(validators.last_modified.as_deref(), Some(STAMP));
    assert_eq!(validators.etag, None);
    assert_eq!(
        fetch_url(&source, &validators).await.expect("revalidation"),
        Fetched::NotModified
    );
    let heads = server.heads();
    assert_eq!(
        header(&heads[1], "if-modified-since").as_deref(),
        Some(STAMP)
    );
    assert_eq!(header(&heads[1], "if-none-match"), None);
}

#[tokio::test]
async fn error_statuses_are_http_status_errors() {
    let server = Server::start(|n, _, stream| async move {
        match n {
            0 => respond(stream, "500 Internal Server Error", &[], b"boom").await,
            1 => respond(stream, "404 Not Found", &[], b"").await,
            // 304 to an unconditional request: there is nothing to keep.
            _ => respond(stream, "304 Not Modified", &[], b"").await,
        }
    })
    .await;
    let source = url_source(&server.url("/feed"), "10s", 1 << 20);
    for expected in [500, 404, 304] {
        let err = assert_reason(
            fetch_url(&source, &Validators::default()).await,
            "HttpStatus",
        );
        let FetchError::HttpStatus { status, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(status.as_u16(), expected);
        assert!(err.to_string().contains(&expected.to_string()), "{err}");
        assert_eq!(err.is_transient(), expected == 500, "{err}");
    }
    assert!(
        assert_reason(
            fetch_url(&source, &Validators::default()).await,
            "HttpStatus"
        )
        .to_string()
        .contains("/feed")
    );
}

#[tokio::test]
async fn a_body_over_max_bytes_is_refused_while_streaming() {
    const TOTAL: usize = 64 << 20;
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<usize, usize>>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let server = Server::start(move |_, _, mut stream| {
        let tx = Arc::clone(&tx);
        async move {
            // No Content-Length: the size is only known by reading.
            let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
            let mut sent = 0usize;
            let mut outcome = stream.write_all(head.as_bytes()).await.map(|_| ());
            let chunk = vec![b'x'; 64 * 1024];
            while outcome.is_ok() && sent < TOTAL {
                outcome = stream.write_all(&chunk).await;
                if outcome.is_ok() {
                    sent += chunk.len();
                }
            }
            let report = if outcome.is_ok() { Ok(sent) } else { Err(sent) };
            if let Some(tx) = tx.lock().expect("tx").take() {
                let _ = tx.send(report);
            }
        }
    })
    .await;
    let source = url_source(&server.url("/huge"), "30s", 100_000);
    let err = assert_reason(fetch_url(&source, &Validators::default()).await, "TooLarge");
    assert!(err.to_string().contains("100000"), "{err}");
    let report = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the server finishes")
        .expect("the server reports");
    let sent = report.expect_err("the client hung up before the whole body was sent");
    assert!(sent < TOTAL / 2, "sent {sent} bytes before the hang-up");
}

#[tokio::test]
async fn a_content_length_over_max_bytes_is_refused_before_reading() {
    let server = Server::start(|_, _, mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        // Never send the body: a client that waits for it times out instead.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let source = url_source(&server.url("/huge"), "30s", 1 << 20);
    let started = Instant::now();
    assert_reason(fetch_url(&source, &Validators::default()).await, "TooLarge");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_body_cut_short_is_truncated_not_partial_data() {
    let server = Server::start(|n, _, mut stream| async move {
        let head: &[u8] = if n == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n0123456789"
        } else {
            // Chunked, closed before the terminating zero-size chunk.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\na\r\n0123456789\r\n"
        };
        let _ = stream.write_all(head).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let source = url_source(&server.url("/cut"), "10s", 1 << 20);
    for _ in 0..2 {
        let err = assert_reason(
            fetch_url(&source, &Validators::default()).await,
            "Truncated",
        );
        assert!(err.is_transient());
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = Server::start(|n, _, mut stream| async move {
        if n == 1 {
            // Headers and part of the body, then silence.
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
            let _ = stream.write_all(head.as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    })
    .await;
    let source = url_source(&server.url("/slow"), "1s", 1 << 20);
    for _ in 0..2 {
        let started = Instant::now();
        let err = assert_reason(fetch_url(&source, &Validators::default()).await, "Timeout");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(10),
            "{took:?}"
        );
        assert!(err.to_string().contains("1s"), "{err}");
    }
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let source = url_source(&format!("http://{addr}/feed"), "5s", 1 << 20);
    let err = assert_reason(
        fetch_url(&source, &Validators::default()).await,
        "Unreachable",
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn invalid_url_sources_are_refused_without_a_request() {
    for (url, timeout, max) in [
        ("ftp://example.org/x", "10s", 1),
        ("not a url", "10s", 1),
        ("http://127.0.0.1:9/x", "0s", 1),
        ("http://127.0.0.1:9/x", "ten seconds", 1),
        ("http://127.0.0.1:9/x", "10s", 0),
    ] {
        let source = url_source(url, timeout, max);
        assert_reason(
            fetch_url(&source, &Validators::default()).await,
            "InvalidSource",
        );
    }
    // A feed may not ask for more than the controller's ceiling: nothing is
    // fetched (port 9 answers nothing, so a request would be Unreachable).
    let greedy = url_source("http://127.0.0.1:9/x", "1s", CEILING as i64 + 1);
    let err = assert_reason(
        fetch_url(&greedy, &Validators::default()).await,
        "InvalidSource",
    );
    assert!(err.to_string().contains("--feed-max-bytes"), "{err}");
    let at_ceiling = url_source("http://127.0.0.1:9/x", "1s", CEILING as i64);
    assert_reason(
        fetch_url(&at_ceiling, &Validators::default()).await,
        "Unreachable",
    );
    let none = FeedSource {
        url: None,
        config_map: None,
        path: None,
    };
    assert_reason(
        fetch_url(&none, &Validators::default()).await,
        "InvalidSource",
    );
    let both = FeedSource {
        path: Some("/tmp".into()),
        ..url_source("http://127.0.0.1:9/x", "1s", 1)
    };
    assert_reason(
        fetch_url(&both, &Validators::default()).await,
        "InvalidSource",
    );
}

#[tokio::test]
async fn gzip_is_decoded_within_the_limit() {
    let kev = kev_bytes();
    let encoded = gzip(&kev);
    let bomb = gzip(&vec![0u8; 8 << 20]);
    let server = Server::start(move |n, _, stream| {
        let (encoded, bomb) = (encoded.clone(), bomb.clone());
        async move {
            match n {
                // Transfer compression, decoded by the client.
                0 => respond(stream, "200 OK", &[("Content-Encoding", "gzip")], &encoded).await,
                // A .gz file served as is.
                1 => {
                    respond(
                        stream,
                        "200 OK",
                        &[("Content-Type", "application/gzip")],
                        &encoded,
                    )
                    .await
                }
                // 8 MiB of zeros in a few KiB.
                2 => respond(stream, "200 OK", &[("Content-Encoding", "gzip")], &bomb).await,
                _ => respond(stream, "200 OK", &[], &bomb).await,
            }
        }
    })
    .await;
    let source = url_source(&server.url("/kev.json"), "10s", 1 << 20);
    for _ in 0..2 {
        let (blobs, _) = content(
            fetch_url(&source, &Validators::default())
                .await
                .expect("gzip download"),
        );
        assert_eq!(blobs[0].bytes, kev);
    }
    for _ in 0..2 {
        assert_reason(fetch_url(&source, &Validators::default()).await, "TooLarge");
    }
    let heads = server.heads();
    assert!(
        header(&heads[0], "accept-encoding").is_some_and(|v| v.contains("gzip")),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn https_uses_rustls_with_ring_and_verifies_certificates() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed certificate");
    let cert_der = certified.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = kev_bytes();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"tls\"\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let source = url_source(&format!("https://{addr}/kev.json"), "10s", 1 << 20);

    let trusting = feed_source::http_client_builder()
        .tls_certs_only([reqwest::Certificate::from_der(&cert_der).expect("certificate")])
        .build()
        .expect("client trusting the test CA");
    let (blobs, validators) = content(
        fetch(
            &offline_kube(),
            &trusting,
            &source,
            &Validators::default(),
            CEILING,
        )
        .await
        .expect("https download"),
    );
    assert_eq!(blobs[0].bytes, kev_bytes());
    assert_eq!(validators.etag.as_deref(), Some("\"tls\""));

    // The default client (system roots) refuses the self-signed certificate.
    let err = assert_reason(
        fetch(
            &offline_kube(),
            &http(),
            &source,
            &Validators::default(),
            CEILING,
        )
        .await,
        "Unreachable",
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Parsing.

fn osv(content: FeedContent) -> Vec<String> {
    let FeedContent::Osv(records) = content else {
        panic!("expected OSV records")
    };
    let mut ids: Vec<String> = records.into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

fn blob(name: &str, bytes: Vec<u8>) -> Blob {
    Blob {
        name: name.into(),
        bytes,
    }
}

fn fixture_ids(dir: &str) -> Vec<String> {
    let mut ids: Vec<String> = load_osv_path(&fixture(dir))
        .expect("fixtures")
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn malformed_content_is_malformed() {
    let cases = [
        (FeedFormat::Osv, b"{\"id\": \"X-1\", ".to_vec()),
        (FeedFormat::Osv, b"[{\"id\": 5}]".to_vec()),
        (FeedFormat::Osv, b"PK\x03\x04 not really a zip".to_vec()),
        (FeedFormat::Osv, b"".to_vec()),
        (FeedFormat::Kev, b"{\"vulnerabilities\": 3}".to_vec()),
        (FeedFormat::Kev, b"<html>captive portal</html>".to_vec()),
    ];
    for (format, bytes) in cases {
        let err = parse(
            format,
            &[],
            &[blob("feed.json", bytes)],
            "AdvisoryFeed test",
        )
        .expect_err("malformed");
        assert_eq!(err.reason(), "Malformed", "{err}");
        let text = err.to_string();
        assert!(text.contains("AdvisoryFeed test: feed.json"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}

#[test]
fn a_zip_of_osv_records_parses() {
    let dir = fixture("osv/debian");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for file in &files {
        let name = file.file_name().expect("name").to_string_lossy();
        writer.start_file(name, options).expect("zip member");
        writer
            .write_all(&std::fs::read(file).expect("fixture"))
            .expect("zip write");
    }
    let archive = writer.finish().expect("zip").into_inner();

    let parsed = parse(FeedFormat::Osv, &[], &[blob("all.zip", archive)], "debian")
        .expect("zip of OSV records");
    assert_eq!(parsed.len(), files.len());
    assert_eq!(osv(parsed), fixture_ids("osv/debian"));
}

#[test]
fn json_arrays_and_single_records_parse() {
    let one = std::fs::read(fixture("osv/debian/DSA-5514-1.json")).expect("fixture");
    let two = std::fs::read(fixture("osv/debian/DLA-4015-1.json")).expect("fixture");
    let array = [b"[".as_slice(), &one, b",", &two, b"]"].concat();
    let parsed = parse(
        FeedFormat::Osv,
        &[],
        &[blob("a", one.clone()), blob("b", array)],
        "x",
    )
    .expect("records");
    assert_eq!(osv(parsed), ["DLA-4015-1", "DSA-5514-1", "DSA-5514-1"]);
}

#[test]
fn the_kev_catalog_parses_and_merges() {
    let bytes = kev_bytes();
    let wire: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let count = wire["vulnerabilities"].as_array().expect("array").len();
    let parsed = parse(FeedFormat::Kev, &[], &[blob("kev", bytes.clone())], "kev").expect("KEV");
    let FeedContent::Kev(catalog) = &parsed else {
        panic!("expected KEV")
    };
    assert_eq!(catalog.entries.len(), count);
    assert!(catalog.entries.contains_key("CVE-2023-4911"));
    let twice = parse(
        FeedFormat::Kev,
        &[],
        &[blob("a", bytes.clone()), blob("b", bytes)],
        "kev",
    )
    .expect("KEV");
    assert_eq!(twice.len(), count);
}

#[test]
fn the_ecosystem_filter_drops_only_records_that_cannot_matter() {
    let records = load_osv_path(&fixture("osv")).expect("fixtures");
    let blobs: Vec<Blob> = std::fs::read_dir(fixture("osv/debian"))
        .expect("dir")
        .chain(std::fs::read_dir(fixture("osv/ubuntu")).expect("dir"))
        .map(|e| {
            let path = e.expect("entry").path();
            blob(
                &path.display().to_string(),
                std::fs::read(&path).expect("read"),
            )
        })
        .collect();
    for wanted in [
        vec!["Debian:10".to_owned()],
        vec!["Debian:12".to_owned()],
        vec!["Ubuntu:22.04:LTS".to_owned()],
        vec!["Alpine:v3.19".to_owned()],
    ] {
        let FeedContent::Osv(kept) = parse(FeedFormat::Osv, &wanted, &blobs, "all").expect("parse")
        else {
            panic!("OSV")
        };
        assert!(kept.len() < records.len(), "{wanted:?} drops something");
        // The engine's result is exactly the same with or without the drop.
        let (full, _) = AdvisoryDb::build(records.clone(), KevCatalog::default(), &wanted);
        let (filtered, _) = AdvisoryDb::build(kept, KevCatalog::default(), &wanted);
        assert!(full.diff(&filtered).is_empty(), "{wanted:?}");
        assert_eq!(full.len(), filtered.len(), "{wanted:?}");
        assert_eq!(full.ecosystems(), filtered.ecosystems(), "{wanted:?}");
    }
    let everything = parse(FeedFormat::Osv, &[], &blobs, "all").expect("parse");
    assert_eq!(everything.len(), records.len());
}

#[test]
fn content_digests_follow_content() {
    let abc = [blob("x", b"abc".to_vec())];
    assert_eq!(
        content_digest(&abc),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        content_digest(&[blob("elsewhere", b"abc".to_vec())]),
        content_digest(&abc),
        "one blob: the bytes alone"
    );
    let two = [blob("a", b"1".to_vec()), blob("b", b"2".to_vec())];
    assert_eq!(content_digest(&two), content_digest(&two.clone()));
    assert_ne!(
        content_digest(&two),
        content_digest(&[blob("a", b"1".to_vec()), blob("b", b"3".to_vec())])
    );
    assert_ne!(
        content_digest(&two),
        content_digest(&[blob("a", b"12".to_vec()), blob("b", b"".to_vec())]),
        "length-framed"
    );
    assert_eq!(content_digest(&[]).len(), 64);
}

#[test]
fn suspect_drops() {
    let table = [
        // previous, next, max %, suspect
        (0, 0, 50, false),
        (0, 10, 0, false),
        (100, 100, 0, false),
        (100, 150, 0, false),
        (100, 99, 0, true),
        (100, 50, 50, false),
        (100, 49, 50, true),
        (100, 0, 100, false),
        (100, 0, 99, true),
        (3, 2, 33, true),
        (3, 2, 34, false),
        (1, 0, 50, true),
        (10, 5, -5, true),
        (10, 0, 250, false),
        (usize::MAX, 0, 99, true),
        (usize::MAX - 1, (usize::MAX - 1) / 2, 50, false),
        (usize::MAX, usize::MAX / 2, 50, true),
    ];
    for (previous, next, max, suspect) in table {
        assert_eq!(
            is_suspect_drop(previous, next, max),
            suspect,
            "{previous} -> {next} at {max}%"
        );
    }
}

// ---------------------------------------------------------------------------
// Path sources.

#[tokio::test]
async fn a_directory_reads_like_load_osv_path() {
    for dir in ["osv/debian", "osv"] {
        let (blobs, validators) = content(
            fetch_url(&path_source(&fixture(dir)), &Validators::default())
                .await
                .expect("directory"),
        );
        assert!(validators.is_empty());
        let parsed = parse(FeedFormat::Osv, &[], &blobs, dir).expect("records");
        assert_eq!(osv(parsed), fixture_ids(dir), "{dir}");
    }
    let file = fixture("osv/debian/DSA-5514-1.json");
    let (blobs, _) = content(
        fetch_url(&path_source(&file), &Validators::default())
            .await
            .expect("file"),
    );
    assert_eq!(blobs.len(), 1);
    assert_eq!(blobs[0].name, file.display().to_string());

    let kev = fixture("kev/known_exploited_vulnerabilities.json");
    let (blobs, _) = content(
        fetch_url(&path_source(&kev), &Validators::default())
            .await
            .expect("KEV file"),
    );
    assert!(
        parse(FeedFormat::Kev, &[], &blobs, "kev")
            .expect("KEV")
            .len()
            > 10
    );

    let missing = fixture("osv/nowhere");
    let err = assert_reason(
        fetch_url(&path_source(&missing), &Validators::default()).await,
        "NotFound",
    );
    assert!(err.to_string().contains("osv/nowhere"), "{err}");
}

#[tokio::test]
async fn a_mounted_config_map_volume_counts_each_file_once() {
    // The kubelet's atomic-writer layout: NAME -> ..data/NAME, ..data -> ..TS.
    let dir = tempfile::tempdir().expect("tempdir");
    let stamp = dir.path().join("..2024_01_01_00_00_00.000000001");
    std::fs::create_dir(&stamp).expect("mkdir");
    std::fs::copy(
        fixture("osv/debian/DSA-5514-1.json"),
        stamp.join("DSA-5514-1.json"),
    )
    .expect("copy");
    std::fs::write(
        stamp.join("DLA-4015-1.json.gz"),
        gzip(&std::fs::read(fixture("osv/debian/DLA-4015-1.json")).expect("fixture")),
    )
    .expect("write gz");
    std::os::unix::fs::symlink(stamp.file_name().expect("name"), dir.path().join("..data"))
        .expect("symlink");
    for name in ["DSA-5514-1.json", "DLA-4015-1.json.gz"] {
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.path().join(name))
            .expect("symlink");
    }
    let (blobs, _) = content(
        fetch_url(&path_source(dir.path()), &Validators::default())
            .await
            .expect("mounted volume"),
    );
    assert_eq!(blobs.len(), 2);
    let parsed = parse(FeedFormat::Osv, &[], &blobs, "volume").expect("records");
    assert_eq!(osv(parsed), ["DLA-4015-1", "DSA-5514-1"]);
}

// ---------------------------------------------------------------------------
// ConfigMap sources (real apiserver).

fn cm_source(ns: &str, name: &str, key: Option<&str>) -> FeedSource {
    FeedSource {
        url: None,
        config_map: Some(ConfigMapSource {
            namespace: ns.into(),
            name: name.into(),
            key: key.map(str::to_owned),
        }),
        path: None,
    }
}

async fn create_config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
    data: BTreeMap<String, String>,
    binary: BTreeMap<String, Vec<u8>>,
) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data),
        binary_data: Some(
            binary
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("create configmap {name}: {e}"));
}

fn read_fixture(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).expect("fixture")
}

#[tokio::test]
async fn config_map_data_is_read_by_key_or_whole() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("feeds").await;
    let data = BTreeMap::from([
        (
            "DSA-5514-1.json".to_owned(),
            read_fixture("osv/debian/DSA-5514-1.json"),
        ),
        (
            "DLA-4015-1.json".to_owned(),
            read_fixture("osv/debian/DLA-4015-1.json"),
        ),
    ]);
    create_config_map(&client, &ns, "osv", data, BTreeMap::new()).await;
    let http = http();

    let one = fetch(
        &client,
        &http,
        &cm_source(&ns, "osv", Some("DSA-5514-1.json")),
        &Validators::default(),
        CEILING,
    )
    .await
    .expect("one key");
    let (blobs, validators) = content(one);
    assert!(validators.is_empty());
    assert_eq!(blobs.len(), 1);
    assert_eq!(
        blobs[0].name,
        format!("configmap {ns}/osv key DSA-5514-1.json")
    );
    assert_eq!(
        osv(parse(FeedFormat::Osv, &[], &blobs, "cm").expect("record")),
        ["DSA-5514-1"]
    );

    let all = fetch(
        &client,
        &http,
        &cm_source(&ns, "osv", None),
        &Validators::default(),
        CEILING,
    )
    .await
    .expect("every key");
    let (blobs, _) = content(all);
    assert_eq!(blobs.len(), 2);
    assert_eq!(
        osv(parse(FeedFormat::Osv, &[], &blobs, "cm").expect("records")),
        ["DLA-4015-1", "DSA-5514-1"]
    );
}

#[tokio::test]
async fn config_map_binary_data_may_be_gzip() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("feeds").await;
    let kev = kev_bytes();
    let binary = BTreeMap::from([
        ("kev.json.gz".to_owned(), gzip(&kev)),
        ("raw.json".to_owned(), kev.clone()),
    ]);
    create_config_map(&client, &ns, "kev", BTreeMap::new(), binary).await;
    // Past the decompression limit, a few hundred KiB stored.
    let bomb_size = usize::try_from(feed_source::CONFIG_MAP_MAX_BYTES).expect("usize") + 1024;
    let bomb = BTreeMap::from([("bomb.gz".to_owned(), gzip(&vec![b' '; bomb_size]))]);
    create_config_map(&client, &ns, "bomb", BTreeMap::new(), bomb).await;
    let http = http();

    let (blobs, _) = content(
        fetch(
            &client,
            &http,
            &cm_source(&ns, "kev", None),
            &Validators::default(),
            CEILING,
        )
        .await
        .expect("binaryData"),
    );
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0].bytes, kev, "gzip decompressed");
    assert_eq!(blobs[1].bytes, kev, "plain binaryData kept as is");
    let parsed = parse(FeedFormat::Kev, &[], &blobs, "cm").expect("KEV");
    assert!(parsed.len() > 10);

    let err = assert_reason(
        fetch(
            &client,
            &http,
            &cm_source(&ns, "bomb", None),
            &Validators::default(),
            CEILING,
        )
        .await,
        "TooLarge",
    );
    assert!(err.to_string().contains("bomb.gz"), "{err}");

    // The controller's ceiling bounds ConfigMap sources too: the KEV
    // catalogue that fits the default is refused under a smaller one.
    assert_reason(
        fetch(
            &client,
            &http,
            &cm_source(&ns, "kev", None),
            &Validators::default(),
            u64::try_from(kev.len() - 1).expect("u64"),
        )
        .await,
        "TooLarge",
    );
}

#[tokio::test]
async fn missing_or_forbidden_config_maps_are_clear_errors() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("feeds").await;
    create_config_map(
        &client,
        &ns,
        "present",
        BTreeMap::from([("a.json".to_owned(), "{}".to_owned())]),
        BTreeMap::new(),
    )
    .await;
    let http = http();

    let err = assert_reason(
        fetch(
            &client,
            &http,
            &cm_source(&ns, "absent", None),
            &Validators::default(),
            CEILING,
        )
        .await,
        "NotFound",
    );
    assert_eq!(err.to_string(), format!("configmap {ns}/absent not found"));

    let err = assert_reason(
        fetch(
            &client,
            &http,
            &cm_source(&ns, "present", Some("b.json")),
            &Validators::default(),
            CEILING,
        )
        .await,
        "NotFound",
    );
    let text = err.to_string();
    assert!(
        text.contains("\"b.json\"") && text.contains("a.json"),
        "{text}"
    );

    let nobody = env.client_as("nobody", &[]).await;
    let err = assert_reason(
        fetch(
            &nobody,
            &http,
            &cm_source(&ns, "present", None),
            &Validators::default(),
            CEILING,
        )
        .await,
        "Forbidden",
    );
    assert!(!err.is_transient(), "{err}");
}

// ---------------------------------------------------------------------------
// Memory: a counting allocator, per thread (tests run on parallel threads;
// each measurement runs on its own test's thread).

struct Counting;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// wrapper only counts sizes in thread-local cells that never allocate.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on.
        let ptr = unsafe { std::alloc::System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on.
        let out = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !out.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        out
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes this thread had
/// allocated at once during it, above what it held before.
fn peak_allocated<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(std::cell::Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(std::cell::Cell::get);
    (out, usize::try_from(peak - start).unwrap_or(0))
}

/// Every OSV fixture record, and their JSON size in all.
fn fixture_osv_blobs() -> (Vec<Blob>, usize) {
    let mut blobs = Vec::new();
    for dir in ["osv/debian", "osv/ubuntu"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture(dir))
            .expect("fixture dir")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        for path in paths {
            // Compact, as OSV distributes records: pretty-printing would
            // make the JSON larger and the measured multiple smaller.
            let value: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("JSON");
            blobs.push(blob(
                &path.display().to_string(),
                serde_json::to_vec(&value).expect("JSON"),
            ));
        }
    }
    let size = blobs.iter().map(|b| b.bytes.len()).sum();
    (blobs, size)
}

/// The memory a loaded feed takes while the index is rebuilt (its records,
/// the copy the build consumes, and the index), per byte of compact JSON.
fn measured_memory_multiple() -> f64 {
    let (blobs, json) = fixture_osv_blobs();
    let (records, peak) = peak_allocated(|| {
        let FeedContent::Osv(records) =
            parse(FeedFormat::Osv, &[], &blobs, "fixtures").expect("fixtures parse")
        else {
            panic!("OSV content")
        };
        let (db, _) = AdvisoryDb::build(records.clone(), KevCatalog::default(), &[]);
        let n = db.len();
        drop((records, db));
        n
    });
    assert!(records > 0);
    peak as f64 / json as f64
}

/// The chart's memory limit, in bytes (`resources.limits.memory`, `NNNMi`).
fn chart_memory_limit() -> u64 {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/patchloop/values.yaml");
    let text = std::fs::read_to_string(path).expect("chart values");
    let values: serde_json::Value = serde_saphyr::from_str(&text).expect("values parse");
    let limit = values["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    let mib: u64 = limit
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("memory limit {limit:?} in Mi"));
    mib * 1024 * 1024
}

/// The controller's resident memory with a large fleet before any refresh
/// (BENCHMARKS.md: peak RSS 124–127 MiB), rounded up.
const STEADY_RSS: u64 = 130 * 1024 * 1024;

/// The chart's `feedMaxBytes` (the controller's `--feed-max-bytes`).
fn chart_feed_max_bytes() -> u64 {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/patchloop/values.yaml");
    let text = std::fs::read_to_string(path).expect("chart values");
    let values: serde_json::Value = serde_saphyr::from_str(&text).expect("values parse");
    values["feedMaxBytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("feedMaxBytes {:?} in bytes", values["feedMaxBytes"]))
}

#[test]
fn the_default_max_bytes_leaves_a_refresh_within_the_memory_limit() {
    let multiple = measured_memory_multiple();
    // Records of 1-2 KiB of JSON each take several times that parsed.
    assert!((2.0..20.0).contains(&multiple), "measured {multiple}");
    let default = patchloop::api::feed::DEFAULT_MAX_BYTES;
    // No feed may ask for more than the controller's ceiling, which the
    // chart sets to the same figure.
    assert_eq!(chart_feed_max_bytes(), default);
    assert_eq!(CEILING, default);
    // What a refresh holds at most: the download and the records kept,
    // each within maxBytes of JSON, the records `multiple` times over.
    let refresh = default as f64 * (1.0 + multiple);
    let limit = chart_memory_limit();
    assert!(
        STEADY_RSS as f64 + refresh <= limit as f64,
        "maxBytes {default} × (1 + {multiple:.1}) + {STEADY_RSS} exceeds the chart's memory limit {limit}"
    );
    // The API default is this constant.
    let source: UrlSource =
        serde_json::from_value(serde_json::json!({"url": "https://example.org/all.zip"}))
            .expect("a URL source");
    assert_eq!(source.max_bytes as u64, default);
}

// ---------------------------------------------------------------------------
// Zip archives: bombs and limits.

fn zip_of(members: &[(&str, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(false);
    for (name, bytes) in members {
        writer.start_file(*name, options).expect("zip member");
        writer.write_all(bytes).expect("zip write");
    }
    writer.finish().expect("zip").into_inner()
}

/// An OSV record of `ecosystem` padded with a summary of `pad` bytes.
fn synthetic_record(id: &str, ecosystem: &str, pad: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "summary": "x".repeat(pad),
        "affected": [{
            "package": {"ecosystem": ecosystem, "name": format!("pkg-{id}")},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.2-3"}]}],
            "versions": (0..50).map(|i| format!("1.{i}")).collect::<Vec<_>>(),
        }],
    }))
    .expect("JSON")
}

fn small_limits() -> ZipLimits {
    ZipLimits {
        total_bytes: 4 << 20,
        kept_bytes: 2 << 20,
        entries: 1000,
        member_bytes: 1 << 20,
    }
}

fn parse_zip(
    archive: Vec<u8>,
    ecosystems: &[String],
    limits: ZipLimits,
) -> Result<FeedContent, FetchError> {
    feed_source::parse(
        FeedFormat::Osv,
        ecosystems,
        &[blob("all.zip", archive)],
        "AdvisoryFeed bomb",
        limits,
    )
}

#[test]
fn zip_bombs_are_refused_by_the_bytes_actually_decompressed() {
    // One member of 64 MiB of spaces (a valid JSON prefix) compresses to
    // about 64 KiB: over the member limit.
    let mut huge = vec![b' '; 64 << 20];
    huge.extend_from_slice(b"{}");
    let one_member = zip_of(&[("a.json", huge)], zip::CompressionMethod::Deflated);
    assert!(one_member.len() < 1 << 20, "a bomb: {}", one_member.len());
    // Many members each under the member limit, over the total in all
    // (read with a filter that keeps none of them: what is decompressed
    // counts, kept or not).
    let many: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("m{i}.json"),
                synthetic_record(&format!("M-{i}"), "PyPI", 900 << 10),
            )
        })
        .collect();
    let many: Vec<(&str, Vec<u8>)> = many.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let many_members = zip_of(&many, zip::CompressionMethod::Deflated);
    // More members than allowed, each tiny.
    let names: Vec<String> = (0..1001).map(|i| format!("r{i}.json")).collect();
    let tiny: Vec<(&str, Vec<u8>)> = names
        .iter()
        .map(|n| (n.as_str(), synthetic_record(n, "PyPI", 0)))
        .collect();
    let too_many = zip_of(&tiny, zip::CompressionMethod::Deflated);
    // Kept records over the kept limit (every member wanted).
    let kept: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("k{i}.json"),
                synthetic_record(&format!("K-{i}"), "Debian:12", 100 << 10),
            )
        })
        .collect();
    let kept: Vec<(&str, Vec<u8>)> = kept.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let too_much_kept = zip_of(&kept, zip::CompressionMethod::Deflated);

    let debian = ["Debian:12".to_owned()];
    for (case, archive, ecosystems, words) in [
        (
            "one member",
            one_member,
            &[][..],
            "archive member larger than the limit of 1048576 bytes",
        ),
        (
            "many members",
            many_members,
            &debian[..],
            "decompresses to more than the limit of 4194304 bytes",
        ),
        (
            "too many members",
            too_many,
            &[][..],
            "1001 archive members, more than the limit of 1000",
        ),
        (
            "too much kept",
            too_much_kept,
            &debian[..],
            "more than the limit of 2097152 bytes",
        ),
    ] {
        let (result, peak) = peak_allocated(|| parse_zip(archive, ecosystems, small_limits()));
        let err = result.expect_err(case);
        assert_eq!(err.reason(), "TooLarge", "{case}: {err}");
        let text = err.to_string();
        assert!(text.contains(words), "{case}: {text}");
        assert!(
            text.contains("AdvisoryFeed bomb: all.zip"),
            "{case}: {text}"
        );
        // Never more than about one member over the limit held at once.
        assert!(peak < 8 << 20, "{case}: {peak} bytes allocated at once");
    }
}

/// Sets the uncompressed size a zip archive declares for each of its
/// members (in the local headers and the central directory) to `size`.
fn declare_uncompressed_size(archive: &mut [u8], size: u32) {
    let mut i = 0;
    while i + 30 <= archive.len() {
        match &archive[i..i + 4] {
            [0x50, 0x4b, 0x03, 0x04] => {
                archive[i + 22..i + 26].copy_from_slice(&size.to_le_bytes())
            }
            [0x50, 0x4b, 0x01, 0x02] => {
                archive[i + 24..i + 28].copy_from_slice(&size.to_le_bytes())
            }
            _ => {}
        }
        i += 1;
    }
}

#[test]
fn declared_member_sizes_are_not_trusted() {
    // A member declaring 100 bytes that inflates to 8 MiB.
    let mut body = vec![b' '; 8 << 20];
    body.extend_from_slice(&synthetic_record("LIE-1", "Debian:12", 0));
    let mut archive = zip_of(&[("lie.json", body)], zip::CompressionMethod::Deflated);
    declare_uncompressed_size(&mut archive, 100);
    let (result, peak) = peak_allocated(|| parse_zip(archive, &[], small_limits()));
    // Either the reader stops at what was declared (the JSON is cut short)
    // or the actual bytes are counted (over the member limit): never 8 MiB
    // read and kept.
    let err = result.expect_err("a lying archive");
    assert!(matches!(err.reason(), "TooLarge" | "Malformed"), "{err}");
    assert!(peak < 4 << 20, "{peak} bytes allocated at once");
}

#[test]
fn the_ecosystem_filter_runs_per_member_before_records_are_built() {
    // 2000 records of another ecosystem (with bulky fields) and 20 wanted.
    let mut members: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| {
            (
                format!("PYSEC-{i}.json"),
                synthetic_record(&format!("PYSEC-{i}"), "PyPI", 2048),
            )
        })
        .collect();
    members.extend((0..20).map(|i| {
        (
            format!("DSA-{i}.json"),
            synthetic_record(&format!("DSA-{i}"), "Debian:12", 2048),
        )
    }));
    let members: Vec<(&str, Vec<u8>)> = members
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let archive = zip_of(&members, zip::CompressionMethod::Deflated);
    let limits = ZipLimits::for_archive_limit(patchloop::api::feed::DEFAULT_MAX_BYTES);
    let wanted = vec!["Debian:12".to_owned()];

    let (all, peak_all) = peak_allocated(|| parse_zip(archive.clone(), &[], limits).expect("all"));
    assert_eq!(all.len(), 2020);
    drop(all);
    let (some, peak_filtered) =
        peak_allocated(|| parse_zip(archive.clone(), &wanted, limits).expect("filtered"));
    assert_eq!(osv(some).len(), 20);
    // Holding every record costs 2000 records' worth; filtering while
    // reading holds the archive's directory, the 20 wanted and one member
    // at a time.
    eprintln!("peak allocated: all {peak_all} bytes, filtered {peak_filtered} bytes");
    assert!(
        peak_filtered * 5 < peak_all,
        "filtered {peak_filtered} bytes at once vs {peak_all} unfiltered"
    );
}

// ---------------------------------------------------------------------------
// Redirects.

/// A loopback HTTPS server (self-signed for 127.0.0.1) answering every
/// request with `status` and `headers` and an empty body; returns its
/// address and a client trusting its certificate.
async fn tls_server(
    status: &'static str,
    headers: Vec<(String, String)>,
) -> (String, reqwest::Client) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed certificate");
    let cert_der = certified.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let headers = Arc::new(headers);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let headers = Arc::clone(&headers);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut out =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n");
                for (k, v) in headers.iter() {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = tls.write_all(out.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let client = feed_source::http_client_builder()
        .tls_certs_only([reqwest::Certificate::from_der(&cert_der).expect("certificate")])
        .build()
        .expect("client trusting the test CA");
    (format!("https://{addr}"), client)
}

#[tokio::test]
async fn redirects_from_https_to_http_are_refused() {
    let plain =
        Server::start(
            |_, _, stream| async move { respond(stream, "200 OK", &[], &kev_bytes()).await },
        )
        .await;
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "303 See Other",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let (base, client) =
            tls_server(status, vec![("Location".into(), plain.url("/kev.json"))]).await;
        let source = url_source(&format!("{base}/kev.json"), "10s", 1 << 20);
        let err = assert_reason(
            fetch(
                &offline_kube(),
                &client,
                &source,
                &Validators::default(),
                CEILING,
            )
            .await,
            "Redirect",
        );
        let text = err.to_string();
        assert!(text.contains("from https to http"), "{status}: {text}");
        assert!(
            text.starts_with(&source.url.as_ref().expect("url").url),
            "{status}: {text}"
        );
        // The refusal does not repeat where the server pointed.
        assert!(!text.contains(&plain.base), "{status}: {text}");
    }
    assert!(
        plain.heads().is_empty(),
        "the http server was reached: {:?}",
        plain.heads()
    );
}

#[tokio::test]
async fn redirects_are_followed_at_most_five_times() {
    // /hop/N redirects to /hop/N-1; /hop/0 serves the catalog.
    let server = Server::start(|_, head, stream| async move {
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let hops: u32 = path.trim_start_matches("/hop/").parse().unwrap_or(0);
        if hops == 0 {
            respond(stream, "200 OK", &[], &kev_bytes()).await
        } else {
            let next = format!("/hop/{}", hops - 1);
            respond(stream, "302 Found", &[("Location", next.as_str())], b"").await
        }
    })
    .await;
    let five = url_source(&server.url("/hop/5"), "10s", 1 << 20);
    let (blobs, _) = content(
        fetch_url(&five, &Validators::default())
            .await
            .expect("5 redirects"),
    );
    assert_eq!(blobs[0].bytes, kev_bytes());
    let before = server.heads().len();
    for hops in [6, 7, 50] {
        let source = url_source(&server.url(&format!("/hop/{hops}")), "10s", 1 << 20);
        let err = assert_reason(fetch_url(&source, &Validators::default()).await, "Redirect");
        assert!(err.to_string().contains("more than 5 redirects"), "{err}");
    }
    // Each refused chain stopped after 6 requests (the first and 5 redirects).
    assert_eq!(server.heads().len() - before, 3 * 6);
}

// ---------------------------------------------------------------------------
// The feed reconciler (`patchloop run`) against a loopback server.

use patchloop::api::AdvisoryFeed;
use support::objects::{WAIT, apply};
use support::patchloop::Patchloop;

fn url_feed(
    name: &str,
    label: &str,
    url: &str,
    interval: &str,
    ecosystems: &[&str],
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
        "metadata": {"name": name, "labels": {"patchloop-test": label}},
        "spec": {"source": {"url": {"url": url, "timeout": "10s"}}, "format": "OSV",
                 "interval": interval, "ecosystems": ecosystems},
    })
}

/// Waits until the feed's status describes generation `generation` with
/// `Ready=True`, and returns it.
async fn loaded(
    feeds: &Api<AdvisoryFeed>,
    name: &str,
    generation: i64,
) -> patchloop::api::feed::AdvisoryFeedStatus {
    support::eventually(
        &format!("{name} loaded at generation {generation}"),
        WAIT,
        async || {
            let status = feeds.get_status(name).await.ok()?.status?;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && status.observed_generation == Some(generation)).then_some(status)
        },
    )
    .await
}

fn ecosystem_count(status: &patchloop::api::feed::AdvisoryFeedStatus, ecosystem: &str) -> i32 {
    status
        .ecosystems
        .iter()
        .find(|e| e.name == ecosystem)
        .map_or(0, |e| e.advisories)
}

#[tokio::test]
async fn status_writes_do_not_refetch_a_feed_only_spec_changes_and_the_interval_do() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("feed-loop").await;
    let label = format!("loop-{}", support::random_suffix());
    // Every answer is new content (the record plus n spaces, a new ETag): a
    // reconcile woken by the feed's own status write would load it and
    // write again, forever.
    let record = std::fs::read(fixture("osv/debian/DSA-5497-1.json")).expect("fixture");
    let server = Server::start(move |n, _, stream| {
        let mut body = record.clone();
        body.extend(std::iter::repeat_n(b' ', n));
        async move {
            let etag = format!("\"v{n}\"");
            respond(stream, "200 OK", &[("ETag", etag.as_str())], &body).await
        }
    })
    .await;
    let _controller = Patchloop::start(env, &ns, &label, &[]).await;
    let name = format!("loop-{label}");
    let feeds: Api<AdvisoryFeed> = Api::all(client.clone());
    let url = server.url("/osv.json");
    apply(&client, "", url_feed(&name, &label, &url, "1h", &[])).await;
    loaded(&feeds, &name, 1).await;

    // Several status writes by another writer, and metadata changes that
    // do not touch the spec or labels.
    for i in 0..4 {
        let patch = serde_json::json!({"status": {"etag": format!("\"other-{i}\"")}});
        feeds
            .patch_status(&name, &Default::default(), &kube::api::Patch::Merge(&patch))
            .await
            .expect("status write");
        let patch = serde_json::json!({"metadata": {"annotations": {"note": format!("n{i}")}}});
        feeds
            .patch(&name, &Default::default(), &kube::api::Patch::Merge(&patch))
            .await
            .expect("annotation");
    }
    // Two spec changes, each a barrier: the controller sees the writes above
    // before each, in watch order, and each asks for exactly one refresh.
    apply(&client, "", url_feed(&name, &label, &url, "2h", &[])).await;
    loaded(&feeds, &name, 2).await;
    apply(&client, "", url_feed(&name, &label, &url, "3h", &[])).await;
    loaded(&feeds, &name, 3).await;
    let status = loaded(&feeds, &name, 3).await;
    assert_eq!(status.advisories, 1);
    // The first load and one per spec change; nothing for the status
    // writes (the interval, 1h and up, has not come).
    assert_eq!(server.heads().len(), 3, "fetches: {:#?}", server.heads());
}

#[tokio::test]
async fn a_new_url_or_new_ecosystems_are_loaded_even_when_the_server_says_not_modified() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("feed-key").await;
    let label = format!("key-{}", support::random_suffix());
    let array = |files: &[&str]| {
        let records: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                serde_json::from_slice(&std::fs::read(fixture(f)).expect("fixture")).expect("JSON")
            })
            .collect();
        serde_json::to_vec(&records).expect("JSON")
    };
    let a = array(&["osv/debian/DSA-5497-1.json"]);
    let b = array(&[
        "osv/debian/DSA-5843-1.json",
        "osv/debian/DSA-5843-2.json",
        "osv/ubuntu/USN-6409-1.json",
    ]);
    // One ETag for everything: a conditional request is always answered 304.
    let server = Server::start(move |_, head, stream| {
        let body = if head.starts_with("GET /b ") {
            b.clone()
        } else {
            a.clone()
        };
        async move {
            if header(&head, "if-none-match").as_deref() == Some("\"same\"") {
                respond(stream, "304 Not Modified", &[("ETag", "\"same\"")], b"").await
            } else {
                respond(stream, "200 OK", &[("ETag", "\"same\"")], &body).await
            }
        }
    })
    .await;
    let _controller = Patchloop::start(env, &ns, &label, &[]).await;
    let name = format!("key-{label}");
    let feeds: Api<AdvisoryFeed> = Api::all(client.clone());
    apply(
        &client,
        "",
        url_feed(&name, &label, &server.url("/a"), "1h", &["Debian:12"]),
    )
    .await;
    let status = loaded(&feeds, &name, 1).await;
    assert_eq!(ecosystem_count(&status, "Debian:12"), 1);

    // A new URL: downloaded unconditionally, its data replaces the old.
    apply(
        &client,
        "",
        url_feed(&name, &label, &server.url("/b"), "1h", &["Debian:12"]),
    )
    .await;
    let status = loaded(&feeds, &name, 2).await;
    assert_eq!(ecosystem_count(&status, "Debian:12"), 2, "{status:?}");
    assert_eq!(ecosystem_count(&status, "Ubuntu:22.04:LTS"), 0);
    let heads = server.heads();
    let last = heads.last().expect("a request");
    assert!(last.starts_with("GET /b "), "{last}");
    assert_eq!(header(last, "if-none-match"), None, "{last}");

    // A newly listed ecosystem: the same bytes, parsed again.
    apply(
        &client,
        "",
        url_feed(
            &name,
            &label,
            &server.url("/b"),
            "1h",
            &["Debian:12", "Ubuntu:22.04:LTS"],
        ),
    )
    .await;
    let status = loaded(&feeds, &name, 3).await;
    assert_eq!(
        ecosystem_count(&status, "Ubuntu:22.04:LTS"),
        1,
        "{status:?}"
    );
    assert_eq!(ecosystem_count(&status, "Debian:12"), 2);
}
