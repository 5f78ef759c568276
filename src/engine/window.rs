//! Maintenance windows: a cron schedule, a duration and an IANA time zone.
//!
//! A [`MaintenanceWindow`] says *when* disruptive work (draining, rebooting,
//! re-provisioning) is allowed: every time the schedule matches, a window
//! opens and stays open for the duration. The functions here answer the
//! questions a reconcile loop asks, for a set of windows at an instant `now`
//! that the caller passes in:
//!
//! * [`is_open`]: may work run right now?
//! * [`open_until`]: if so, until when (for "is there time left to start
//!   one more node?")?
//! * [`next_opening`]: if not (or once the current period is over), when next?
//! * [`next_change`]: when does the answer to [`is_open`] flip (to requeue)?
//!
//! Everything here is pure: no clock is read, so the answers are reproducible
//! and testable with real instants.
//!
//! # Semantics
//!
//! * **Half-open.** An occurrence starting at `s` keeps the window open on
//!   `[s, s + duration)`: open at `s`, closed again at `s + duration`. Two
//!   periods that touch (`s2 == s1 + duration`) or overlap, from the same
//!   window or from different ones, merge into one open period, so
//!   [`open_until`] reports the end of the merged period.
//! * **Wall clock schedule.** The schedule is matched against the wall clock
//!   of the window's time zone, so `0 2 * * SAT` in `Europe/Paris` means 02:00
//!   Paris time every Saturday: 01:00Z in winter, 00:00Z in summer.
//! * **Elapsed duration.** The duration is absolute (elapsed) time, not wall
//!   clock time: a 4h window that spans a daylight-saving change still lasts 4
//!   real hours, even though the wall clock shows 3 or 5 hours between its
//!   ends. That is what a maintenance budget means (how long nodes may be
//!   disrupted), and it keeps every window's length the same.
//! * **Skipped wall-clock times** (spring forward: in `Europe/Paris` on
//!   2026-03-29, 02:00..03:00 never happens). An occurrence the schedule
//!   places in the gap opens at the first instant after the gap, i.e. the
//!   instant of the change (03:00 local, 01:00Z): the window is delayed, not
//!   lost, so a weekly window still happens that week. Several occurrences
//!   in the same gap (`*/15 2 * * *`) all open at that one instant.
//! * **Repeated wall-clock times** (fall back: in `Europe/Paris` on
//!   2026-10-25, 02:00..03:00 happens twice). Every matching wall-clock time
//!   opens **once**, at its first (summer time) instant, never a second time
//!   an hour later. Nodes that were just patched are not disrupted twice,
//!   and a daily window stays once a day. A consequence for dense schedules:
//!   `*/15 * * * *` for 15 minutes covers the first pass through the
//!   repeated hour but not the second, so it is closed for that one hour.
//!
//! These two rules are applied to every schedule alike. (Croner's own time
//! zone search, which this module does not use, differs: it skips
//! interval patterns such as `*/15 2 * * *` in a gap and runs them twice in a
//! repeated hour, while it treats single fixed times as above.)
//!
//! # How it is computed
//!
//! Croner searches the *civil* (time-zone-free) calendar of matching wall
//! clock times, jumping field by field rather than scanning minutes; this
//! module then maps each wall-clock match to an instant with the rules above.
//! The mapping never goes backwards in time, so "the latest start at or
//! before `t`" and "the first start after `t`" are each one croner search
//! (plus, within a repeated hour, a few skipped candidates). Whether a window
//! is open at `now` needs only the latest start at or before `now`, because
//! all occurrences of one window last equally long.

use std::fmt;

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// The longest window accepted: one week.
///
/// Longer is more likely a slipped unit (`30d` for `30m`) than a plan, and
/// would keep even a weekly window open for good. Occurrences that overlap
/// (a daily schedule with a 36h duration) are allowed and simply merge.
pub const MAX_DURATION: SignedDuration = SignedDuration::from_hours(7 * 24);

/// How many times [`open_until`] extends a merged open period before it gives
/// up and reports the end it has reached so far.
///
/// Each step extends the period by up to one window duration and costs one
/// croner search per window (microseconds). Only schedules that in effect
/// never close (`* * * * *` for 1 minute, `0 * * * *` for 1 hour) reach the
/// bound; they are then reported open that far ahead (about 16 hours for
/// `* * * * *` for 1 minute, 41 days for `0 * * * *` for 1 hour).
const MAX_MERGE_STEPS: usize = 1000;

/// How many wall-clock matches a single search may skip because they map to
/// the wrong side of the instant searched from. Matches are skipped only
/// inside a repeated (fall-back) range, which lasts at most a few hours, and
/// a 5-field schedule matches at most once a minute, so this bound is never
/// reached in a real time zone; it only guarantees termination.
const MAX_SKIPPED_MATCHES: usize = 24 * 60;

/// Why a maintenance window could not be built. Each variant names the input
/// that is wrong and repeats its value, so the message can be shown to the
/// user as is (for example in a status condition).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The cron schedule does not parse, or never matches.
    #[error("invalid schedule {value:?}: {reason}")]
    Schedule {
        /// The schedule as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not a known IANA time zone name.
    #[error("unknown time zone {value:?}")]
    TimeZone {
        /// The time zone name as given.
        value: String,
    },
    /// The process has no time zone database at all, so no IANA name can be
    /// resolved. Kept apart from [`WindowError::TimeZone`] so that a broken
    /// image is not reported as a user's typo.
    #[error(
        "cannot resolve time zone {value:?}: no time zone database was found \
         (install tzdata or set TZDIR)"
    )]
    NoTimeZoneDatabase {
        /// The time zone name as given.
        value: String,
    },
    /// The duration is zero, negative or longer than [`MAX_DURATION`].
    #[error("invalid duration {}: {reason}", show_duration(*.value))]
    Duration {
        /// The duration as given.
        value: SignedDuration,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A recurring maintenance window: it opens whenever `schedule` matches the
/// wall clock of `time_zone` and stays open for `duration` of elapsed time.
///
/// See the [module documentation](self) for the exact semantics, including
/// daylight-saving changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    schedule: String,
    cron: Cron,
    duration: SignedDuration,
    time_zone: TimeZone,
}

impl MaintenanceWindow {
    /// Builds a window from its three user-facing inputs, checking each.
    ///
    /// * `schedule`: a 5-field cron expression, `minute hour day-of-month
    ///   month day-of-week`, with the usual `*`, ranges (`1-5`), steps
    ///   (`*/15`, `0-30/10`), lists (`1,15`), month names (`JAN`..`DEC`) and
    ///   day names (`SUN`..`SAT`, `0` and `7` both Sunday), case-insensitive.
    ///   Also accepted: the aliases `@yearly`/`@annually`, `@monthly`,
    ///   `@weekly` (Sunday 00:00), `@daily` and `@hourly`, and croner's
    ///   extensions `L` (last day of month / last weekday `5L`), `W` (nearest
    ///   weekday), `#` (`TUE#2`, the second Tuesday: Patch Tuesday) and `?`.
    ///   As in Vixie cron, when both day-of-month and day-of-week are
    ///   restricted, a day matching *either* matches. A seconds field (6 or 7
    ///   fields) is refused: windows are planned to the minute, and a 6-field
    ///   string is more likely a mistake than a wish for seconds.
    /// * `duration`: how long each occurrence stays open, elapsed time,
    ///   positive and at most [`MAX_DURATION`].
    /// * `time_zone`: an IANA name such as `Europe/Paris`, looked up
    ///   (case-insensitively) in jiff's time zone database: the system's
    ///   `/usr/share/zoneinfo` (or `$TZDIR`), else a copy bundled into the
    ///   binary if jiff's `tzdb-bundle-always` feature is on. `UTC` needs no
    ///   database. Fixed offsets like `+02:00` are not accepted: they cannot
    ///   follow daylight-saving rules.
    ///
    /// The inputs are checked in that order and the first problem is
    /// reported.
    ///
    /// A schedule that can never match (`0 0 31 2 *`) is refused here rather
    /// than silently never opening. That check costs a few tens of
    /// milliseconds for such a schedule only; valid ones take microseconds.
    pub fn parse(
        schedule: &str,
        duration: SignedDuration,
        time_zone: &str,
    ) -> Result<MaintenanceWindow, WindowError> {
        let schedule_error = |reason: String| WindowError::Schedule {
            value: schedule.to_owned(),
            reason,
        };
        let cron = parse_schedule(schedule).map_err(schedule_error)?;

        if duration <= SignedDuration::ZERO {
            return Err(WindowError::Duration {
                value: duration,
                reason: "must be positive",
            });
        }
        if duration > MAX_DURATION {
            return Err(WindowError::Duration {
                value: duration,
                reason: "must be at most 7 days",
            });
        }

        let time_zone = lookup_time_zone(time_zone)?;

        Ok(MaintenanceWindow {
            schedule: schedule.trim().to_owned(),
            cron,
            duration,
            time_zone,
        })
    }

    /// The schedule as given (without surrounding whitespace).
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// How long each occurrence stays open (elapsed time).
    pub fn duration(&self) -> SignedDuration {
        self.duration
    }

    /// The time zone the schedule is read in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// Whether this window alone is open at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.end_if_open(now).is_some()
    }

    /// The latest instant at or before `at` at which this window opens.
    ///
    /// `None` only if there is none in croner's search range (years 1..5000).
    pub fn last_start(&self, at: Timestamp) -> Option<Timestamp> {
        // Start from the latest wall-clock time that can still map to an
        // instant at or before `at`. Normally that is the wall clock at `at`.
        // In the second pass through a repeated hour it is later: the whole
        // repeated hour, up to the wall clock `at` shows under the earlier
        // (summer) offset, mapped to its first pass, which already happened.
        let wall = self.time_zone.to_datetime(at);
        let mut cursor = match self.time_zone.to_ambiguous_timestamp(wall).offset() {
            AmbiguousOffset::Fold { before, .. } => before.to_datetime(at).max(wall),
            _ => wall,
        };
        let mut inclusive = true;
        for _ in 0..MAX_SKIPPED_MATCHES {
            let matched = self
                .cron
                .find_previous_occurrence(&cursor, inclusive)
                .ok()?;
            let start = self.resolve(matched)?;
            if start <= at {
                return Some(start);
            }
            // A wall-clock time past the end of the repeated hour: it
            // happens after `at`.
            cursor = matched;
            inclusive = false;
        }
        None
    }

    /// The first instant strictly after `after` at which this window opens.
    ///
    /// `None` only if there is none in croner's search range (years 1..5000).
    pub fn next_start(&self, after: Timestamp) -> Option<Timestamp> {
        let mut cursor = self.time_zone.to_datetime(after);
        for _ in 0..MAX_SKIPPED_MATCHES {
            let matched = self.cron.find_next_occurrence(&cursor, false).ok()?;
            let start = self.resolve(matched)?;
            if start > after {
                return Some(start);
            }
            // `after` is in the second pass through a repeated hour and this
            // match opened during the first pass: already in the past.
            cursor = matched;
        }
        None
    }

    /// If this window is open at `at`, when its current occurrence (the
    /// latest one, which ends last, since all last equally long) closes.
    fn end_if_open(&self, at: Timestamp) -> Option<Timestamp> {
        let start = self.last_start(at)?;
        let end = start.checked_add(self.duration).ok()?;
        (end > at).then_some(end)
    }

    /// Maps a wall-clock match to the instant the window opens, following
    /// the daylight-saving rules of the module documentation. The mapping is
    /// monotone (never goes back in time), which the searches rely on.
    fn resolve(&self, wall: DateTime) -> Option<Timestamp> {
        match self.time_zone.to_ambiguous_timestamp(wall).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(wall).ok(),
            // Repeated: the first pass, under the offset before the change.
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(wall).ok(),
            // Skipped: the instant of the change itself. Read under the
            // offset after the change, a wall-clock time in the gap lands
            // before the change, so the change is the next transition.
            AmbiguousOffset::Gap { after, .. } => {
                let before_change = after.to_timestamp(wall).ok()?;
                let change = self.time_zone.following(before_change).next()?;
                Some(change.timestamp())
            }
        }
    }
}

impl fmt::Display for MaintenanceWindow {
    /// `"0 2 * * SAT" for 4h in Europe/Paris`, for logs and status messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} for {:#} in {}",
            self.schedule,
            self.duration,
            self.time_zone.iana_name().unwrap_or("an unnamed time zone")
        )
    }
}

/// Whether any of `windows` is open at `now`.
pub fn is_open(windows: &[MaintenanceWindow], now: Timestamp) -> bool {
    windows.iter().any(|window| window.is_open(now))
}

/// If any of `windows` is open at `now`, the instant at which the open
/// period ends; `None` if none is open.
///
/// The period is the merge of every occurrence, of every window, that
/// overlaps or touches it, so the answer is the first instant at or after
/// `now` at which no window is open. An empty slice is never open: whether
/// "no windows configured" means "never" or "always" is the caller's policy.
///
/// A period that keeps being extended (a schedule that in effect never
/// closes, such as `* * * * *` for one minute) is followed for a bounded
/// number of steps; the instant returned is then a point up to which the
/// period is certainly open, where the caller looks again.
pub fn open_until(windows: &[MaintenanceWindow], now: Timestamp) -> Option<Timestamp> {
    merged_end(windows, now).map(|(end, _)| end)
}

/// The next instant strictly after `now` at which a window opens: if none is
/// open at `now`, the first occurrence start after `now`; if one is, the
/// first start after the current (merged) period has ended, since starts
/// inside the period change nothing.
///
/// `None` if there are no windows, or if the current period does not end
/// within the steps [`open_until`] follows.
pub fn next_opening(windows: &[MaintenanceWindow], now: Timestamp) -> Option<Timestamp> {
    let from = match merged_end(windows, now) {
        None => now,
        Some((end, true)) => end,
        Some((_, false)) => return None,
    };
    first_start_after(windows, from)
}

/// The next instant at which [`is_open`] changes: when the current period
/// ends if a window is open at `now`, otherwise when the next one opens.
/// Always strictly after `now`; this is when a controller should requeue.
///
/// `None` if there are no windows. For a period that never ends (see
/// [`open_until`]) it is the instant up to which the period was followed.
pub fn next_change(windows: &[MaintenanceWindow], now: Timestamp) -> Option<Timestamp> {
    match merged_end(windows, now) {
        Some((end, _)) => Some(end),
        None => first_start_after(windows, now),
    }
}

/// The end of the merged open period containing `now`, and whether it is
/// the true end (`false` if the merge stopped at [`MAX_MERGE_STEPS`]).
fn merged_end(windows: &[MaintenanceWindow], now: Timestamp) -> Option<(Timestamp, bool)> {
    let mut end = windows.iter().filter_map(|w| w.end_if_open(now)).max()?;
    for _ in 0..MAX_MERGE_STEPS {
        // `end` is the first instant not covered by the occurrences seen so
        // far. An occurrence starting at or before it (at it: half-open
        // periods that touch) and ending after it extends the period; the
        // latest start of each window reaches furthest.
        match windows.iter().filter_map(|w| w.end_if_open(end)).max() {
            Some(later) => end = later,
            None => return Some((end, true)),
        }
    }
    Some((end, false))
}

/// The earliest start of any window strictly after `after`.
fn first_start_after(windows: &[MaintenanceWindow], after: Timestamp) -> Option<Timestamp> {
    windows.iter().filter_map(|w| w.next_start(after)).min()
}

/// Parses and checks a schedule; the error is the reason, for
/// [`WindowError::Schedule`].
fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    check_fields(schedule.trim())?;
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(cron_reason)?;
    // A schedule such as `0 0 31 2 *` parses but never matches. Search once
    // from a fixed instant (not the clock: this module stays pure); croner
    // gives up at year 5000.
    let origin = DateTime::constant(2000, 1, 1, 0, 0, 0, 0);
    if cron.find_next_occurrence(&origin, true).is_err() {
        return Err("never matches".to_owned());
    }
    Ok(cron)
}

/// Checks the shape of a schedule before croner sees it.
///
/// Croner replaces day and month names anywhere in the string before it
/// splits the fields, so `0 2 * * JAN` would silently mean Mondays and
/// `0 2 MON * *` the 1st of the month. Here each name is checked against its
/// field, and the field count gets a plain message.
fn check_fields(schedule: &str) -> Result<(), String> {
    const ALIASES: [&str; 6] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@hourly",
    ];
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

    if schedule.starts_with('@') {
        return if ALIASES.iter().any(|a| a.eq_ignore_ascii_case(schedule)) {
            Ok(())
        } else {
            Err(format!("unknown alias; use one of {}", ALIASES.join(", ")))
        };
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    const NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    for (index, field) in fields.iter().enumerate() {
        for word in field
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|word| !word.is_empty())
        {
            let upper = word.to_ascii_uppercase();
            let allowed = match index {
                // `L` (last day) and `W` (nearest weekday).
                2 => upper.chars().all(|c| c == 'L' || c == 'W'),
                3 => MONTHS.contains(&upper.as_str()),
                // A day name, `L` (last), or a day name then `L` (`FRIL`).
                4 => {
                    let day = upper.strip_suffix('L').unwrap_or(&upper);
                    day.is_empty() || DAYS.contains(&day)
                }
                _ => false,
            };
            if !allowed {
                return Err(format!(
                    "{word:?} is not allowed in the {} field",
                    NAMES[index]
                ));
            }
        }
    }
    Ok(())
}

/// A duration as people write it (`4h`, `-30m`, `168h 1s`). jiff's own
/// friendly format writes negative durations as `30m ago`, which reads oddly
/// in "invalid duration 30m ago".
fn show_duration(duration: SignedDuration) -> String {
    match duration.checked_neg() {
        Some(positive) if duration.is_negative() => format!("-{positive:#}"),
        _ => format!("{duration:#}"),
    }
}

/// Croner's message without its generic prefix.
fn cron_reason(error: CronError) -> String {
    match error {
        CronError::InvalidPattern(message)
        | CronError::IllegalCharacters(message)
        | CronError::ComponentError(message) => message,
        other => other.to_string(),
    }
}

/// Looks a time zone up by IANA name.
fn lookup_time_zone(name: &str) -> Result<TimeZone, WindowError> {
    // UTC (the API's default) has no rules to look up, so it works even
    // where the process has no time zone database; jiff would refuse it.
    if name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    match TimeZone::get(name) {
        // `Etc/Unknown` is jiff's placeholder for "no idea": refuse it
        // rather than silently use UTC.
        Ok(time_zone) if !time_zone.is_unknown() => Ok(time_zone),
        _ if jiff::tz::db().is_definitively_empty() => Err(WindowError::NoTimeZoneDatabase {
            value: name.to_owned(),
        }),
        _ => Err(WindowError::TimeZone {
            value: name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// A window from literals; the inputs are known to be valid.
    fn window(schedule: &str, duration: &str, time_zone: &str) -> MaintenanceWindow {
        let duration = duration.parse().expect("literal duration");
        MaintenanceWindow::parse(schedule, duration, time_zone).expect("literal window is valid")
    }

    fn ts(instant: &str) -> Timestamp {
        instant.parse().expect("literal timestamp")
    }

    /// One row: windows, an instant, and what the three queries must say.
    struct Case {
        name: &'static str,
        windows: &'static [(&'static str, &'static str, &'static str)],
        now: &'static str,
        open_until: Option<&'static str>,
        next_opening: Option<&'static str>,
    }

    const PARIS_SAT: &[(&str, &str, &str)] = &[("0 2 * * SAT", "4h", "Europe/Paris")];

    const CASES: &[Case] = &[
        // --- `0 2 * * SAT` for 4h in Paris: the wall clock moves with DST.
        Case {
            name: "winter: 02:00 CET is 01:00Z, just before",
            windows: PARIS_SAT,
            now: "2026-01-03T00:59:59Z",
            open_until: None,
            next_opening: Some("2026-01-03T01:00:00Z"),
        },
        Case {
            name: "winter: open at the start (half-open interval)",
            windows: PARIS_SAT,
            now: "2026-01-03T01:00:00Z",
            open_until: Some("2026-01-03T05:00:00Z"),
            next_opening: Some("2026-01-10T01:00:00Z"),
        },
        Case {
            name: "winter: open in the last second",
            windows: PARIS_SAT,
            now: "2026-01-03T04:59:59.999Z",
            open_until: Some("2026-01-03T05:00:00Z"),
            next_opening: Some("2026-01-10T01:00:00Z"),
        },
        Case {
            name: "winter: closed at start + duration",
            windows: PARIS_SAT,
            now: "2026-01-03T05:00:00Z",
            open_until: None,
            next_opening: Some("2026-01-10T01:00:00Z"),
        },
        Case {
            name: "summer: 02:00 CEST is 00:00Z",
            windows: PARIS_SAT,
            now: "2026-07-03T23:59:59Z",
            open_until: None,
            next_opening: Some("2026-07-04T00:00:00Z"),
        },
        Case {
            name: "summer: open for 4h from 00:00Z",
            windows: PARIS_SAT,
            now: "2026-07-04T00:00:00Z",
            open_until: Some("2026-07-04T04:00:00Z"),
            next_opening: Some("2026-07-11T00:00:00Z"),
        },
        Case {
            name: "next opening across the March change is 1h less than a week away",
            windows: PARIS_SAT,
            now: "2026-03-28T05:00:00Z",
            open_until: None,
            next_opening: Some("2026-04-04T00:00:00Z"),
        },
        Case {
            name: "next opening across the October change is 1h more than a week away",
            windows: PARIS_SAT,
            now: "2026-10-24T04:00:00Z",
            open_until: None,
            next_opening: Some("2026-10-31T01:00:00Z"),
        },
        // --- Paris, spring forward on 2026-03-29 at 01:00Z (02:00 CET -> 03:00 CEST).
        Case {
            name: "Paris gap: 02:30 does not exist; not open at 00:30Z",
            windows: &[("30 2 * * SUN", "1h", "Europe/Paris")],
            now: "2026-03-29T00:30:00Z",
            open_until: None,
            next_opening: Some("2026-03-29T01:00:00Z"),
        },
        Case {
            name: "Paris gap: opens at the change, 03:00 CEST, for 1 real hour",
            windows: &[("30 2 * * SUN", "1h", "Europe/Paris")],
            now: "2026-03-29T01:00:00Z",
            open_until: Some("2026-03-29T02:00:00Z"),
            next_opening: Some("2026-04-05T00:30:00Z"),
        },
        Case {
            name: "Paris gap: closed 1 real hour after the change (not 03:30 CEST to 04:30 CEST)",
            windows: &[("30 2 * * SUN", "1h", "Europe/Paris")],
            now: "2026-03-29T02:00:00Z",
            open_until: None,
            next_opening: Some("2026-04-05T00:30:00Z"),
        },
        Case {
            name: "Paris gap: interval matches in the gap all open at the change",
            windows: &[("*/20 2 * * *", "30m", "Europe/Paris")],
            now: "2026-03-29T00:59:59Z",
            open_until: None,
            next_opening: Some("2026-03-29T01:00:00Z"),
        },
        Case {
            name: "Paris gap: interval matches in the gap give one 30m period",
            windows: &[("*/20 2 * * *", "30m", "Europe/Paris")],
            now: "2026-03-29T01:00:00Z",
            open_until: Some("2026-03-29T01:30:00Z"),
            next_opening: Some("2026-03-30T00:00:00Z"),
        },
        Case {
            name: "overlapping occurrences of one window merge (02:00, 02:20, 02:40 for 30m)",
            windows: &[("*/20 2 * * *", "30m", "Europe/Paris")],
            now: "2026-03-30T00:00:00Z",
            open_until: Some("2026-03-30T01:10:00Z"),
            next_opening: Some("2026-03-31T00:00:00Z"),
        },
        Case {
            name: "Paris spring: a 4h window spanning the change lasts 4 real hours",
            windows: &[("0 1 * * SUN", "4h", "Europe/Paris")],
            now: "2026-03-29T03:59:59Z",
            open_until: Some("2026-03-29T04:00:00Z"),
            next_opening: Some("2026-04-04T23:00:00Z"),
        },
        // --- Paris, fall back on 2026-10-25 at 01:00Z (03:00 CEST -> 02:00 CET):
        // 02:00..03:00 is 00:00Z..01:00Z (CEST) and again 01:00Z..02:00Z (CET).
        Case {
            name: "Paris fold: opens at the first 02:30 (CEST)",
            windows: &[("30 2 * * SUN", "1h", "Europe/Paris")],
            now: "2026-10-25T00:30:00Z",
            open_until: Some("2026-10-25T01:30:00Z"),
            next_opening: Some("2026-11-01T01:30:00Z"),
        },
        Case {
            name: "Paris fold: does not open again at the second 02:30 (CET)",
            windows: &[("30 2 * * SUN", "1h", "Europe/Paris")],
            now: "2026-10-25T01:30:00Z",
            open_until: None,
            next_opening: Some("2026-11-01T01:30:00Z"),
        },
        Case {
            name: "Paris fold: inside the second pass, the first 02:45 is still open",
            windows: &[("45 2 * * *", "1h", "Europe/Paris")],
            now: "2026-10-25T01:15:00Z",
            open_until: Some("2026-10-25T01:45:00Z"),
            next_opening: Some("2026-10-26T01:45:00Z"),
        },
        Case {
            name: "Paris fold: interval matches open on the first pass only",
            windows: &[("0,30 2 * * *", "30m", "Europe/Paris")],
            now: "2026-10-25T00:00:00Z",
            open_until: Some("2026-10-25T01:00:00Z"),
            next_opening: Some("2026-10-26T01:00:00Z"),
        },
        Case {
            name: "Paris fold: interval matches are closed on the second pass",
            windows: &[("0,30 2 * * *", "30m", "Europe/Paris")],
            now: "2026-10-25T01:00:00Z",
            open_until: None,
            next_opening: Some("2026-10-26T01:00:00Z"),
        },
        Case {
            name: "Paris fall: a 4h window from 01:00 CEST ends 04:00 CET (4 real hours)",
            windows: &[("0 1 * * SUN", "4h", "Europe/Paris")],
            now: "2026-10-25T02:59:59Z",
            open_until: Some("2026-10-25T03:00:00Z"),
            next_opening: Some("2026-11-01T00:00:00Z"),
        },
        Case {
            name: "Paris fall: closed at 04:00 CET",
            windows: &[("0 1 * * SUN", "4h", "Europe/Paris")],
            now: "2026-10-25T03:00:00Z",
            open_until: None,
            next_opening: Some("2026-11-01T00:00:00Z"),
        },
        // --- New York: spring forward 2026-03-08 at 07:00Z (02:00 EST -> 03:00 EDT),
        // fall back 2026-11-01 at 06:00Z (02:00 EDT -> 01:00 EST).
        Case {
            name: "New York gap: 02:30 opens at the change, 03:00 EDT",
            windows: &[("30 2 * * *", "2h", "America/New_York")],
            now: "2026-03-08T06:59:59Z",
            open_until: None,
            next_opening: Some("2026-03-08T07:00:00Z"),
        },
        Case {
            name: "New York gap: open for 2 real hours from the change",
            windows: &[("30 2 * * *", "2h", "America/New_York")],
            now: "2026-03-08T07:00:00Z",
            open_until: Some("2026-03-08T09:00:00Z"),
            next_opening: Some("2026-03-09T06:30:00Z"),
        },
        Case {
            name: "New York: the day before the gap, 02:30 EST",
            windows: &[("30 2 * * *", "2h", "America/New_York")],
            now: "2026-03-07T07:30:00Z",
            open_until: Some("2026-03-07T09:30:00Z"),
            next_opening: Some("2026-03-08T07:00:00Z"),
        },
        Case {
            name: "New York spring: a 4h window spanning the change lasts 4 real hours",
            windows: &[("0 0 * * SUN", "4h", "America/New_York")],
            now: "2026-03-08T05:00:00Z",
            open_until: Some("2026-03-08T09:00:00Z"),
            next_opening: Some("2026-03-15T04:00:00Z"),
        },
        Case {
            name: "New York fold: opens at the first 01:30 (EDT)",
            windows: &[("30 1 * * *", "1h", "America/New_York")],
            now: "2026-11-01T05:30:00Z",
            open_until: Some("2026-11-01T06:30:00Z"),
            next_opening: Some("2026-11-02T06:30:00Z"),
        },
        Case {
            name: "New York fold: does not open again at the second 01:30 (EST)",
            windows: &[("30 1 * * *", "1h", "America/New_York")],
            now: "2026-11-01T06:30:00Z",
            open_until: None,
            next_opening: Some("2026-11-02T06:30:00Z"),
        },
        Case {
            name: "New York fall: a 4h window spanning the change lasts 4 real hours",
            windows: &[("0 0 * * SUN", "4h", "America/New_York")],
            now: "2026-11-01T07:59:59Z",
            open_until: Some("2026-11-01T08:00:00Z"),
            next_opening: Some("2026-11-08T05:00:00Z"),
        },
        // --- Sydney (southern hemisphere): fall back 2026-04-05 at 16:00Z on
        // the 4th (03:00 AEDT -> 02:00 AEST), spring forward 2026-10-04 at
        // 16:00Z on the 3rd (02:00 AEST -> 03:00 AEDT).
        Case {
            name: "Sydney fold (April): opens at the first 02:30 (AEDT)",
            windows: &[("30 2 * * SUN", "1h", "Australia/Sydney")],
            now: "2026-04-04T15:30:00Z",
            open_until: Some("2026-04-04T16:30:00Z"),
            next_opening: Some("2026-04-11T16:30:00Z"),
        },
        Case {
            name: "Sydney fold (April): not again at the second 02:30 (AEST)",
            windows: &[("30 2 * * SUN", "1h", "Australia/Sydney")],
            now: "2026-04-04T16:30:00Z",
            open_until: None,
            next_opening: Some("2026-04-11T16:30:00Z"),
        },
        Case {
            name: "Sydney gap (October): 02:30 opens at the change, 03:00 AEDT",
            windows: &[("30 2 * * SUN", "1h", "Australia/Sydney")],
            now: "2026-09-28T00:00:00Z",
            open_until: None,
            next_opening: Some("2026-10-03T16:00:00Z"),
        },
        Case {
            name: "Sydney gap (October): open for 1 real hour",
            windows: &[("30 2 * * SUN", "1h", "Australia/Sydney")],
            now: "2026-10-03T16:59:59Z",
            open_until: Some("2026-10-03T17:00:00Z"),
            next_opening: Some("2026-10-10T15:30:00Z"),
        },
        // --- Several windows: open periods merge.
        Case {
            name: "two overlapping windows merge",
            windows: &[("0 1 * * SAT", "2h", "UTC"), ("30 2 * * SAT", "2h", "UTC")],
            now: "2026-01-03T01:30:00Z",
            open_until: Some("2026-01-03T04:30:00Z"),
            next_opening: Some("2026-01-10T01:00:00Z"),
        },
        Case {
            name: "two overlapping windows: in the second only",
            windows: &[("0 1 * * SAT", "2h", "UTC"), ("30 2 * * SAT", "2h", "UTC")],
            now: "2026-01-03T03:00:00Z",
            open_until: Some("2026-01-03T04:30:00Z"),
            next_opening: Some("2026-01-10T01:00:00Z"),
        },
        Case {
            name: "touching windows merge (half-open: the second opens as the first closes)",
            windows: &[("0 1 * * *", "1h", "UTC"), ("0 2 * * *", "1h", "UTC")],
            now: "2026-01-03T01:00:00Z",
            open_until: Some("2026-01-03T03:00:00Z"),
            next_opening: Some("2026-01-04T01:00:00Z"),
        },
        Case {
            name: "windows in different time zones merge (Paris 01:00Z-05:00Z, New York 04:00Z-07:00Z)",
            windows: &[
                ("0 2 * * SAT", "4h", "Europe/Paris"),
                ("0 23 * * FRI", "3h", "America/New_York"),
            ],
            now: "2026-01-03T01:00:00Z",
            open_until: Some("2026-01-03T07:00:00Z"),
            next_opening: Some("2026-01-10T01:00:00Z"),
        },
        Case {
            name: "separate windows: the earliest next opening wins",
            windows: &[("0 3 * * SUN", "1h", "UTC"), ("0 22 * * FRI", "1h", "UTC")],
            now: "2026-01-03T00:00:00Z",
            open_until: None,
            next_opening: Some("2026-01-04T03:00:00Z"),
        },
        Case {
            name: "occurrences of one window that chain (Mon and Tue 00:00 for 36h)",
            windows: &[("0 0 * * MON,TUE", "36h", "UTC")],
            now: "2026-01-05T00:00:00Z",
            open_until: Some("2026-01-07T12:00:00Z"),
            next_opening: Some("2026-01-12T00:00:00Z"),
        },
        Case {
            name: "no windows: never open",
            windows: &[],
            now: "2026-01-03T01:00:00Z",
            open_until: None,
            next_opening: None,
        },
    ];

    #[test]
    fn table() {
        for case in CASES {
            let windows: Vec<_> = case
                .windows
                .iter()
                .map(|&(schedule, duration, zone)| window(schedule, duration, zone))
                .collect();
            let now = ts(case.now);
            let open_until_expected = case.open_until.map(ts);
            let next_opening_expected = case.next_opening.map(ts);
            assert_eq!(
                open_until(&windows, now),
                open_until_expected,
                "open_until: {}",
                case.name
            );
            assert_eq!(
                is_open(&windows, now),
                open_until_expected.is_some(),
                "is_open: {}",
                case.name
            );
            assert_eq!(
                next_opening(&windows, now),
                next_opening_expected,
                "next_opening: {}",
                case.name
            );
            assert_eq!(
                next_change(&windows, now),
                open_until_expected.or(next_opening_expected),
                "next_change: {}",
                case.name
            );
        }
    }

    #[test]
    fn single_window_starts() {
        // (window, at, last start at or before, first start after)
        let cases = [
            (
                ("0 2 * * SAT", "4h", "Europe/Paris"),
                "2026-01-03T01:00:00Z",
                "2026-01-03T01:00:00Z",
                "2026-01-10T01:00:00Z",
            ),
            (
                // The gap: 02:30 on 2026-03-29 maps to the change, 01:00Z.
                ("30 2 * * *", "1h", "Europe/Paris"),
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ),
            (
                // The second pass through the repeated hour: the first 02:45
                // (00:45Z) already happened and the second never will.
                ("45 2 * * *", "1h", "Europe/Paris"),
                "2026-10-25T01:50:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-26T01:45:00Z",
            ),
        ];
        for ((schedule, duration, zone), at, last, next) in cases {
            let w = window(schedule, duration, zone);
            assert_eq!(w.last_start(ts(at)), Some(ts(last)), "{w} last_start({at})");
            assert_eq!(w.next_start(ts(at)), Some(ts(next)), "{w} next_start({at})");
        }
    }

    #[test]
    fn accepted_schedules() {
        // (schedule, first opening after 2026-01-01T00:00Z in UTC)
        let cases = [
            ("0 2 * * SAT", "2026-01-03T02:00:00Z"),
            ("0 2 * * sat", "2026-01-03T02:00:00Z"),
            ("  0 2 * * 6  ", "2026-01-03T02:00:00Z"),
            ("0 2 * * 7", "2026-01-04T02:00:00Z"),
            ("0 22 * * mon-fri", "2026-01-01T22:00:00Z"),
            ("0 22 * * FRI-SUN", "2026-01-02T22:00:00Z"),
            ("15 */6 * * *", "2026-01-01T00:15:00Z"),
            ("0 3 1,15 FEB,jul *", "2026-02-01T03:00:00Z"),
            ("0 3 * 3-5 *", "2026-03-01T03:00:00Z"),
            ("0 2 * * TUE#2", "2026-01-13T02:00:00Z"),
            ("0 2 L * *", "2026-01-31T02:00:00Z"),
            ("0 2 * * FRIL", "2026-01-30T02:00:00Z"),
            // Vixie cron: day-of-month OR day-of-week, so Friday the 2nd, not
            // Friday the 13th.
            ("0 2 13 * FRI", "2026-01-02T02:00:00Z"),
            ("@weekly", "2026-01-04T00:00:00Z"),
            ("@daily", "2026-01-02T00:00:00Z"),
            ("@hourly", "2026-01-01T01:00:00Z"),
            ("@monthly", "2026-02-01T00:00:00Z"),
            ("@YEARLY", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
        ];
        for (schedule, expected) in cases {
            let w = window(schedule, "1m", "UTC");
            assert_eq!(
                next_opening(std::slice::from_ref(&w), ts("2026-01-01T00:00:00Z")),
                Some(ts(expected)),
                "{schedule}"
            );
        }
        assert_eq!(window("  0 2 * * 6  ", "1h", "UTC").schedule(), "0 2 * * 6");
    }

    #[test]
    fn accessors_and_display() {
        let w = window("0 2 * * SAT", "4h", "europe/paris");
        assert_eq!(w.schedule(), "0 2 * * SAT");
        assert_eq!(w.duration(), SignedDuration::from_hours(4));
        assert_eq!(w.time_zone().iana_name(), Some("Europe/Paris"));
        assert_eq!(w.to_string(), r#""0 2 * * SAT" for 4h in Europe/Paris"#);
        let utc = window("@daily", "90m", "utc");
        assert_eq!(utc.time_zone(), &TimeZone::UTC);
        assert_eq!(utc.to_string(), r#""@daily" for 1h 30m in UTC"#);
    }

    #[test]
    fn invalid_schedules_name_the_schedule() {
        // (schedule, expected message)
        let cases = [
            (
                "0 2 * * FUNDAY",
                r#"invalid schedule "0 2 * * FUNDAY": "FUNDAY" is not allowed in the day-of-week field"#,
            ),
            (
                "0 2 * * JAN",
                r#"invalid schedule "0 2 * * JAN": "JAN" is not allowed in the day-of-week field"#,
            ),
            (
                "0 2 MON * *",
                r#"invalid schedule "0 2 MON * *": "MON" is not allowed in the day-of-month field"#,
            ),
            (
                "0 2 * SAT *",
                r#"invalid schedule "0 2 * SAT *": "SAT" is not allowed in the month field"#,
            ),
            (
                "0 2 * *",
                r#"invalid schedule "0 2 * *": expected 5 fields (minute hour day-of-month month day-of-week), found 4"#,
            ),
            (
                "0 0 2 * * SAT",
                r#"invalid schedule "0 0 2 * * SAT": expected 5 fields (minute hour day-of-month month day-of-week), found 6"#,
            ),
            (
                "",
                r#"invalid schedule "": expected 5 fields (minute hour day-of-month month day-of-week), found 0"#,
            ),
            (
                "@reboot",
                r#"invalid schedule "@reboot": unknown alias; use one of @yearly, @annually, @monthly, @weekly, @daily, @hourly"#,
            ),
            (
                "0 0 31 2 *",
                r#"invalid schedule "0 0 31 2 *": never matches"#,
            ),
        ];
        for (schedule, message) in cases {
            let error = MaintenanceWindow::parse(schedule, SignedDuration::from_hours(1), "UTC")
                .expect_err(schedule);
            assert!(
                matches!(&error, WindowError::Schedule { value, .. } if value == schedule),
                "{error:?}"
            );
            assert_eq!(error.to_string(), message);
        }
        // Out-of-range values are croner's to explain; the message still
        // starts with the schedule.
        for schedule in [
            "61 2 * * *",
            "0 24 * * *",
            "0 2 0 * *",
            "0 2 * 13 *",
            "0 2 * * 8",
        ] {
            let error = MaintenanceWindow::parse(schedule, SignedDuration::from_hours(1), "UTC")
                .expect_err(schedule);
            assert!(
                matches!(&error, WindowError::Schedule { value, .. } if value == schedule),
                "{error:?}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("invalid schedule {schedule:?}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn invalid_time_zones_name_the_time_zone() {
        for zone in ["Europe/Pariss", "", "+02:00", "Local", "Etc/Unknown"] {
            let error =
                MaintenanceWindow::parse("0 2 * * SAT", SignedDuration::from_hours(1), zone)
                    .expect_err(zone);
            assert_eq!(
                error,
                WindowError::TimeZone {
                    value: zone.to_owned()
                }
            );
            assert_eq!(error.to_string(), format!("unknown time zone {zone:?}"));
        }
    }

    #[test]
    fn invalid_durations_name_the_duration() {
        let cases = [
            (
                SignedDuration::ZERO,
                "invalid duration 0s: must be positive",
            ),
            (
                SignedDuration::from_mins(-30),
                "invalid duration -30m: must be positive",
            ),
            (
                MAX_DURATION + SignedDuration::from_secs(1),
                "invalid duration 168h 1s: must be at most 7 days",
            ),
        ];
        for (duration, message) in cases {
            let error = MaintenanceWindow::parse("0 2 * * SAT", duration, "UTC")
                .expect_err("invalid duration");
            assert!(
                matches!(error, WindowError::Duration { value, .. } if value == duration),
                "{error:?}"
            );
            assert_eq!(error.to_string(), message);
        }
        assert!(MaintenanceWindow::parse("0 2 * * SAT", MAX_DURATION, "UTC").is_ok());
    }

    #[test]
    fn a_window_that_never_closes_is_followed_a_bounded_number_of_steps() {
        // Every minute for a minute: always open. open_until reports how far
        // it followed the period; there is no next opening to report.
        let windows = [window("* * * * *", "1m", "UTC")];
        let now = ts("2026-01-01T00:00:30Z");
        let until = open_until(&windows, now).expect("always open");
        assert!(until >= now + SignedDuration::from_hours(16), "{until}");
        assert_eq!(next_change(&windows, now), Some(until));
        assert_eq!(next_opening(&windows, now), None);
    }

    // --- Property test against a slow reference.

    /// Whether `window` is open at `now`, by brute force over instants: step
    /// minute by minute through `(now - duration, now]` and look for an
    /// instant at which the window opens. An instant opens the window if its
    /// wall clock matches the schedule and it is the first instant with
    /// that wall clock (not the second pass of a repeated hour), or if it
    /// ends a skipped range of wall-clock times of which one matches.
    fn reference_open(window: &MaintenanceWindow, now: Timestamp) -> bool {
        let tz = window.time_zone();
        let minute = SignedDuration::from_mins(1);
        let first_instant_with_wall_clock = |instant: Timestamp| {
            tz.to_ambiguous_timestamp(tz.to_datetime(instant))
                .earlier()
                .expect("in range")
                == instant
        };
        let opens_at = |instant: Timestamp| -> bool {
            let wall = tz.to_datetime(instant);
            let matches = |wall: DateTime| window.cron.is_time_matching(&wall).expect("matches");
            if matches(wall) && first_instant_with_wall_clock(instant) {
                return true;
            }
            // Skipped wall-clock minutes just before this instant.
            let previous_wall = tz.to_datetime(instant - SignedDuration::from_nanos(1));
            let mut skipped = previous_wall
                .round(
                    jiff::civil::DateTimeRound::new()
                        .smallest(jiff::Unit::Minute)
                        .mode(jiff::RoundMode::Floor),
                )
                .expect("in range")
                + minute;
            while skipped < wall {
                if matches(skipped) {
                    return true;
                }
                skipped += minute;
            }
            false
        };
        // Every opening instant is on a whole minute in the zones tested.
        let mut instant = now
            .round(
                jiff::TimestampRound::new()
                    .smallest(jiff::Unit::Minute)
                    .mode(jiff::RoundMode::Floor),
            )
            .expect("in range");
        while instant > now - window.duration() {
            if opens_at(instant) {
                return true;
            }
            instant -= minute;
        }
        false
    }

    fn reference_open_any(windows: &[MaintenanceWindow], now: Timestamp) -> bool {
        windows.iter().any(|w| reference_open(w, now))
    }

    /// The window sets the property test checks at each instant: fixed
    /// times in skipped and repeated hours, an interval pattern across both,
    /// a window that spans the change, two zones merged, and occurrences of
    /// one window that chain (01:00, 01:40, 02:00, 02:40 for 50 minutes)
    /// across both changes. Durations stay short: the reference is slow.
    const WINDOW_SETS: &[&[(&str, &str, &str)]] = &[
        &[("0 2 * * SAT", "4h", "Europe/Paris")],
        &[("30 2 * * *", "1h", "Europe/Paris")],
        &[("45 2 * * *", "1h", "Europe/Paris")],
        &[("*/20 1-3 * * SUN", "45m", "America/New_York")],
        &[("0,30 2 * * *", "30m", "Australia/Sydney")],
        &[
            ("0 1 * * SUN", "4h", "Europe/Paris"),
            ("30 1 * * *", "1h", "America/New_York"),
        ],
        &[("*/40 1-2 * * *", "50m", "America/New_York")],
    ];

    /// The 2026 daylight-saving changes of the zones above: Paris, New York
    /// and Sydney, each spring forward and fall back.
    const CHANGES: [&str; 6] = [
        "2026-03-29T01:00:00Z",
        "2026-10-25T01:00:00Z",
        "2026-03-08T07:00:00Z",
        "2026-11-01T06:00:00Z",
        "2026-10-03T16:00:00Z",
        "2026-04-04T16:00:00Z",
    ];

    /// Instants anywhere in 2025-2027, or close to a daylight-saving change:
    /// on a minute grid within 4 hours, so that starts and ends are hit
    /// exactly, or to the second within a day.
    fn instants() -> impl Strategy<Value = Timestamp> {
        let start = ts("2025-01-01T00:00:00Z").as_second();
        let end = ts("2028-01-01T00:00:00Z").as_second();
        prop_oneof![
            1 => (start..end).prop_map(|s| Timestamp::from_second(s).expect("in range")),
            3 => (0..CHANGES.len(), -240i64..240).prop_map(|(change, minutes)| {
                ts(CHANGES[change]) + SignedDuration::from_mins(minutes)
            }),
            1 => (0..CHANGES.len(), -86_400i64..86_400).prop_map(|(change, seconds)| {
                ts(CHANGES[change]) + SignedDuration::from_secs(seconds)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// For every window set at a random instant: open_until agrees with
        /// the reference, next_change is the next flip of the reference and
        /// next_opening is an instant where the reference goes from closed
        /// to open.
        #[test]
        fn matches_the_reference(now in instants()) {
            for set in WINDOW_SETS {
                let windows: Vec<_> = set
                    .iter()
                    .map(|&(schedule, duration, zone)| window(schedule, duration, zone))
                    .collect();
                check_against_reference(&windows, now)?;
            }
        }
    }

    fn check_against_reference(
        windows: &[MaintenanceWindow],
        now: Timestamp,
    ) -> Result<(), TestCaseError> {
        let open_now = reference_open_any(windows, now);
        let until = open_until(windows, now);
        prop_assert_eq!(
            until.is_some(),
            open_now,
            "open_until {:?} at {}",
            until,
            now
        );
        prop_assert_eq!(is_open(windows, now), open_now);

        let change = next_change(windows, now).expect("these schedules always change");
        prop_assert!(change > now, "next_change {} <= now {}", change, now);
        // The answer flips at `change` and not before.
        prop_assert_ne!(
            reference_open_any(windows, change),
            open_now,
            "at change {}",
            change
        );
        // Spot checks that nothing flips earlier: halfway, and just before.
        let halfway = now + change.duration_since(now) / 2;
        prop_assert_eq!(
            reference_open_any(windows, halfway),
            open_now,
            "at {}",
            halfway
        );
        let just_before = change - SignedDuration::from_nanos(1);
        prop_assert_eq!(reference_open_any(windows, just_before), open_now);

        let opening = next_opening(windows, now).expect("these schedules open again");
        prop_assert!(opening > now);
        if let Some(until) = until {
            prop_assert!(opening > until);
        }
        prop_assert!(
            reference_open_any(windows, opening),
            "closed at opening {}",
            opening
        );
        prop_assert!(!reference_open_any(
            windows,
            opening - SignedDuration::from_nanos(1)
        ));
        Ok(())
    }
}
