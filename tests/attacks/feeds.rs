//! The feed operator (issue 14, finding 8): whoever may write the
//! cluster-scoped AdvisoryFeeds points one at a zip bomb, an oversized or
//! gzip-bombed body, or an https URL that redirects to plain http. The
//! controller stays up with bounded memory, keeps the last good data, and
//! the feed's status says what was refused and which limit applied. A
//! namespaced user cannot write AdvisoryFeeds at all.

use std::io::Write;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use patchloop::api::AdvisoryFeed;
use patchloop::api::feed::AdvisoryFeedStatus;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::identity;
use crate::support;
use crate::support::objects::WAIT;
use crate::support::patchloop::Patchloop;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The most resident memory the controller may ever reach in these attacks
/// (`VmHWM`): a safety bound below what any bomb decompresses to (256 MiB
/// and more) and above a small test controller's footprint plus one refused
/// refresh at the default limits (a 48 MiB body).
const RSS_BOUND_KIB: u64 = 200 * 1024;

/// A ServiceAccount in `ns` bound cluster-wide (ClusterRoleBinding) to a
/// ClusterRole with exactly `rules`: the feed operator of real life, whose
/// objects are cluster-scoped. Returns its client once RBAC lets it list
/// AdvisoryFeeds.
async fn with_cluster_rules(
    ns: &str,
    name: &str,
    rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
) -> kube::Client {
    let env = support::env();
    let admin = env.client().await;
    // The ServiceAccount (and an empty namespaced Role).
    let client = identity::with_rules(ns, name, Vec::new()).await;
    let cluster_name = format!("{ns}-{name}");
    let apply = PatchParams::apply("patchloop-attack-tests").force();
    let role: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": cluster_name},
        "rules": rules,
    }))
    .expect("a ClusterRole");
    Api::<ClusterRole>::all(admin.clone())
        .patch(&cluster_name, &apply, &Patch::Apply(&role))
        .await
        .expect("ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": cluster_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .expect("a ClusterRoleBinding");
    Api::<ClusterRoleBinding>::all(admin)
        .patch(&cluster_name, &apply, &Patch::Apply(&binding))
        .await
        .expect("ClusterRoleBinding");
    let feeds: Api<AdvisoryFeed> = Api::all(client.clone());
    support::eventually("the feed operator's RBAC", WAIT, async || {
        feeds.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
    client
}

/// What the attack server answers on each path.
struct Bodies {
    good: Vec<u8>,
    zip_bomb: Vec<u8>,
    wide_zip_bomb: Vec<u8>,
    gzip_bomb: Vec<u8>,
    http_base: String,
}

/// A zip of members each made of `MiB` mebibytes of spaces and a valid
/// (other-ecosystem) OSV record: well-formed, so only the size limits stop
/// them.
fn deflated_zip(members: &[(String, usize)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    let block = vec![b' '; 1 << 20];
    for (name, mib) in members {
        writer.start_file(name.as_str(), options).expect("member");
        for _ in 0..*mib {
            writer.write_all(&block).expect("write");
        }
        writer
            .write_all(br#"{"id": "PYSEC-0", "affected": [{"package": {"ecosystem": "PyPI", "name": "x"}}]}"#)
            .expect("write");
    }
    writer.finish().expect("zip").into_inner()
}

fn gzip_of_zeros(mib: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        enc.write_all(&block).expect("gzip");
    }
    enc.finish().expect("gzip")
}

/// Answers one plain-HTTP request on `stream` from `bodies`.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    bodies: &Bodies,
    tls: bool,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let fixed = |status: &str, extra: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let response = match (tls, path.as_str()) {
        (_, "/good.json") => fixed("200 OK", "", &bodies.good),
        (_, "/bomb.zip") => fixed("200 OK", "", &bodies.zip_bomb),
        (_, "/wide-bomb.zip") => fixed("200 OK", "", &bodies.wide_zip_bomb),
        (_, "/gzip-bomb.json") => fixed("200 OK", "Content-Encoding: gzip\r\n", &bodies.gzip_bomb),
        (_, "/huge.json") => {
            // 64 MiB, chunked: no Content-Length to refuse up front, the
            // cap must hold while streaming.
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await;
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..64 {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
            let _ = stream.shutdown().await;
            return;
        }
        (true, "/to-http") => fixed(
            "302 Found",
            &format!("Location: {}/good.json\r\n", bodies.http_base),
            b"",
        ),
        (true, "/to-http-permanent") => fixed(
            "308 Permanent Redirect",
            &format!("Location: {}/good.json\r\n", bodies.http_base),
            b"",
        ),
        _ => fixed("404 Not Found", "", b""),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// Starts the plain and the TLS server; returns their bases and the PEM of
/// the TLS server's self-signed certificate.
async fn servers(good: Vec<u8>) -> (String, String, String) {
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_base = format!("http://{}", plain.local_addr().expect("addr"));
    let https_base = format!("https://{}", tls_listener.local_addr().expect("addr"));
    let members: Vec<(String, usize)> = (0..24).map(|i| (format!("W-{i}.json"), 12)).collect();
    let bodies = Arc::new(Bodies {
        good,
        // One member of 256 MiB of spaces (about 256 KiB compressed), named
        // to look like an instruction.
        zip_bomb: deflated_zip(&[("apt-get install -y evil $(id).json".into(), 256)]),
        // 24 members of 12 MiB each: each under the member limit, 288 MiB
        // in all, over 16 × maxBytes of a 16 MiB feed.
        wide_zip_bomb: deflated_zip(&members),
        gzip_bomb: gzip_of_zeros(256),
        http_base: http_base.clone(),
    });
    let b = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = plain.accept().await {
            let b = Arc::clone(&b);
            tokio::spawn(async move { answer(stream, &b, false).await });
        }
    });
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
        .expect("self-signed certificate");
    let pem = pem_certificate(certified.cert.der());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = tls_listener.accept().await {
            let acceptor = acceptor.clone();
            let b = Arc::clone(&bodies);
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    answer(tls, &b, true).await;
                }
            });
        }
    });
    (http_base, https_base, pem)
}

/// A DER certificate as PEM (rcgen is built without its `pem` feature).
fn pem_certificate(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn feed_doc(
    name: &str,
    label: &str,
    url: &str,
    max_bytes: Option<i64>,
    ecosystems: &[&str],
) -> Value {
    let mut source = json!({"url": url, "timeout": "60s"});
    if let Some(max) = max_bytes {
        source["maxBytes"] = max.into();
    }
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
        "metadata": {"name": name, "labels": {"patchloop-test": label}},
        "spec": {"source": {"url": source}, "format": "OSV", "interval": "1h", "ecosystems": ecosystems},
    })
}

/// The controller's peak resident memory (`VmHWM`, KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

fn condition<'a>(
    status: &'a AdvisoryFeedStatus,
    kind: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == kind)
}

/// One attack: the URL, `maxBytes`, `ecosystems`, the reason expected and
/// words the message must hold.
type Attack<'a> = (String, Option<i64>, &'a [&'a str], &'a str, Vec<String>);

/// Words that must never reach a feed's status or Events from what the
/// attacker served: the bomb's member name, the redirect target.
const FORBIDDEN: &[&str] = &["apt-get", "install -y", "$(id)", "evil"];

#[tokio::test]
async fn a_feed_operator_cannot_exhaust_the_controller_or_downgrade_a_feed() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-feeds").await;
    let label = format!("attack-feeds-{}", support::random_suffix());

    // A namespaced user with every Patchloop verb in its namespace still
    // cannot write the cluster-scoped feeds.
    let tenant = identity::with_rules(
        &ns,
        "tenant",
        vec![identity::rule("patchloop.dev", &["*"], &["*"])],
    )
    .await;
    identity::assert_cannot_read_secrets(&tenant, &ns).await;
    let tenant_feeds: Api<AdvisoryFeed> = Api::all(tenant);
    let doc: AdvisoryFeed = serde_json::from_value(feed_doc(
        &format!("tenant-{label}"),
        &label,
        "https://127.0.0.1:9/x.json",
        None,
        &[],
    ))
    .expect("feed");
    match tenant_feeds.create(&PostParams::default(), &doc).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("a namespaced user wrote an AdvisoryFeed: {other:?}"),
    }

    let operator = with_cluster_rules(
        &ns,
        "feed-operator",
        vec![identity::rule(
            "patchloop.dev",
            &["advisoryfeeds"],
            &["get", "list", "watch", "create", "update", "patch"],
        )],
    )
    .await;
    identity::assert_cannot_read_secrets(&operator, &ns).await;

    let mut records = Vec::new();
    for f in ["osv/debian/DSA-5497-1.json", "osv/debian/DSA-5863-1.json"] {
        let text = std::fs::read(format!("{FIXTURES}/{f}")).expect("fixture");
        records.push(serde_json::from_slice::<Value>(&text).expect("JSON"));
    }
    let good = serde_json::to_vec(&records).expect("JSON");
    let (http_base, https_base, pem) = servers(good).await;
    let ca = tempfile::NamedTempFile::new().expect("CA file");
    std::fs::write(ca.path(), pem).expect("CA file");
    let ca_path = ca.path().display().to_string();
    // The controller trusts the test server's certificate (as a real one
    // trusts a public CA), so the https legs succeed and only the
    // downgrade is refused.
    let controller = Patchloop::spawn(
        env,
        &ns,
        &label,
        &[],
        &[("SSL_CERT_FILE", ca_path.as_str())],
    );
    controller.ready().await;

    let name = format!("feed-{label}");
    let feeds: Api<AdvisoryFeed> = Api::all(operator.clone());
    // Results are read as the admin (the operator's role has no status).
    let results: Api<AdvisoryFeed> = Api::all(admin.clone());
    let write = |doc: Value| {
        let feeds = feeds.clone();
        let name = name.clone();
        async move {
            feeds
                .patch(
                    &name,
                    &PatchParams::apply("feed-operator").force(),
                    &Patch::Apply(doc),
                )
                .await
                .expect("the operator writes the feed")
        }
    };
    // The last good data: over https.
    let written = write(feed_doc(
        &name,
        &label,
        &format!("{https_base}/good.json"),
        None,
        &[],
    ))
    .await;
    let generation = written.metadata.generation.expect("generation");
    let status = support::eventually("the good feed to load", WAIT, async || {
        let s = results.get_status(&name).await.ok()?.status?;
        (s.observed_generation == Some(generation)
            && condition(&s, "Ready").is_some_and(|c| c.status == "True"))
        .then_some(s)
    })
    .await;
    assert_eq!(status.advisories, 2);
    let good_digest = status.content_digest.clone();

    let debian: &[&str] = &["Debian:12"];
    let cases: Vec<Attack> = vec![
        (
            format!("{http_base}/bomb.zip"),
            None,
            &[],
            "TooLarge",
            vec!["archive member larger than the limit of 16777216 bytes".into()],
        ),
        (
            format!("{https_base}/bomb.zip"),
            Some(8 << 20),
            &[],
            "TooLarge",
            vec![
                "archive member larger than the limit of 16777216 bytes".into(),
                "member #1".into(),
            ],
        ),
        (
            format!("{http_base}/wide-bomb.zip"),
            Some(16 << 20),
            debian,
            "TooLarge",
            vec!["more than the limit of 268435456 bytes".into()],
        ),
        (
            format!("{http_base}/huge.json"),
            None,
            &[],
            "TooLarge",
            vec![format!("larger than the limit of {} bytes", 48 << 20)],
        ),
        (
            format!("{http_base}/gzip-bomb.json"),
            Some(32 << 20),
            &[],
            "TooLarge",
            vec![format!("larger than the limit of {} bytes", 32 << 20)],
        ),
        (
            format!("{https_base}/to-http"),
            None,
            &[],
            "Redirect",
            vec!["from https to http".into()],
        ),
        (
            format!("{https_base}/to-http-permanent"),
            None,
            &[],
            "Redirect",
            vec!["downgrade to plain http is refused".into()],
        ),
    ];
    for (url, max_bytes, ecosystems, reason, words) in cases {
        let written = write(feed_doc(&name, &label, &url, max_bytes, ecosystems)).await;
        let generation = written.metadata.generation.expect("generation");
        let status = support::eventually(&format!("{url} to be refused"), WAIT, async || {
            let s = results.get_status(&name).await.ok()?.status?;
            let degraded = condition(&s, "Degraded")?;
            (s.observed_generation == Some(generation) && degraded.status == "True").then_some(s)
        })
        .await;
        let degraded = condition(&status, "Degraded").expect("Degraded");
        assert_eq!(degraded.reason, reason, "{url}: {degraded:?}");
        for w in &words {
            assert!(
                degraded.message.contains(w.as_str()),
                "{url}: {:?} lacks {w:?}",
                degraded.message
            );
        }
        assert!(
            degraded.message.ends_with("the last good data is kept"),
            "{url}: {}",
            degraded.message
        );
        // The last good data is still served.
        let ready = condition(&status, "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Loaded"),
            "{url}"
        );
        assert_eq!(status.advisories, 2, "{url}");
        assert_eq!(status.content_digest, good_digest, "{url}");
        // Nothing the attacker served is repeated, nor where it pointed.
        for text in [&degraded.message, &ready.message] {
            for f in FORBIDDEN {
                assert!(!text.contains(f), "{url}: {text:?} repeats {f:?}");
            }
            assert!(
                !text.contains(&format!("{http_base}/good.json")) || url.starts_with(&http_base),
                "{url}: {text}"
            );
        }
        // Up, answering, and within its memory bound.
        let health = controller.get("/healthz").await;
        assert_eq!(health.map(|(code, _)| code), Some(200), "{url}");
        let peak = peak_rss_kib(controller.child.id());
        assert!(
            peak < RSS_BOUND_KIB,
            "{url}: the controller's peak RSS reached {peak} KiB"
        );
    }
    eprintln!(
        "controller peak RSS over every attack: {} KiB",
        peak_rss_kib(controller.child.id())
    );
    // The http leg of the refused redirects was never fetched in the clear
    // after the first (https) load: the data still carries its https digest.
    let loaded = controller
        .metric(&format!(
            "patchloop_feed_advisories{{feed=\"{name}\",ecosystem=\"Debian:12\"}}"
        ))
        .await;
    assert_eq!(loaded, 2.0);
}
