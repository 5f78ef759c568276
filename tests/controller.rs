//! `patchloop run` against a real Kubernetes 1.20.2 control plane: feeds,
//! inventories, Workload compliance, PatchPolicy and PatchException status.

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use patchloop::api::policy::TemplateApproval;
use patchloop::api::{PatchException, PatchPolicy, Workload};
use serde_json::{Value, json};
use support::objects::*;
use support::patchloop::{Counters, Patchloop};

#[tokio::test]
async fn a_real_advisory_yields_exact_findings_and_a_fixed_inventory_clears_them() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("compliance").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({"tier": "gold"}), 100)).await;
    apply(&client, &ns, workload("web-01", json!({"tier": "gold"}))).await;
    apply(&client, &ns, workload_inventory("web-01", OLD_GLIBC)).await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;

    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let status = support::eventually("web-01 to be Overdue", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| in_state(s, "Overdue"))
    })
    .await;
    let ids: Vec<&str> = status.findings.iter().map(|f| &*f.advisory).collect();
    // Both the DSA and the Debian CVE record, earliest due first (the DSA
    // was published hours before the CVE record).
    assert_eq!(ids, ["DSA-5514-1", "CVE-2023-4911"]);
    let dsa = &status.findings[0];
    assert!(dsa.known_exploited);
    assert_eq!(dsa.due_by.as_deref(), Some("gold"));
    let packages: Vec<(&str, Option<&str>)> = dsa
        .packages
        .iter()
        .map(|p| (&*p.name, p.fixed.as_deref()))
        .collect();
    assert_eq!(
        packages,
        [
            ("libc-bin", Some("2.36-9+deb12u3")),
            ("libc6", Some("2.36-9+deb12u3"))
        ]
    );
    assert_eq!(condition(&status.conditions, "Compliant"), Some("False"));
    assert_eq!(condition(&status.conditions, "Ready"), Some("True"));
    assert_eq!(
        condition(&status.conditions, "InventoryFresh"),
        Some("True")
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.policies, ["gold"]);

    apply(&client, &ns, workload_inventory("web-01", FIXED_GLIBC)).await;
    let status = support::eventually("web-01 to be Compliant", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| condition(&s.conditions, "Compliant") == Some("True"))
    })
    .await;
    assert!(status.findings.is_empty());

    // kubectl wait works on every kind this controller reconciles.
    for target in [
        "workload/web-01",
        "patchpolicy/gold",
        "inventory/workload-web-01",
    ] {
        let out = env.kubectl([
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "--timeout=60s",
            target,
        ]);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.kubectl([
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        &format!("advisoryfeed/osv-{label}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let feeds: Api<patchloop::api::AdvisoryFeed> = Api::all(client.clone());
    let feed = feeds.get(&format!("osv-{label}")).await.expect("feed");
    let fs = feed.status.expect("feed status");
    assert_eq!(fs.advisories, 19);
    assert!(
        fs.ecosystems
            .iter()
            .any(|e| e.name == "Debian:12" && e.advisories > 5),
        "{:?}",
        fs.ecosystems
    );
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    let gold = support::eventually("policy counts", WAIT, async || {
        policies
            .get_status("gold")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.workloads)
            .filter(|w| w.compliant == 1)
    })
    .await;
    assert_eq!((gold.matched, gold.compliant, gold.overdue), (1, 1, 0));
    drop(pl);
}

#[tokio::test]
async fn equal_priorities_conflict_on_both_policies_and_the_workload() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("conflict").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("alpha", json!({"app": "shop"}), 10)).await;
    apply(&client, &ns, policy("beta", json!({"tier": "gold"}), 10)).await;
    apply(
        &client,
        &ns,
        workload("web-02", json!({"app": "shop", "tier": "gold"})),
    )
    .await;
    apply(&client, &ns, workload_inventory("web-02", FIXED_GLIBC)).await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;

    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let status = support::eventually("Conflict on web-02", WAIT, async || {
        workload_status(&workloads, "web-02")
            .await
            .filter(|s| condition(&s.conditions, "Conflict") == Some("True"))
    })
    .await;
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Conflict")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("alpha, beta"), "{message}");
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    for (name, rival) in [("alpha", "beta"), ("beta", "alpha")] {
        let st = support::eventually(&format!("Conflict on {name}"), WAIT, async || {
            policies
                .get_status(name)
                .await
                .ok()
                .and_then(|p| p.status)
                .filter(|s| condition(&s.conditions, "Conflict") == Some("True"))
        })
        .await;
        let msg = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(msg.contains(rival), "{msg}");
    }
}

#[tokio::test]
async fn an_exception_stops_exempting_when_it_expires() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("expiry").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({"tier": "gold"}), 1)).await;
    apply(
        &client,
        &ns,
        workload("erp-01", json!({"tier": "gold", "app": "erp"})),
    )
    .await;
    apply(&client, &ns, workload_inventory("erp-01", OLD_GLIBC)).await;
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(20))
        .expect("time");
    let expires = jiff::Timestamp::from_second(expires.as_second()).expect("time");
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchException",
            "metadata": {"name": "erp-glibc"},
            "spec": {"advisories": ["CVE-2023-4911"], "selector": {"matchLabels": {"app": "erp"}},
                     "reason": "vendor certification pending", "approvedBy": "security-team",
                     "expires": expires.to_string()}
        }),
    )
    .await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let status = support::eventually("erp-01 Exempt", WAIT, async || {
        workload_status(&workloads, "erp-01")
            .await
            .filter(|s| in_state(s, "Exempt"))
    })
    .await;
    assert!(
        status
            .findings
            .iter()
            .all(|f| f.exempted_by.as_deref() == Some("erp-glibc"))
    );
    let exceptions: Api<PatchException> = Api::namespaced(client.clone(), &ns);
    // The exception counts the Workload once its cache shows the Workload's
    // status: eventually, not at once.
    let ex = support::eventually("erp-glibc to count erp-01", WAIT, async || {
        exceptions
            .get_status("erp-glibc")
            .await
            .ok()
            .and_then(|e| e.status)
            .filter(|s| s.matched_workloads == 1)
    })
    .await;
    assert_eq!(condition(&ex.conditions, "Active"), Some("True"));
    let out = env.kubectl([
        "wait",
        "-n",
        &ns,
        "--for=condition=Ready",
        "--timeout=60s",
        "patchexception/erp-glibc",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // After the expiry (no polling: the controller requeued at that instant).
    let status = support::eventually(
        "erp-01 Overdue after the expiry",
        Duration::from_secs(90),
        async || {
            workload_status(&workloads, "erp-01")
                .await
                .filter(|s| in_state(s, "Overdue"))
        },
    )
    .await;
    assert!(jiff::Timestamp::now() >= expires);
    assert!(status.findings.iter().all(|f| f.exempted_by.is_none()));
    let ex = support::eventually("the exception to say Expired", WAIT, async || {
        exceptions
            .get_status("erp-glibc")
            .await
            .ok()
            .and_then(|e| e.status)
            .filter(|s| condition(&s.conditions, "Active") == Some("False"))
    })
    .await;
    assert_eq!(
        ex.conditions
            .iter()
            .find(|c| c.type_ == "Active")
            .map(|c| c.reason.as_str()),
        Some("Expired")
    );
}

/// A tiny HTTP/1.1 server for feed tests: serves the current body with an
/// ETag, answers 304 to a matching If-None-Match, and counts requests.
mod feed_server {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    pub struct State {
        pub body: Vec<u8>,
        pub etag: String,
        pub requests: usize,
        pub not_modified: usize,
    }

    pub async fn start(state: Arc<Mutex<State>>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let request = String::from_utf8_lossy(&buf[..len]).to_lowercase();
                    let response = {
                        let mut s = state.lock().expect("state");
                        s.requests += 1;
                        let etag = format!("\"{}\"", s.etag);
                        if request.contains(&format!("if-none-match: {}", etag.to_lowercase())) {
                            s.not_modified += 1;
                            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n").into_bytes()
                        } else {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                s.body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(&s.body);
                            r
                        }
                    };
                    let _ = sock.write_all(&response).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        port
    }
}

fn osv_record(id: &str, package: &str, fixed: &str, published: jiff::Timestamp) -> Value {
    json!({
        "schema_version": "1.6.0", "id": id,
        "published": published.to_string(), "modified": published.to_string(),
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [{
            "package": {"ecosystem": "Debian:12", "name": package},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]
        }]
    })
}

async fn resource_version(api: &Api<Workload>, name: &str) -> String {
    api.get(name)
        .await
        .ok()
        .and_then(|w| w.metadata.resource_version)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_http_feed_change_reevaluates_only_affected_workloads_and_bad_data_is_kept_out() {
    use std::sync::{Arc, Mutex};
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("http-feed").await;
    let label = support::random_suffix();
    let published = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 30);
    let state = Arc::new(Mutex::new(feed_server::State {
        body: serde_json::to_vec(&json!([osv_record(
            "DSA-9100-1",
            "openssl",
            "3.0.15-1~deb12u2",
            published
        )]))
        .expect("json"),
        etag: "v1".into(),
        ..Default::default()
    }));
    let port = feed_server::start(Arc::clone(&state)).await;
    apply(&client, "", json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
        "metadata": {"name": format!("http-{label}"), "labels": {"patchloop-test": label}},
        "spec": {"source": {"url": {"url": format!("http://127.0.0.1:{port}/osv.json"), "timeout": "5s"}},
                 "format": "OSV", "interval": "2s", "maxDropPercent": 50}
    }))
    .await;
    apply(&client, &ns, policy("gold", json!({}), 1)).await;
    let openssl = [
        "libssl3 3.0.15-1~deb12u1 openssl",
        "openssl 3.0.15-1~deb12u1",
    ];
    let zlib = ["zlib1g 1:1.2.13.dfsg-1 zlib"];
    for (name, pkgs) in [
        ("ssl-1", &openssl[..]),
        ("ssl-2", &openssl[..]),
        ("zlib-1", &zlib[..]),
        ("zlib-2", &zlib[..]),
    ] {
        apply(&client, &ns, workload(name, json!({"app": name}))).await;
        apply(&client, &ns, workload_inventory(name, pkgs)).await;
    }
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let state_of = async |name: &str| {
        workload_status(&workloads, name)
            .await
            .and_then(|s| s.compliance)
            .and_then(|c| c.state)
            .map(|s| s.to_string())
    };
    support::eventually(
        "openssl workloads Overdue, zlib ones Compliant",
        WAIT,
        async || {
            let all = [
                state_of("ssl-1").await,
                state_of("ssl-2").await,
                state_of("zlib-1").await,
                state_of("zlib-2").await,
            ];
            (all == [
                Some("Overdue".into()),
                Some("Overdue".into()),
                Some("Compliant".into()),
                Some("Compliant".into()),
            ])
            .then_some(())
        },
    )
    .await;

    // Conditional requests: the unchanged feed is answered 304.
    support::eventually("a 304 answer", WAIT, async || {
        (state.lock().expect("state").not_modified >= 2).then_some(())
    })
    .await;

    // A new zlib advisory: only the zlib Workloads are re-evaluated. The
    // versions before it are taken once all four have been reconciled
    // again, so that none is still being written.
    let all = ["ssl-1", "ssl-2", "zlib-1", "zlib-2"];
    pl.wake_and_count(&client, &ns, "gold", "workload", 4).await;
    let before: Vec<String> =
        futures::future::join_all(all.map(|n| resource_version(&workloads, n))).await;
    {
        let mut s = state.lock().expect("state");
        s.body = serde_json::to_vec(&json!([
            osv_record("DSA-9100-1", "openssl", "3.0.15-1~deb12u2", published),
            osv_record("DSA-9101-1", "zlib", "1:1.2.13.dfsg-1+deb12u1", published),
        ]))
        .expect("json");
        s.etag = "v2".into();
    }
    support::eventually("zlib workloads Overdue", WAIT, async || {
        let all = [state_of("zlib-1").await, state_of("zlib-2").await];
        (all == [Some("Overdue".into()), Some("Overdue".into())]).then_some(())
    })
    .await;
    // Every Workload reconciled with the new data: a write to an openssl
    // one would have happened by now.
    pl.wake_and_count(&client, &ns, "gold", "workload", 4).await;
    let after: Vec<String> =
        futures::future::join_all(all.map(|n| resource_version(&workloads, n))).await;
    assert_eq!(
        before[..2],
        after[..2],
        "the openssl Workloads were not touched"
    );
    assert_ne!(before[2], after[2]);
    assert_ne!(before[3], after[3]);

    // Malformed content: findings unchanged, Degraded with the error.
    {
        let mut s = state.lock().expect("state");
        s.body = b"{\"id\": \"DSA-9102-1\", \"affected\": [".to_vec();
        s.etag = "v3".into();
    }
    let feeds: Api<patchloop::api::AdvisoryFeed> = Api::all(client.clone());
    let feed_name = format!("http-{label}");
    let fs = support::eventually("the feed to be Degraded", WAIT, async || {
        feeds
            .get_status(&feed_name)
            .await
            .ok()
            .and_then(|f| f.status)
            .filter(|s| condition(&s.conditions, "Degraded") == Some("True"))
    })
    .await;
    let degraded = fs
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert!(
        degraded.message.contains("last good data is kept"),
        "{}",
        degraded.message
    );
    assert_eq!(condition(&fs.conditions, "Ready"), Some("True"));
    assert_eq!(fs.advisories, 2, "the last good data is still counted");
    // A suspect drop (2 → 0 advisories) is also kept out.
    {
        let mut s = state.lock().expect("state");
        s.body = b"[]".to_vec();
        s.etag = "v4".into();
    }
    let fs = support::eventually("the drop to be refused", WAIT, async || {
        feeds
            .get_status(&feed_name)
            .await
            .ok()
            .and_then(|f| f.status)
            .filter(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.reason == "SuspectDrop")
            })
    })
    .await;
    assert_eq!(fs.advisories, 2);
    assert_eq!(state_of("zlib-1").await.as_deref(), Some("Overdue"));
    assert_eq!(state_of("ssl-1").await.as_deref(), Some("Overdue"));
    drop(pl);
}

#[tokio::test]
async fn a_due_date_passing_makes_a_finding_overdue_without_polling() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("due").await;
    let label = support::random_suffix();
    // Published so that a 1h deadline passes 25 s from now.
    let published = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600 - 25);
    let published = jiff::Timestamp::from_second(published.as_second()).expect("time");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("DSA-9200-1.json"),
        serde_json::to_vec(&osv_record(
            "DSA-9200-1",
            "openssl",
            "3.0.15-1~deb12u2",
            published,
        ))
        .expect("json"),
    )
    .expect("write");
    apply(
        &client,
        "",
        feed(
            &format!("due-{label}"),
            &label,
            "OSV",
            &dir.path().to_string_lossy(),
        ),
    )
    .await;
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
            "metadata": {"name": "fast"},
            "spec": {"selector": {}, "deadlines": {"high": "1h"}, "inventoryMaxAge": "30d"}
        }),
    )
    .await;
    apply(&client, &ns, workload("db-01", json!({}))).await;
    apply(
        &client,
        &ns,
        workload_inventory("db-01", &["libssl3 3.0.15-1~deb12u1 openssl"]),
    )
    .await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let pending = support::eventually("db-01 Pending", WAIT, async || {
        workload_status(&workloads, "db-01")
            .await
            .filter(|s| in_state(s, "Pending"))
    })
    .await;
    let due = pending.findings[0].due.as_ref().map(|t| t.0).expect("due");
    assert_eq!(due, published + jiff::SignedDuration::from_secs(3600));

    // Nothing changes until then: the reconcile counter stays flat. The
    // baseline waits out the start-up wakes (feeds settling, the policy's
    // first pass), which no counter marks the end of; what follows is itself
    // about time passing (no polling before the due date).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reconciles = pl
        .metric("patchloop_reconciles_total{controller=\"workload\"}")
        .await;
    let writes = pl
        .metric("patchloop_status_writes_total{controller=\"workload\"}")
        .await;
    let rv = resource_version(&workloads, "db-01").await;
    let until_due = due.as_second() - jiff::Timestamp::now().as_second() - 3;
    if until_due > 0 {
        tokio::time::sleep(Duration::from_secs(u64::try_from(until_due).unwrap_or(0))).await;
        assert_eq!(
            pl.metric("patchloop_reconciles_total{controller=\"workload\"}")
                .await,
            reconciles,
            "no polling while nothing changes"
        );
        assert_eq!(
            resource_version(&workloads, "db-01").await,
            rv,
            "no status write while nothing changes"
        );
    }
    let overdue = support::eventually(
        "db-01 Overdue at the due date",
        Duration::from_secs(30),
        async || {
            workload_status(&workloads, "db-01")
                .await
                .filter(|s| in_state(s, "Overdue"))
        },
    )
    .await;
    assert!(jiff::Timestamp::now() >= due);
    let became = overdue
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .map(|c| c.last_transition_time.0);
    assert!(became.is_some());
    assert_eq!(
        pl.metric("patchloop_status_writes_total{controller=\"workload\"}")
            .await,
        writes + 1.0,
        "exactly one status write at the transition"
    );
}

#[tokio::test]
async fn a_restart_without_advisory_data_keeps_compliance_for_the_grace_period_then_unknown() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("grace").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({}), 1)).await;
    apply(&client, &ns, workload("app-01", json!({}))).await;
    apply(&client, &ns, workload_inventory("app-01", OLD_GLIBC)).await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    support::eventually("app-01 Overdue", WAIT, async || {
        workload_status(&workloads, "app-01")
            .await
            .filter(|s| in_state(s, "Overdue"))
    })
    .await;
    drop(pl);
    let before = workload_status(&workloads, "app-01").await.expect("status");
    let rv = resource_version(&workloads, "app-01").await;

    // Restart with the feed gone (it would be unreachable): a 20 s grace.
    let feeds: Api<patchloop::api::AdvisoryFeed> = Api::all(client.clone());
    for f in [format!("osv-{label}"), format!("kev-{label}")] {
        feeds
            .delete(&f, &Default::default())
            .await
            .expect("delete feed");
    }
    let started = std::time::Instant::now();
    let pl = Patchloop::start(env, &ns, &label, &["--grace-period", "20s"]).await;
    apply(&client, &ns, workload("app-02", json!({}))).await;
    let st = support::eventually("app-02 Ready during the grace period", WAIT, async || {
        workload_status(&workloads, "app-02")
            .await
            .filter(|s| condition(&s.conditions, "Ready") == Some("True"))
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "Ready is never held back"
    );
    assert_eq!(st.observed_generation, Some(1));
    // app-01 reconciled again inside the grace period, without advisory data.
    pl.wake_and_count(&client, &ns, "gold", "workload", 2).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "checked inside the grace period"
    );
    assert_eq!(
        resource_version(&workloads, "app-01").await,
        rv,
        "zero compliance changes during the grace period"
    );
    let after = support::eventually("app-01 Unknown after the grace period", WAIT, async || {
        workload_status(&workloads, "app-01")
            .await
            .filter(|s| in_state(s, "Unknown"))
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(19));
    let compliant = after
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .expect("Compliant");
    assert_eq!(
        (compliant.status.as_str(), compliant.reason.as_str()),
        ("Unknown", "NoAdvisoryData")
    );
    assert_ne!(before.compliance, after.compliance);
}

#[tokio::test]
async fn a_controller_restart_loses_nothing_and_changes_nothing() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("restart").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({}), 1)).await;
    for i in 0..5 {
        let name = format!("node-{i}");
        apply(&client, &ns, workload(&name, json!({}))).await;
        apply(
            &client,
            &ns,
            workload_inventory(&name, if i % 2 == 0 { OLD_GLIBC } else { FIXED_GLIBC }),
        )
        .await;
    }
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    support::eventually("all evaluated and counted", WAIT, async || {
        policies
            .get_status("gold")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.workloads)
            .filter(|w| w.overdue == 3 && w.compliant == 2)
            .map(|_| ())
    })
    .await;
    // The snapshot is taken once every Workload and the policy have been
    // reconciled again: none is still being written.
    let policy_pass = pl.counters("policy").await;
    pl.wake_and_count(&client, &ns, "gold", "workload", 5).await;
    pl.reconciled_after("policy", &policy_pass, 1).await;
    let names: Vec<String> = (0..5).map(|i| format!("node-{i}")).collect();
    let snapshot = async || {
        let mut v =
            futures::future::join_all(names.iter().map(|n| resource_version(&workloads, n))).await;
        v.push(
            policies
                .get("gold")
                .await
                .ok()
                .and_then(|p| p.metadata.resource_version)
                .unwrap_or_default(),
        );
        v
    };
    let before = snapshot().await;
    drop(pl);
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    // The restarted controller's pass over every Workload and the policy
    // (it starts from zero): what it would write is written once counted.
    let started = Counters::default();
    pl.reconciled_after("workload", &started, 5).await;
    pl.reconciled_after("policy", &started, 1).await;
    assert_eq!(snapshot().await, before, "a restart writes nothing");
    assert_eq!(
        pl.metric("patchloop_status_writes_total{controller=\"workload\"}")
            .await,
        0.0
    );
}

/// `metadata.generation`, `status.observedGeneration` and the `Ready`
/// condition's status and `observedGeneration` of any Patchloop object.
fn generations(obj: &DynamicObject) -> (Option<i64>, Option<i64>, Option<&str>, Option<i64>) {
    let status = &obj.data["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    (
        obj.metadata.generation,
        status["observedGeneration"].as_i64(),
        ready.and_then(|c| c["status"].as_str()),
        ready.and_then(|c| c["observedGeneration"].as_i64()),
    )
}

/// Waits until the object is Ready for exactly its current generation.
async fn ready_for_its_generation(api: &Api<DynamicObject>, what: &str) -> i64 {
    support::eventually(
        &format!("{what} Ready with its generation observed"),
        WAIT,
        async || {
            let obj = api.get(what.rsplit('/').next()?).await.ok()?;
            match generations(&obj) {
                (Some(g), Some(o), Some("True"), Some(c)) if o == g && c == g => Some(g),
                _ => None,
            }
        },
    )
    .await
}

/// kstatus, which Argo CD and Flux use to judge health: every kind reports
/// `Ready` and the generation it has seen, and an edited spec is observed
/// (both `status.observedGeneration` and the condition's bumped) — open and
/// closed ChangeRequests included.
#[tokio::test]
async fn every_kind_observes_each_edit_of_its_spec() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("kstatus").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({"tier": "gold"}), TemplateApproval::Required),
    )
    .await;
    apply(
        &client,
        &ns,
        workload("web-01", json!({"tier": "gold", "app": "erp"})),
    )
    .await;
    apply(&client, &ns, workload_inventory("web-01", OLD_GLIBC)).await;
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchException",
            "metadata": {"name": "web-glibc"},
            "spec": {"advisories": ["CVE-2023-4911"], "selector": {"matchLabels": {"app": "erp"}},
                     "reason": "vendor certification pending", "approvedBy": "security-team",
                     "expires": "2099-01-01T00:00:00Z"}
        }),
    )
    .await;
    apply(&client, &ns, template("base", json!({"tier": "gold"}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", OLD_GLIBC, "2026-11-24T08:00:00Z"),
    )
    .await;
    // A request for a Template that does not exist closes at once (Failed).
    apply(
        &client,
        &ns,
        json!({"apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
               "metadata": {"name": "by-hand"}, "spec": {"template": "ghost"}}),
    )
    .await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let open = support::eventually("the Template's request to open", WAIT, async || {
        requests(&client, &ns, "base")
            .await
            .into_iter()
            .next()
            .and_then(|c| c.metadata.name)
    })
    .await;

    let decision = json!({"decision": {"verdict": "Approved", "digest": "0".repeat(64),
                                       "reason": "an approval for another scope"}});
    let test_job = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "smoke-test", "image": "registry.example/tools/image-builder:1",
         "command": ["/bin/sh", "-c", "smoke-test --wait-for sshd"]}
    ]}}}});
    let edits = [
        (
            "AdvisoryFeed",
            format!("osv-{label}"),
            json!({"interval": "2h"}),
        ),
        (
            "PatchPolicy",
            "gold".to_owned(),
            json!({"deadlines": {"low": "60d"}}),
        ),
        (
            "PatchException",
            "web-glibc".to_owned(),
            json!({"reason": "re-certification booked"}),
        ),
        (
            "Workload",
            "web-01".to_owned(),
            json!({"target": {"address": "10.0.0.2"}}),
        ),
        (
            "Inventory",
            "workload-web-01".to_owned(),
            json!({"reporter": "test-2"}),
        ),
        (
            "Template",
            "base".to_owned(),
            json!({"testJobTemplate": test_job}),
        ),
        ("ChangeRequest", open, decision.clone()),
        ("ChangeRequest", "by-hand".to_owned(), decision),
    ];
    for (kind, name, spec) in edits {
        let api = api_of(&client, &ns, kind);
        let what = format!("{kind}/{name}");
        let before = ready_for_its_generation(&api, &what).await;
        let edited = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap_or_else(|e| panic!("editing {what}: {e}"));
        let after = edited.metadata.generation.expect("a generation");
        assert!(
            after > before,
            "{what}: the edit did not bump the generation"
        );
        assert_eq!(ready_for_its_generation(&api, &what).await, after, "{what}");
    }
}
