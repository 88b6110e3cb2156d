//! Times as people read them: `2026-12-02 16:04 UTC, 3 h ago` (the journal keeps Unix seconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60
    )
}

/// How long before `now` `secs` was: `just now`, `42 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn age(secs: i64, now: i64) -> String {
    let d = now - secs;
    match d {
        i64::MIN..=-1 => "in the future".into(),
        0..=9 => "just now".into(),
        10..=119 => format!("{d} s ago"),
        120..=7_199 => format!("{} min ago", d / 60),
        7_200..=172_799 => format!("{} h ago", d / 3_600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A duration as people write one on a command line: `90` (seconds), `30s`, `5m`, `1h`,
/// `1m30s`; the error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "`{}` is not a duration: write seconds (`90`) or a number with a unit, `s`, `m` or `h` (`30s`, `5m`, `1m30s`)",
            text.escape_debug()
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        match c {
            '0'..='9' => digits.push(c),
            's' | 'm' | 'h' if !digits.is_empty() => {
                let n: u64 = digits.parse().map_err(|_| bad())?;
                let unit = match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3_600,
                };
                total = n
                    .checked_mul(unit)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(bad)?;
                digits.clear();
            }
            _ => return Err(bad()),
        }
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// `2026-12-02 16:04 UTC, 3 h ago`.
pub fn shown(secs: i64) -> String {
    format!("{}, {}", utc(secs), age(secs, now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_ages_read_like_a_person_says_them() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_764_691_440), "2025-12-02 16:04 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59 UTC");
        assert_eq!(age(100, 100), "just now");
        assert_eq!(age(100, 142), "42 s ago");
        assert_eq!(age(0, 300), "5 min ago");
        assert_eq!(age(0, 3 * 3_600 + 5), "3 h ago");
        assert_eq!(age(0, 3 * 86_400), "3 d ago");
        assert_eq!(age(10, 0), "in the future");
    }

    #[test]
    fn durations_are_read_as_written() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration(" 1m30s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "5x",
            "1.5m",
            "-5s",
            "5 m",
            "m5",
            "99999999999999999999h",
        ] {
            assert!(
                parse_duration(bad).unwrap_err().contains("not a duration"),
                "{bad}"
            );
        }
    }
}
