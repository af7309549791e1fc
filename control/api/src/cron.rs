//! CronJob schedules: the five-field cron syntax (with the `@hourly` …
//! `@yearly` macros) read by the `croner` crate, evaluated in an IANA time
//! zone from `chrono-tz`. The API server validates with it and the CronJob
//! controller schedules with it, so both agree on what a schedule means.

use std::str::FromStr as _;

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Why a schedule or time zone was refused, in upstream's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `spec.schedule` does not parse.
    #[error("{0}")]
    Schedule(String),
    /// `spec.timeZone` names no known zone.
    #[error("{0}")]
    TimeZone(String),
}

/// The time zone `spec.timeZone` names; `None` is the controller's own,
/// which is UTC here.
pub fn time_zone(name: Option<&str>) -> Result<Tz, ScheduleError> {
    let Some(name) = name else {
        return Ok(Tz::UTC);
    };
    if name.is_empty() {
        return Err(ScheduleError::TimeZone(
            "timeZone must be nil or non-empty string".to_owned(),
        ));
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(ScheduleError::TimeZone(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .to_owned(),
        ));
    }
    Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(format!("unknown time zone {name}")))
}

impl Schedule {
    /// Parse `spec.schedule` for `spec.timeZone`.
    pub fn parse(schedule: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        if schedule.contains("TZ") {
            return Err(ScheduleError::Schedule(
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead".to_owned(),
            ));
        }
        let fields: Vec<&str> = schedule.split_whitespace().collect();
        if !schedule.trim_start().starts_with('@') && fields.len() != 5 {
            // Upstream's parser's words.
            return Err(ScheduleError::Schedule(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            )));
        }
        let tz = time_zone(tz)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| ScheduleError::Schedule(e.to_string()))?;
        Ok(Self { cron, tz })
    }

    /// The time zone the schedule runs in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last scheduled time at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// `t` in the schedule's zone, as RFC 3339 (the Job annotation).
    pub fn local_rfc3339(&self, t: DateTime<Utc>) -> String {
        self.tz
            .from_utc_datetime(&t.naive_utc())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// The runs a schedule missed in `(since, now]`: how many (counted up to
/// `cap`, then `cap + 1` for "more"), and the most recent.
pub fn missed(
    s: &Schedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    cap: usize,
) -> (usize, Option<DateTime<Utc>>) {
    let Some(last) = s.last_at_or_before(now).filter(|l| *l > since) else {
        return (0, None);
    };
    let mut count = 0;
    let mut t = since;
    while let Some(n) = s.next_after(t).filter(|n| *n <= now) {
        count += 1;
        if count > cap {
            break;
        }
        t = n;
    }
    (count, Some(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn five_fields_and_macros_parse_and_others_do_not() {
        for ok in [
            "*/5 * * * *",
            "0 3 * * MON-FRI",
            "@hourly",
            "@daily",
            "30 2 1 JAN *",
        ] {
            assert!(Schedule::parse(ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "CRON_TZ=UTC 0 * * * *",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
        assert_eq!(
            Schedule::parse("not a schedule", None).err(),
            Some(ScheduleError::Schedule(
                "expected exactly 5 fields, found 3: [not a schedule]".to_owned()
            ))
        );
        assert_eq!(
            Schedule::parse("0 * * * *", Some("Mars/Olympus")).err(),
            Some(ScheduleError::TimeZone(
                "unknown time zone Mars/Olympus".to_owned()
            ))
        );
    }

    #[test]
    fn a_time_zone_moves_the_schedule() {
        let utc = Schedule::parse("0 9 * * *", None).expect("utc");
        let ny = Schedule::parse("0 9 * * *", Some("America/New_York")).expect("ny");
        let t = at("2026-01-10T00:00:00Z");
        assert_eq!(utc.next_after(t), Some(at("2026-01-10T09:00:00Z")));
        assert_eq!(ny.next_after(t), Some(at("2026-01-10T14:00:00Z")));
        assert_eq!(
            ny.local_rfc3339(at("2026-01-10T14:00:00Z")),
            "2026-01-10T09:00:00-05:00"
        );
    }

    #[test]
    fn missed_runs_are_counted_and_the_latest_kept() {
        let s = Schedule::parse("*/10 * * * *", None).expect("parse");
        let since = at("2026-01-10T00:00:00Z");
        assert_eq!(
            missed(&s, since, at("2026-01-10T00:05:00Z"), 100),
            (0, None)
        );
        assert_eq!(
            missed(&s, since, at("2026-01-10T00:35:00Z"), 100),
            (3, Some(at("2026-01-10T00:30:00Z")))
        );
        let (n, last) = missed(&s, since, at("2026-01-12T00:00:00Z"), 100);
        assert_eq!((n, last), (101, Some(at("2026-01-12T00:00:00Z"))));
    }
}
