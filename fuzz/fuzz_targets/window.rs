//! Maintenance windows: a cron schedule, a duration and a time zone, as a
//! policy's author writes them. A window that parses answers every question
//! the rollout asks it without panicking, and is open right after it opens.
#![no_main]

use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;
use patchloop::engine::window::MaintenanceWindow;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let schedule = parts.next().unwrap_or_default();
    let minutes: i64 = parts
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(60);
    let zone = parts.next().unwrap_or("UTC");
    let Ok(window) = MaintenanceWindow::parse(
        schedule,
        SignedDuration::from_mins(minutes.clamp(-1, 20_000)),
        zone,
    ) else {
        return;
    };
    let now = Timestamp::from_second(1_795_000_000).expect("a valid timestamp");
    let _ = window.last_start(now);
    if let Some(start) = window.next_start(now) {
        assert!(start > now, "{schedule:?}: the next start is after now");
        assert!(window.is_open(start), "{schedule:?}: open at its start");
    }
});
