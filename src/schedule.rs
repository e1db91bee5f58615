//! When a `WorkflowSchedule` fires: its cron pattern (or `@every`) in an IANA time zone, between
//! `startAt` and `endAt`, and what to do about times missed while the controller was away. No
//! Kubernetes here: the controller passes the spec's text and the clock in, so every rule is
//! unit-tested with fixed instants.
//!
//! Cron patterns are parsed and searched by the `croner` crate on `jiff`'s zoned times, with
//! jiff's bundled copy of the IANA time zone database. Across daylight-saving changes it does as
//! Vixie cron does (see `docs/schedules.md`):
//! - a time that does not exist (spring forward) runs at the first minute after the gap when the
//!   pattern names a fixed minute and hour (`30 2 * * *` runs at 03:00 that day); patterns with
//!   `*` or a step in the minute or hour fields simply have no times inside the gap;
//! - a time that happens twice (fall back) runs once, at its first occurrence, when the pattern
//!   names a fixed minute and hour; other patterns follow the real clock through both passes
//!   (`0 * * * *` still runs once per real hour).
//!
//! A run is named after the real instant it was scheduled for (Unix minutes), so a time that
//! happens twice on the wall clock still gets two distinct names only if it is two real times.

use crate::engine::duration::parse_duration;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use std::time::Duration;

/// The longest name a schedule may have: a label value (its runs carry it as one).
pub const MAX_NAME: usize = 63;

/// The time zone of a schedule that names none.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// A schedule's text that cannot work. Each names the field and says what would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("spec.schedule {text:?}: {message}")]
    InvalidSchedule { text: String, message: String },
    #[error("spec.endAt must be after spec.startAt")]
    InvalidWindow,
    #[error(
        "metadata.name {name:?} is longer than {MAX_NAME} characters: it is the value of the label \
         devset.io/schedule on the schedule's runs; use a shorter name"
    )]
    InvalidName { name: String },
    #[error(
        "spec.timeZone {name:?} is not a time zone of the IANA database; use a name such as UTC, \
         Europe/Paris or America/New_York"
    )]
    InvalidTimeZone { name: String },
}

impl ScheduleError {
    /// The reason of the `Ready` condition: `InvalidSchedule` or `InvalidTimeZone`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSchedule { .. } => "InvalidSchedule",
            Self::InvalidTimeZone { .. } => "InvalidTimeZone",
            Self::InvalidWindow => "InvalidWindow",
            Self::InvalidName { .. } => "InvalidName",
        }
    }

    /// The field at fault: `spec.schedule` or `spec.timeZone`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::InvalidSchedule { .. } => "spec.schedule",
            Self::InvalidTimeZone { .. } => "spec.timeZone",
            Self::InvalidWindow => "spec.endAt",
            Self::InvalidName { .. } => "metadata.name",
        }
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    Cron(Box<Cron>),
    /// `@every D`: every `period` seconds from the anchor.
    Every {
        period: i64,
    },
}

/// A parsed schedule: the times it fires, in real time.
#[derive(Debug, Clone)]
pub struct Schedule {
    pattern: Pattern,
    tz: TimeZone,
    /// `@every` counts from here: `startAt`, or else the Unix epoch (so that `@every 10m` fires
    /// at :00, :10, … and the times do not depend on when the controller started).
    anchor: Timestamp,
}

/// The nicknames a schedule may use besides five cron fields.
const NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

impl Schedule {
    /// Parses `schedule` (five cron fields, `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`/`@annually`, or `@every DURATION`) in `time_zone` (an IANA name; `None` or
    /// empty is UTC). `start_at` anchors `@every`.
    pub fn parse(
        schedule: &str,
        time_zone: Option<&str>,
        start_at: Option<Timestamp>,
    ) -> Result<Schedule, ScheduleError> {
        let name = time_zone
            .filter(|z| !z.trim().is_empty())
            .unwrap_or(DEFAULT_TIME_ZONE);
        let tz = TimeZone::get(name).map_err(|_| ScheduleError::InvalidTimeZone {
            name: name.to_owned(),
        })?;
        let invalid = |message: String| ScheduleError::InvalidSchedule {
            text: schedule.to_owned(),
            message,
        };
        let text = schedule.trim();
        let pattern = if let Some(d) = text.strip_prefix("@every") {
            Pattern::Every {
                period: every_period(d.trim()).map_err(invalid)?,
            }
        } else if text.starts_with('@') {
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(text)) {
                return Err(invalid(format!(
                    "unknown nickname; use {}, or @every DURATION (e.g. @every 10m)",
                    NICKNAMES.join(", ")
                )));
            }
            Pattern::Cron(Box::new(cron(text).map_err(invalid)?))
        } else {
            let fields = text.split_whitespace().count();
            if fields != 5 {
                return Err(invalid(format!(
                    "has {fields} field(s); a cron schedule has 5: minute hour day-of-month month \
                     day-of-week (e.g. \"0 9 * * MON\"), or use @hourly, @daily, @weekly, \
                     @monthly, @yearly or @every DURATION"
                )));
            }
            Pattern::Cron(Box::new(cron(text).map_err(invalid)?))
        };
        let s = Schedule {
            pattern,
            tz,
            anchor: start_at.unwrap_or(Timestamp::UNIX_EPOCH),
        };
        // A pattern such as "0 0 30 2 *" parses but never comes.
        if s.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(invalid("matches no time at all".into()));
        }
        Ok(s)
    }

    /// The first time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.pattern {
            Pattern::Every { period } => {
                let k = steps(self.anchor, t, *period).checked_add(1)?;
                self.every_at(*period, k.max(0))
            }
            Pattern::Cron(c) => {
                let z = whole_second(t).to_zoned(self.tz.clone());
                c.find_next_occurrence(&z, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }

    /// The latest time at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.pattern {
            Pattern::Every { period } => self.every_at(*period, steps(self.anchor, t, *period)),
            Pattern::Cron(c) => {
                let z = whole_second(t).to_zoned(self.tz.clone());
                c.find_previous_occurrence(&z, true)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }

    /// The `k`th time of `@every` (the anchor is the 0th; there is none before it).
    fn every_at(&self, period: i64, k: i64) -> Option<Timestamp> {
        if k < 0 {
            return None;
        }
        let secs = self
            .anchor
            .as_second()
            .checked_add(k.checked_mul(period)?)?;
        Timestamp::from_second(secs).ok()
    }
}

fn cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| e.to_string())
}

/// The period of `@every D` in whole seconds, at least 1.
fn every_period(d: &str) -> Result<i64, String> {
    if d.is_empty() {
        return Err("@every needs a duration, e.g. @every 10m".into());
    }
    let p = parse_duration(d).map_err(|e| format!("@every: {e}"))?;
    if p.subsec_nanos() != 0 || p < Duration::from_secs(1) {
        return Err(format!(
            "@every {d}: the period must be a whole number of seconds, at least 1s"
        ));
    }
    i64::try_from(p.as_secs()).map_err(|_| format!("@every {d}: too long"))
}

/// How many whole periods lie between `anchor` and `t` (rounded down; negative before it).
fn steps(anchor: Timestamp, t: Timestamp, period: i64) -> i64 {
    let d = t.as_second() - anchor.as_second();
    let d = if t.subsec_nanosecond() < 0 { d - 1 } else { d };
    d.div_euclid(period)
}

fn whole_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// The limits of a schedule besides its pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// No time before this one fires.
    pub start_at: Option<Timestamp>,
    /// No time at or after this one fires.
    pub end_at: Option<Timestamp>,
    /// A time is fired at most this late; later, it is missed.
    pub deadline: Option<Duration>,
}

impl Window {
    fn allows(&self, t: Timestamp) -> bool {
        self.start_at.is_none_or(|s| t >= s) && self.end_at.is_none_or(|e| t < e)
    }
}

/// A schedule's fields as the spec has them, and its name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub schedule: &'a str,
    pub time_zone: Option<&'a str>,
    pub start_at: Option<Timestamp>,
    pub end_at: Option<Timestamp>,
    pub starting_deadline_seconds: Option<i64>,
}

impl Spec<'_> {
    /// The schedule and its window, or the first thing wrong with them.
    pub fn parse(&self) -> Result<(Schedule, Window), ScheduleError> {
        if self.name.len() > MAX_NAME {
            return Err(ScheduleError::InvalidName {
                name: self.name.to_owned(),
            });
        }
        if let (Some(s), Some(e)) = (self.start_at, self.end_at)
            && e <= s
        {
            return Err(ScheduleError::InvalidWindow);
        }
        let schedule = Schedule::parse(self.schedule, self.time_zone, self.start_at)?;
        let window = Window {
            start_at: self.start_at,
            end_at: self.end_at,
            deadline: self
                .starting_deadline_seconds
                .map(|s| Duration::from_secs(s.max(0).unsigned_abs())),
        };
        Ok((schedule, window))
    }
}

/// What is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing to do before [`Plan::next`].
    Nothing,
    /// Fire the run of this scheduled time.
    Fire(Timestamp),
    /// This time came and went longer ago than the starting deadline: skip it.
    Missed {
        time: Timestamp,
        late: SignedDuration,
    },
}

/// What a schedule does now, and when it is due next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub due: Due,
    /// The next time after now that can fire; `None` after `endAt` or when no time is left.
    pub next: Option<Timestamp>,
}

/// What `schedule` does at `now`, when every time up to `handled` has already been dealt with
/// (the status' `lastScheduleTime`, or the schedule's creation). Of the times missed since then
/// (the controller was down, the clock jumped), only the most recent can fire, and only within
/// the starting deadline; older ones are dropped without a run.
pub fn plan(schedule: &Schedule, window: &Window, handled: Timestamp, now: Timestamp) -> Plan {
    let upper = match window.end_at {
        Some(end) if end <= now => end - SignedDuration::from_nanos(1),
        _ => now,
    };
    let due = match schedule.latest_at_or_before(upper) {
        Some(t) if t > handled && window.allows(t) => {
            let late = now.duration_since(t);
            match window.deadline {
                Some(d) if late > SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX) => {
                    Due::Missed { time: t, late }
                }
                _ => Due::Fire(t),
            }
        }
        _ => Due::Nothing,
    };
    let from = now.max(handled);
    let next = match window.start_at {
        Some(s) if s > from => schedule.next_after(s - SignedDuration::from_nanos(1)),
        _ => schedule.next_after(from),
    }
    .filter(|t| window.allows(*t));
    Plan { due, next }
}

/// The name of the run a schedule fires for `time`: `SCHEDULE-<Unix minutes>`, plus `-SS` (the
/// second within the minute) for an `@every` time that is not on a whole minute. The same time
/// always gives the same name, so a second attempt at it meets `AlreadyExists`.
pub fn run_name(schedule: &str, time: Timestamp) -> String {
    let secs = time.as_second();
    let (minutes, second) = (secs.div_euclid(60), secs.rem_euclid(60));
    if second == 0 {
        format!("{schedule}-{minutes}")
    } else {
        format!("{schedule}-{minutes}-{second:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn parse(s: &str, tz: &str) -> Schedule {
        Schedule::parse(s, Some(tz), None).unwrap()
    }

    /// The first `n` times after `from`, as UTC text.
    fn times(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = ts(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t).unwrap();
            out.push(t.to_string());
        }
        out
    }

    #[test]
    fn five_fields_and_nicknames_in_utc_by_default() {
        let s = Schedule::parse("0 9 * * MON", None, None).unwrap();
        // 2027-01-04 is a Monday.
        assert_eq!(
            times(&s, "2027-01-01T00:00:00Z", 2),
            ["2027-01-04T09:00:00Z", "2027-01-11T09:00:00Z"]
        );
        let h = Schedule::parse("@hourly", Some(""), None).unwrap();
        assert_eq!(
            times(&h, "2027-01-01T00:30:00Z", 1),
            ["2027-01-01T01:00:00Z"]
        );
        for (nick, first) in [
            ("@daily", "2027-01-02T00:00:00Z"),
            ("@weekly", "2027-01-03T00:00:00Z"),
            ("@monthly", "2027-02-01T00:00:00Z"),
            ("@yearly", "2028-01-01T00:00:00Z"),
            ("@ANNUALLY", "2028-01-01T00:00:00Z"),
        ] {
            assert_eq!(
                times(&parse(nick, "UTC"), "2027-01-01T00:00:00Z", 1),
                [first]
            );
        }
    }

    #[test]
    fn bad_text_names_the_field_and_the_fix() {
        let err = |s: &str, tz: &str| Schedule::parse(s, Some(tz), None).unwrap_err();
        let e = err("0 0 9 * * MON", "UTC");
        assert_eq!(
            (e.reason(), e.field()),
            ("InvalidSchedule", "spec.schedule")
        );
        assert!(
            e.to_string()
                .contains("has 6 field(s); a cron schedule has 5"),
            "{e}"
        );
        assert!(err("* * * *", "UTC").to_string().contains("has 4 field(s)"));
        assert!(
            err("61 * * * *", "UTC")
                .to_string()
                .starts_with("spec.schedule \"61 * * * *\": ")
        );
        assert!(
            err("@reboot", "UTC")
                .to_string()
                .contains("unknown nickname")
        );
        assert!(
            err("@every", "UTC")
                .to_string()
                .contains("needs a duration")
        );
        assert!(
            err("@every 10 minutes", "UTC")
                .to_string()
                .contains("invalid duration")
        );
        assert!(
            err("@every 1.5s", "UTC")
                .to_string()
                .contains("whole number of seconds")
        );
        assert!(err("@every 0s", "UTC").to_string().contains("at least 1s"));
        assert!(
            err("0 0 30 2 *", "UTC")
                .to_string()
                .contains("matches no time")
        );
        let long = "x".repeat(64);
        let e = Spec {
            name: &long,
            schedule: "@daily",
            ..Default::default()
        }
        .parse()
        .unwrap_err();
        assert_eq!((e.reason(), e.field()), ("InvalidName", "metadata.name"));
        let ok = Spec {
            name: &long[..63],
            schedule: "@daily",
            ..Default::default()
        };
        assert!(ok.parse().is_ok());
        let e = err("@daily", "Mars/Olympus_Mons");
        assert_eq!(
            (e.reason(), e.field()),
            ("InvalidTimeZone", "spec.timeZone")
        );
        assert!(
            e.to_string()
                .contains("\"Mars/Olympus_Mons\" is not a time zone")
        );
    }

    #[test]
    fn paris_spring_forward_runs_a_fixed_time_once_right_after_the_gap() {
        // 2027-03-28: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
        let s = parse("30 2 * * *", "Europe/Paris");
        assert_eq!(
            times(&s, "2027-03-26T12:00:00Z", 3),
            [
                "2027-03-27T01:30:00Z", // 02:30 CET
                "2027-03-28T01:00:00Z", // 03:00 CEST, the first minute after the gap
                "2027-03-29T00:30:00Z", // 02:30 CEST
            ]
        );
        // Every 30 minutes: nothing inside the gap, nothing lost around it.
        let s = parse("*/30 * * * *", "Europe/Paris");
        assert_eq!(
            times(&s, "2027-03-28T00:15:00Z", 3),
            [
                "2027-03-28T00:30:00Z", // 01:30 CET
                "2027-03-28T01:00:00Z", // 03:00 CEST
                "2027-03-28T01:30:00Z", // 03:30 CEST
            ]
        );
    }

    #[test]
    fn paris_fall_back_runs_a_fixed_time_once_and_hourly_every_real_hour() {
        // 2027-10-31: 03:00 CEST becomes 02:00 CET; 02:00–02:59 happens twice.
        let s = parse("30 2 * * *", "Europe/Paris");
        assert_eq!(
            times(&s, "2027-10-30T12:00:00Z", 2),
            [
                "2027-10-31T00:30:00Z", // 02:30 CEST, the first pass only
                "2027-11-01T01:30:00Z", // 02:30 CET the next day
            ]
        );
        let h = parse("0 * * * *", "Europe/Paris");
        assert_eq!(
            times(&h, "2027-10-30T23:30:00Z", 4),
            [
                "2027-10-31T00:00:00Z", // 02:00 CEST
                "2027-10-31T01:00:00Z", // 02:00 CET
                "2027-10-31T02:00:00Z", // 03:00 CET
                "2027-10-31T03:00:00Z",
            ]
        );
    }

    #[test]
    fn new_york_changes_lose_and_double_nothing() {
        // 2027-03-14: 02:00 EST becomes 03:00 EDT.
        let h = parse("0 * * * *", "America/New_York");
        assert_eq!(
            times(&h, "2027-03-14T05:30:00Z", 3),
            [
                "2027-03-14T06:00:00Z", // 01:00 EST
                "2027-03-14T07:00:00Z", // 03:00 EDT: one real hour later
                "2027-03-14T08:00:00Z",
            ]
        );
        let d = parse("15 2 * * *", "America/New_York");
        assert_eq!(
            times(&d, "2027-03-13T12:00:00Z", 2),
            ["2027-03-14T07:00:00Z", "2027-03-15T06:15:00Z"]
        );
        // 2027-11-07: 02:00 EDT becomes 01:00 EST; 01:30 happens twice, runs once.
        let f = parse("30 1 * * *", "America/New_York");
        assert_eq!(
            times(&f, "2027-11-06T12:00:00Z", 2),
            ["2027-11-07T05:30:00Z", "2027-11-08T06:30:00Z"]
        );
        // 9:00 on weekdays stays 9:00 local across the change.
        let w = parse("0 9 * * 1-5", "America/New_York");
        assert_eq!(
            times(&w, "2027-11-05T00:00:00Z", 2),
            ["2027-11-05T13:00:00Z", "2027-11-08T14:00:00Z"]
        );
    }

    #[test]
    fn every_counts_from_the_epoch_or_from_start_at() {
        let s = parse("@every 10m", "Europe/Paris");
        assert_eq!(
            times(&s, "2027-01-01T00:03:00Z", 2),
            ["2027-01-01T00:10:00Z", "2027-01-01T00:20:00Z"]
        );
        assert_eq!(
            s.latest_at_or_before(ts("2027-01-01T00:10:00Z")),
            Some(ts("2027-01-01T00:10:00Z"))
        );
        let start = ts("2027-01-01T00:03:07Z");
        let s = Schedule::parse("@every 1h30m", None, Some(start)).unwrap();
        assert_eq!(
            times(&s, "2027-01-01T00:00:00Z", 2),
            ["2027-01-01T00:03:07Z", "2027-01-01T01:33:07Z"]
        );
        assert_eq!(s.latest_at_or_before(ts("2027-01-01T00:03:06.5Z")), None);
        assert_eq!(
            s.latest_at_or_before(ts("2027-01-01T01:33:06.999Z")),
            Some(start)
        );
    }

    #[test]
    fn start_at_and_end_at_bound_the_times() {
        let s = parse("0 * * * *", "UTC");
        let w = Window {
            start_at: Some(ts("2027-01-01T10:30:00Z")),
            end_at: Some(ts("2027-01-01T12:00:00Z")),
            deadline: None,
        };
        let created = ts("2026-12-01T00:00:00Z");
        // Before startAt: nothing due, the first time after it is next.
        let p = plan(&s, &w, created, ts("2027-01-01T09:10:00Z"));
        assert_eq!(p.due, Due::Nothing);
        assert_eq!(p.next, Some(ts("2027-01-01T11:00:00Z")));
        // 10:00 is before startAt even though it was missed.
        let p = plan(&s, &w, created, ts("2027-01-01T10:45:00Z"));
        assert_eq!(
            (p.due, p.next),
            (Due::Nothing, Some(ts("2027-01-01T11:00:00Z")))
        );
        let p = plan(&s, &w, created, ts("2027-01-01T11:00:01Z"));
        assert_eq!(p.due, Due::Fire(ts("2027-01-01T11:00:00Z")));
        // endAt is exclusive: 12:00 never fires, and nothing is next.
        let p = plan(
            &s,
            &w,
            ts("2027-01-01T11:00:00Z"),
            ts("2027-01-01T12:00:30Z"),
        );
        assert_eq!((p.due, p.next), (Due::Nothing, None));
        // A controller back after endAt still fires the last time before it.
        let p = plan(&s, &w, created, ts("2027-01-01T12:20:00Z"));
        assert_eq!(
            (p.due, p.next),
            (Due::Fire(ts("2027-01-01T11:00:00Z")), None)
        );
    }

    #[test]
    fn after_a_clock_jump_only_the_latest_missed_time_fires_within_the_deadline() {
        let s = parse("*/5 * * * *", "UTC");
        let handled = ts("2027-01-01T10:00:00Z");
        let mut w = Window::default();
        // Back after three hours: 13:05 fires, the 35 times in between do not.
        let p = plan(&s, &w, handled, ts("2027-01-01T13:06:00Z"));
        assert_eq!(p.due, Due::Fire(ts("2027-01-01T13:05:00Z")));
        assert_eq!(p.next, Some(ts("2027-01-01T13:10:00Z")));
        // With a deadline of 30s, 13:05 is a minute late: missed, and 13:10 is next.
        w.deadline = Some(Duration::from_secs(30));
        let p = plan(&s, &w, handled, ts("2027-01-01T13:06:00Z"));
        assert_eq!(
            p.due,
            Due::Missed {
                time: ts("2027-01-01T13:05:00Z"),
                late: SignedDuration::from_secs(60)
            }
        );
        assert_eq!(p.next, Some(ts("2027-01-01T13:10:00Z")));
        // Within the deadline it fires.
        let p = plan(&s, &w, handled, ts("2027-01-01T13:05:20Z"));
        assert_eq!(p.due, Due::Fire(ts("2027-01-01T13:05:00Z")));
        // A time already handled never fires again, even when the clock goes back.
        let p = plan(
            &s,
            &w,
            ts("2027-01-01T13:05:00Z"),
            ts("2027-01-01T13:05:10Z"),
        );
        assert_eq!(p.due, Due::Nothing);
        let p = plan(
            &s,
            &w,
            ts("2027-01-01T13:05:00Z"),
            ts("2027-01-01T12:58:00Z"),
        );
        assert_eq!(
            (p.due, p.next),
            (Due::Nothing, Some(ts("2027-01-01T13:10:00Z")))
        );
    }

    #[test]
    fn run_names_are_the_scheduled_unix_minute() {
        // 2027-01-01T00:00:00Z is 1798761600 s, 29979360 min.
        assert_eq!(
            run_name("nightly", ts("2027-01-01T00:00:00Z")),
            "nightly-29979360"
        );
        assert_eq!(
            run_name("fast", ts("2027-01-01T00:00:05Z")),
            "fast-29979360-05"
        );
        // Both passes of a repeated wall-clock minute are distinct real minutes.
        assert_ne!(
            run_name("h", ts("2027-10-31T00:00:00Z")),
            run_name("h", ts("2027-10-31T01:00:00Z"))
        );
    }
}
