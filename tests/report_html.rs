//! The HTML fleet report (`patchloop report -o html`) as a browser renders it:
//! a realistic report is rendered by headless Chromium (Debian's `chromium`,
//! installed by `scripts/browser.sh`, which `make test` runs), and the page
//! it lays out must show every count, the overdue Workloads, the stale
//! templates and charts whose sizes follow the counts. A screenshot must come
//! out as a real image.
//!
//! A missing or failing browser is a test failure, never a skip.
//! `PATCHLOOP_CHROMIUM` overrides the browser path; set
//! `PATCHLOOP_REPORT_SCREENSHOT=<file.png>` to keep the screenshot.

#[path = "support/process.rs"]
#[allow(dead_code)]
mod process;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use patchloop::api::{PatchPolicy, Template, Workload};
use patchloop::report::{self, BAR_UNITS, FleetReport};
use serde_json::{Value, json};

const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- the fleet

fn workload(
    ns: &str,
    name: &str,
    platform: &str,
    state: &str,
    (overdue, pending, exempt): (i32, i32, i32),
    template: Value,
    phase: Option<&str>,
) -> Workload {
    let remediation = phase.map_or(Value::Null, |p| json!({"phase": p, "attempt": 1}));
    serde_json::from_value(json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"platform": platform},
        "status": {
            "compliance": {"state": state, "overdue": overdue, "pending": pending, "exempt": exempt},
            "template": template,
            "remediation": remediation,
        }
    }))
    .expect("a valid Workload")
}

fn template_ref(name: &str, revision: i64, latest: i64) -> Value {
    json!({"name": name, "revision": revision, "latest": latest, "current": revision == latest})
}

fn template(
    ns: &str,
    name: &str,
    revision: i64,
    state: &str,
    cr: Option<&str>,
    stale: i32,
) -> Template {
    serde_json::from_value(json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Template",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"platform": "Debian:12", "image": "registry.example/base:12"},
        "status": {"revision": revision, "compliance": {"state": state},
                   "changeRequest": cr, "staleWorkloads": stale}
    }))
    .expect("a valid Template")
}

fn policy(
    ns: &str,
    name: &str,
    mode: &str,
    counts: Value,
    paused: bool,
    window: Option<&str>,
) -> PatchPolicy {
    let rollout = if paused {
        json!({"failures": 3, "pausedAt": "2026-11-23T22:10:00Z"})
    } else {
        json!({"failures": 0})
    };
    serde_json::from_value(json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"patchloop.dev/fleet": ns}},
                 "remediation": {"mode": mode}},
        "status": {"workloads": counts, "rollout": rollout, "nextWindow": window}
    }))
    .expect("a valid PatchPolicy")
}

/// Thirteen Workloads in two namespaces: Overdue 3, Unknown 2, Pending 3,
/// Exempt 1, Compliant 4; two Templates (one with stale Workloads and an
/// open ChangeRequest); two PatchPolicies (one paused).
fn fleet() -> FleetReport {
    let base = |rev| template_ref("base", rev, 3);
    let pay = || template_ref("pay-base", 5, 5);
    let workloads = [
        workload(
            "fleet",
            "web-01",
            "Debian:12",
            "Overdue",
            (3, 1, 0),
            base(1),
            Some("BackingOff"),
        ),
        workload(
            "fleet",
            "web-02",
            "Debian:12",
            "Overdue",
            (1, 0, 0),
            base(3),
            Some("Failed"),
        ),
        workload(
            "fleet",
            "web-03",
            "Debian:12",
            "Pending",
            (0, 2, 0),
            base(3),
            None,
        ),
        workload(
            "fleet",
            "web-04",
            "Debian:12",
            "Pending",
            (0, 1, 0),
            base(2),
            None,
        ),
        workload(
            "fleet",
            "web-05",
            "Debian:12",
            "Compliant",
            (0, 0, 0),
            base(3),
            Some("Verified"),
        ),
        workload(
            "fleet",
            "web-06",
            "Debian:12",
            "Compliant",
            (0, 0, 0),
            base(3),
            None,
        ),
        workload(
            "fleet",
            "cache-01",
            "Debian:12",
            "Compliant",
            (0, 0, 0),
            Value::Null,
            None,
        ),
        workload(
            "fleet",
            "legacy-01",
            "Debian:10",
            "Unknown",
            (0, 0, 0),
            Value::Null,
            None,
        ),
        workload(
            "payments",
            "pay-api-01",
            "Debian:12",
            "Overdue",
            (7, 2, 0),
            pay(),
            Some("Running"),
        ),
        workload(
            "payments",
            "pay-api-02",
            "Debian:12",
            "Compliant",
            (0, 0, 0),
            pay(),
            None,
        ),
        workload(
            "payments",
            "pay-db-01",
            "Debian:12",
            "Pending",
            (0, 4, 1),
            pay(),
            Some("Verifying"),
        ),
        workload(
            "payments",
            "batch-07",
            "Debian:12",
            "Unknown",
            (2, 0, 0),
            pay(),
            None,
        ),
        workload(
            "payments",
            "pay-legacy",
            "Debian:11 <legacy & \"frozen\">",
            "Exempt",
            (0, 0, 3),
            Value::Null,
            None,
        ),
    ];
    let templates = [
        template("fleet", "base", 3, "Pending", Some("base-r4"), 2),
        template("payments", "pay-base", 5, "Compliant", None, 0),
    ];
    let policies = [
        policy(
            "fleet",
            "standard",
            "Remediate",
            json!({"matched": 8, "compliant": 3, "pending": 2, "overdue": 2, "exempt": 0,
                   "unknown": 1, "remediating": 1, "failed": 1, "staleTemplate": 2}),
            false,
            Some("2026-11-24T22:00:00Z"),
        ),
        policy(
            "payments",
            "pci",
            "Report",
            json!({"matched": 5, "compliant": 1, "pending": 1, "overdue": 1, "exempt": 1,
                   "unknown": 1, "remediating": 1, "failed": 0}),
            true,
            None,
        ),
    ];
    report::build(
        &workloads,
        &templates,
        &policies,
        "2026-11-24T08:00:00Z".parse().expect("a timestamp"),
    )
}

// ----------------------------------------------------------------- Chromium

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATCHLOOP_CHROMIUM")
        .map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
    assert!(
        path.is_file(),
        "headless Chromium is not installed at {}: run scripts/browser.sh (`make test` does), \
         or point PATCHLOOP_CHROMIUM at a Chromium binary",
        path.display()
    );
    path
}

/// Writes the report's HTML into `dir` and runs headless Chromium on it with
/// `args` and a fresh profile; returns its stdout. Failing to start, a
/// non-zero exit or a hang is a panic that shows the browser's stderr.
fn run_chromium(dir: &Path, html: &str, args: &[String]) -> String {
    let page = dir.join("report.html");
    fs::write(&page, html).expect("write report.html");
    let profile = tempfile::tempdir_in(dir).expect("a fresh Chromium profile directory");
    let stdout_path = dir.join(format!("chromium-{}.stdout", process::random_hex(4)));
    let stderr_path = stdout_path.with_extension("stderr");
    let browser = chromium();
    let mut cmd = Command::new(&browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(fs::File::create(&stdout_path).expect("stdout file"))
    .stderr(fs::File::create(&stderr_path).expect("stderr file"));
    let mut child = process::spawn("chromium", cmd).unwrap_or_else(|e| {
        panic!(
            "headless Chromium ({}) failed to start: {e}; run scripts/browser.sh",
            browser.display()
        )
    });
    let status = child
        .wait_timeout(BROWSER_TIMEOUT)
        .expect("wait for Chromium");
    let stderr = || process::tail(&stderr_path, 40);
    let Some(status) = status else {
        let _ = child.kill();
        panic!(
            "headless Chromium did not finish within {BROWSER_TIMEOUT:?}; its stderr:\n{}",
            stderr()
        );
    };
    assert!(
        status.success(),
        "headless Chromium failed ({status}) with {args:?}; its stderr:\n{}",
        stderr()
    );
    fs::read_to_string(&stdout_path).expect("Chromium's stdout")
}

// ------------------------------------------------------------- DOM helpers

/// The serialized `<tag ...>` element whose start tag carries `attr`, up to
/// its first closing tag (so never for a tag nested in itself).
fn element<'a>(dom: &'a str, tag: &str, attr: &str) -> &'a str {
    let open = format!("<{tag} ");
    let start = dom
        .match_indices(attr)
        .find_map(|(at, _)| {
            let start = dom[..at].rfind('<')?;
            (dom[start..].starts_with(&open) && !dom[start..at].contains('>')).then_some(start)
        })
        .unwrap_or_else(|| panic!("the rendered page has no <{tag}> with {attr}"));
    let close = format!("</{tag}>");
    let end = dom[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("<{tag} {attr}> is not closed"));
    &dom[start..start + end + close.len()]
}

/// The numbers of the right-aligned (`num`) cells of a table row, in order.
fn num_cells(row: &str) -> Vec<i64> {
    row.split("<td class=\"num")
        .skip(1)
        .map(|cell| {
            let text =
                &cell[cell.find('>').expect("a cell") + 1..cell.find("</td>").expect("a cell")];
            text.parse()
                .unwrap_or_else(|_| panic!("a number cell holds {text:?} in {row}"))
        })
        .collect()
}

/// `(state, count, x, width)` of an SVG bar's segments, in order.
fn segments(svg: &str) -> Vec<(String, usize, f64, f64)> {
    let attr = |rect: &str, name: &str| -> String {
        let key = format!(" {name}=\"");
        let at = rect
            .find(&key)
            .unwrap_or_else(|| panic!("a segment without {name}: {rect}"))
            + key.len();
        rect[at..at + rect[at..].find('"').expect("a quoted attribute")].to_string()
    };
    svg.split("<rect")
        .skip(1)
        .filter(|rect| rect.contains("data-state="))
        .map(|rect| {
            (
                attr(rect, "data-state"),
                attr(rect, "data-count").parse().expect("a count"),
                attr(rect, "x").parse().expect("an x"),
                attr(rect, "width").parse().expect("a width"),
            )
        })
        .collect()
}

/// Asserts that an SVG bar's segments are the non-zero `counts` in order,
/// each `count / total` of the bar long and laid end to end.
fn assert_bar(svg: &str, counts: &[(&str, usize)]) {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    assert!(svg.contains(&format!("data-total=\"{total}\"")), "{svg}");
    let expected: Vec<(&str, usize)> = counts.iter().copied().filter(|(_, n)| *n > 0).collect();
    let got = segments(svg);
    assert_eq!(
        got.iter()
            .map(|(s, n, ..)| (s.as_str(), *n))
            .collect::<Vec<_>>(),
        expected,
        "{svg}"
    );
    let mut x = 0.0;
    for (state, n, sx, width) in &got {
        let want = (*n * BAR_UNITS) as f64 / total as f64;
        assert!(
            (width - want).abs() < 0.06,
            "{state}: {n} of {total} should be {want:.1} of {BAR_UNITS} units wide, is {width}"
        );
        assert!(
            (sx - x).abs() < 0.11,
            "{state} starts at {sx}, not at {x:.1}"
        );
        x += want;
    }
    assert!(
        (x - BAR_UNITS as f64).abs() < 0.01,
        "the segments fill the bar"
    );
}

// -------------------------------------------------------------------- tests

#[test]
fn chromium_renders_every_count_overdue_workload_and_stale_template() {
    let report = fleet();
    let html = report::render_html(&report);
    for external in ["http://", "https://", "src=", "<link", "<script", "@import"] {
        assert!(
            !html.contains(external),
            "the page is self-contained, yet has {external}"
        );
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let dom = run_chromium(dir.path(), &html, &["--dump-dom".into()]);
    assert!(
        dom.contains("<h1>Patchloop fleet report</h1>"),
        "Chromium did not lay out the report; it dumped:\n{dom}"
    );
    assert!(dom.contains(">2026-11-24T08:00:00Z</time>"));
    assert!(dom.contains(
        "<span id=\"workload-count\">13</span> Workloads · 2 Templates · 2 PatchPolicies"
    ));

    // The totals cards, every state (the numbers, not only the report's).
    let totals = [
        ("Overdue", 3),
        ("Unknown", 2),
        ("Pending", 3),
        ("Exempt", 1),
        ("Compliant", 4),
    ];
    for (state, n) in totals {
        assert_eq!(report.totals.get(state), Some(&n), "the fleet itself");
        let card = format!(
            "<div class=\"card {state}\" id=\"total-{state}\" data-count=\"{n}\"><div class=\"n\">{n}</div><div class=\"l\">{state}</div>"
        );
        assert!(dom.contains(&card), "no card {card}");
    }
    assert!(dom.contains("<div class=\"l\">Overdue</div><div class=\"p\">23% of Workloads</div>"));

    // The fleet bar: best state first, each segment count/13 of the bar.
    let fleet_bar = element(&dom, "svg", "id=\"fleet-bar\"");
    assert_bar(
        fleet_bar,
        &[
            ("Compliant", 4),
            ("Exempt", 1),
            ("Pending", 3),
            ("Overdue", 3),
            ("Unknown", 2),
        ],
    );
    assert!(
        fleet_bar.contains("<title>Overdue: 3</title>"),
        "{fleet_bar}"
    );
    assert!(
        fleet_bar.contains("aria-label=\"Compliant 4, Exempt 1, Pending 3, Overdue 3, Unknown 2\"")
    );
    for legend in [
        "Compliant 4",
        "Exempt 1",
        "Pending 3",
        "Overdue 3",
        "Unknown 2",
    ] {
        assert!(
            dom.contains(&format!("</span>{legend}</span>")),
            "legend {legend}"
        );
    }

    // The overdue chart: every Workload with overdue findings, most first,
    // bars relative to the worst (7).
    let overdue = element(&dom, "section", "id=\"overdue\"");
    let bars = [
        ("payments/pay-api-01", 7, "100.0"),
        ("fleet/web-01", 3, "42.9"),
        ("payments/batch-07", 2, "28.6"),
        ("fleet/web-02", 1, "14.3"),
    ];
    let mut last = 0;
    for (name, n, pct) in bars {
        let bar = format!("data-workload=\"{name}\" data-count=\"{n}\" style=\"width:{pct}%\"");
        let at = overdue
            .find(&bar)
            .unwrap_or_else(|| panic!("no overdue bar {bar} in {overdue}"));
        assert!(at > last, "{name} is out of order");
        last = at;
        assert!(overdue.contains(&format!("title=\"{name}\">{name}</span>")));
    }
    assert_eq!(
        overdue.matches("class=\"fill\"").count(),
        bars.len(),
        "{overdue}"
    );

    // Workloads: worst first, each row with its state and counts.
    let mut last = 0;
    for r in &report.workloads {
        let key = format!(
            "<tr data-workload=\"{}/{}\" data-state=\"{}\"",
            r.namespace, r.name, r.state
        );
        let at = dom.find(&key).unwrap_or_else(|| panic!("no row {key}"));
        assert!(at > last, "{}/{} is out of order", r.namespace, r.name);
        last = at;
        let row = element(&dom, "tr", &key[4..]);
        assert!(
            row.contains(&format!("<span class=\"pill {0}\">{0}</span>", r.state)),
            "{row}"
        );
        assert_eq!(
            num_cells(row),
            [
                i64::from(r.overdue),
                i64::from(r.pending),
                i64::from(r.exempt)
            ],
            "{row}"
        );
    }
    let web01 = element(&dom, "tr", "data-workload=\"fleet/web-01\"");
    assert!(web01.contains("<td class=\"num hot\">3</td>"), "{web01}");
    assert!(
        web01.contains("<td>BackingOff</td><td class=\"stale\">base@1 (stale, latest 3)</td>"),
        "{web01}"
    );
    let web04 = element(&dom, "tr", "data-workload=\"fleet/web-04\"");
    assert!(
        web04.contains("<td class=\"stale\">base@2 (stale, latest 3)</td>"),
        "{web04}"
    );
    let web03 = element(&dom, "tr", "data-workload=\"fleet/web-03\"");
    assert!(
        web03.contains("<td>base@3</td>") && !web03.contains("stale"),
        "{web03}"
    );
    assert_eq!(dom.matches("(stale, latest").count(), 2);

    // Templates: revision, state, ChangeRequest, stale Workloads.
    let base = element(&dom, "tr", "data-template=\"fleet/base\"");
    assert!(
        base.contains("<span class=\"pill Pending\">Pending</span></td><td>base-r4</td>"),
        "{base}"
    );
    assert_eq!(num_cells(base), [3, 2]);
    assert!(base.contains("<td class=\"num stale\">2</td>"), "{base}");
    let pay_base = element(&dom, "tr", "data-template=\"payments/pay-base\"");
    assert_eq!(num_cells(pay_base), [5, 0]);
    assert!(pay_base.contains("<td>-</td>"), "{pay_base}");

    // PatchPolicies: every count, and a bar of the matched Workloads.
    let standard = element(&dom, "tr", "data-policy=\"fleet/standard\"");
    assert!(
        standard.contains("<td>fleet/standard</td><td>Remediate</td>"),
        "{standard}"
    );
    assert_eq!(
        num_cells(standard),
        [8, 3, 2, 2, 0, 1, 1, 1],
        "matched compliant pending overdue exempt unknown remediating failed"
    );
    assert!(
        standard.contains(
            "<td class=\"rollout\">next window<br><time>2026-11-24T22:00:00Z</time></td>"
        ),
        "{standard}"
    );
    assert_bar(
        element(standard, "svg", "id=\"policy-bar-fleet-standard\""),
        &[
            ("Compliant", 3),
            ("Exempt", 0),
            ("Pending", 2),
            ("Overdue", 2),
            ("Unknown", 1),
        ],
    );
    let pci = element(&dom, "tr", "data-policy=\"payments/pci\"");
    assert_eq!(num_cells(pci), [5, 1, 1, 1, 1, 1, 1, 0]);
    assert!(
        pci.contains("<td>payments/pci</td><td>Report</td><td>")
            && pci.contains("<td class=\"rollout\"><span class=\"stale\">paused</span></td>"),
        "{pci}"
    );
    assert_bar(
        element(pci, "svg", "id=\"policy-bar-payments-pci\""),
        &[
            ("Compliant", 1),
            ("Exempt", 1),
            ("Pending", 1),
            ("Overdue", 1),
            ("Unknown", 1),
        ],
    );

    // A user-provided string shows as text, never as markup.
    let legacy = element(&dom, "tr", "data-workload=\"payments/pay-legacy\"");
    assert!(
        legacy.contains("<td>Debian:11 &lt;legacy &amp; \"frozen\"&gt;</td>"),
        "{legacy}"
    );
    assert!(!dom.contains("<legacy"));
}

#[test]
fn chromium_screenshots_the_report_as_a_full_page_image() {
    let html = report::render_html(&fleet());
    let dir = tempfile::tempdir().expect("a temp dir");
    let png = dir.path().join("report.png");
    run_chromium(
        dir.path(),
        &html,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1600".into(),
        ],
    );
    let bytes = fs::read(&png).unwrap_or_else(|e| panic!("Chromium wrote no screenshot: {e}"));
    if let Some(keep) = std::env::var_os("PATCHLOOP_REPORT_SCREENSHOT") {
        fs::write(&keep, &bytes).expect("keep the screenshot");
    }
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(
        &bytes[12..16],
        b"IHDR",
        "a PNG starts with its header chunk"
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((be(16), be(20)), (1280, 1600), "the window size");
    // A blank 1280x1600 page compresses to a few kilobytes; the report's
    // tables, text and coloured charts to far more.
    let blank = dir.path().join("blank.png");
    run_chromium(
        dir.path(),
        "<!DOCTYPE html><html><body></body></html>",
        &[
            format!("--screenshot={}", blank.display()),
            "--window-size=1280,1600".into(),
        ],
    );
    let blank = fs::metadata(&blank).expect("the blank screenshot").len();
    let size = bytes.len() as u64;
    assert!(
        size > 40_000 && size > 8 * blank,
        "the screenshot is {size} bytes, a blank page {blank}: the report did not render"
    );
}
