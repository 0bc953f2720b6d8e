//! The values the flags take: durations, a time to select from, image sizes, image formats.
//! Each error is one line saying which form was expected; clap puts the flag's name before it.

use chrono::{DateTime, Utc};
use imgstream::domain::ImageFormat;
use imgstream::produce::RecordKey;
use std::time::Duration;

/// A duration as people write it, through humantime: `500ms`, `30s`, `90min`, `1h30m`, `3d`.
/// The forms taken before humantime still work, since scripts and tests use them: a bare number
/// of seconds (`3`, `0.5`), and a decimal number of ms, s, m or h (`1.5h`), which humantime
/// refuses.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    humantime::parse_duration(s)
        .ok()
        .or_else(|| decimal_duration(s))
        .ok_or_else(|| format!("{s:?} is not a duration like 500ms, 30s, 90min, 1h30m or 3d"))
}

fn decimal_duration(s: &str) -> Option<Duration> {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    // Refuses negative, NaN and too large for a Duration, where from_secs_f64 would panic.
    Duration::try_from_secs_f64(secs).ok()
}

/// A time to select from: a time ago (`30m`, `2h`, `3d`, any [`duration`]) or an RFC 3339
/// timestamp.
pub fn since(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&Utc));
    }
    let ago = duration(s).map_err(|_| {
        format!("{s:?} is neither a time ago (30m, 2h, 3d) nor an RFC 3339 timestamp")
    })?;
    // A time ago past the calendar's start is an error to report, not a panic in the subtraction.
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("{s:?} ago is before any time this program can name"))
}

/// Image side lengths: one size (`512`) or an ascending range (`256-1024`, `256:1024`).
pub fn size_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a size like 512 or 256-1024");
    let (a, b) = match s.split_once(['-', ':']) {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if a == 0 || a > b || b > 16384 {
        return Err(format!("{s:?}: sizes must be 1..=16384 and ascending"));
    }
    Ok((a, b))
}

/// A list of formats as one argument value (`png,jpeg`), which clap must not split into many.
#[derive(Clone, Debug, PartialEq)]
pub struct Formats(pub Vec<ImageFormat>);

/// `png`, `jpeg`, `webp`, a comma-separated list of them, or `mix` for all three.
pub fn formats(s: &str) -> Result<Formats, String> {
    if s.eq_ignore_ascii_case("mix") {
        return Ok(Formats(ImageFormat::ALL.to_vec()));
    }
    s.split(',')
        .map(|f| {
            ImageFormat::from_name(f.trim())
                .ok_or_else(|| format!("{f:?} is not png, jpeg, webp or mix"))
        })
        .collect::<Result<_, _>>()
        .map(Formats)
}

/// `produce --key`: what a record is keyed by.
pub fn record_key(s: &str) -> Result<RecordKey, String> {
    match s {
        "source" => Ok(RecordKey::Source),
        "image" => Ok(RecordKey::Image),
        other => Err(format!("{other:?} is not source or image")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    fn secs(s: &str) -> f64 {
        duration(s).unwrap().as_secs_f64()
    }

    #[test]
    fn durations_take_days_minutes_and_compound_forms() {
        assert_eq!(duration("3d"), Ok(Duration::from_secs(3 * DAY)));
        assert_eq!(duration("90min"), Ok(Duration::from_secs(90 * MIN)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(HOUR + 30 * MIN)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(HOUR + 30 * MIN)));
        assert_eq!(duration("2weeks"), Ok(Duration::from_secs(14 * DAY)));
    }

    #[test]
    fn durations_keep_the_forms_taken_before_humantime() {
        assert_eq!(secs("3"), 3.0);
        assert_eq!(secs("0.5"), 0.5);
        assert_eq!(secs("0"), 0.0);
        assert_eq!(secs("30s"), 30.0);
        assert_eq!(secs("0s"), 0.0);
        assert_eq!(secs("15m"), 900.0);
        assert_eq!(secs("2h"), 7200.0);
        assert_eq!(secs("250ms"), 0.25);
        assert_eq!(secs("1.5h"), 5400.0);
        assert_eq!(secs("0.5m"), 30.0);
        assert_eq!(secs(" 20 "), 20.0);
    }

    #[test]
    fn a_bad_duration_is_one_line_naming_the_forms_taken() {
        for bad in [
            "",
            "3x",
            "soon",
            "-1",
            "-5s",
            "1e400",
            "NaN",
            "s",
            "5 parsecs",
        ] {
            let error = duration(bad).unwrap_err();
            assert!(
                error.contains("30s") && error.contains("3d"),
                "{bad:?}: {error}"
            );
            assert!(!error.contains('\n'), "{bad:?}: {error}");
        }
    }

    #[test]
    fn since_takes_a_time_ago_in_any_duration_form() {
        let before = Utc::now();
        let at = since("3d").unwrap();
        let after = Utc::now();
        let three_days = chrono::Duration::days(3);
        assert!(before - three_days <= at && at <= after - three_days);
        let at = since("90min").unwrap();
        assert!(at <= Utc::now() - chrono::Duration::minutes(90));
        assert!(since("2").unwrap() <= Utc::now() - chrono::Duration::seconds(2));
    }

    #[test]
    fn since_takes_an_rfc3339_timestamp_in_any_offset() {
        let at = since("2026-11-27T10:00:00+01:00").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-11-27T09:00:00+00:00");
    }

    #[test]
    fn since_refuses_anything_else_in_one_line() {
        for bad in ["yesterday", "2026-11-27", "3x", ""] {
            let error = since(bad).unwrap_err();
            assert!(
                error.contains("RFC 3339") && error.contains("3d"),
                "{error}"
            );
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn since_a_time_before_the_calendar_is_an_error_not_a_panic() {
        for far in ["1000000years", "100000000000000s"] {
            let error = since(far).unwrap_err();
            assert!(error.contains(far) && !error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn sizes_are_one_number_or_an_ascending_range() {
        assert_eq!(size_range("512"), Ok((512, 512)));
        assert_eq!(size_range("256-1024"), Ok((256, 1024)));
        assert_eq!(size_range("256:1024"), Ok((256, 1024)));
        assert_eq!(size_range(" 320 - 1280 "), Ok((320, 1280)));
        assert_eq!(size_range("16384"), Ok((16384, 16384)));
    }

    #[test]
    fn sizes_out_of_range_or_descending_are_refused() {
        for bad in ["0", "1024-256", "16385", "1-20000", "0-10"] {
            assert!(size_range(bad).unwrap_err().contains("1..=16384"), "{bad}");
        }
        for bad in ["big", "256-", "-", "1.5", "-3"] {
            assert!(size_range(bad).unwrap_err().contains("256-1024"), "{bad}");
        }
    }

    #[test]
    fn formats_are_a_list_or_mix() {
        assert_eq!(formats("mix"), Ok(Formats(ImageFormat::ALL.to_vec())));
        assert_eq!(formats("MIX"), Ok(Formats(ImageFormat::ALL.to_vec())));
        assert_eq!(formats("png"), Ok(Formats(vec![ImageFormat::Png])));
        assert_eq!(
            formats("png, jpeg"),
            Ok(Formats(vec![ImageFormat::Png, ImageFormat::Jpeg]))
        );
        let error = formats("png,gif").unwrap_err();
        assert_eq!(error, "\"gif\" is not png, jpeg, webp or mix");
    }
}
