//! Calendar months as unix-millisecond ranges, in UTC. Small enough to own rather than add a
//! date crate: Howard Hinnant's `days_from_civil` / `civil_from_days` (proleptic Gregorian).

use super::LedgerError;

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of the date `y-m-d` (`m` in 1..=12, `d` in 1..=31).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The `(year, month, day)` of a day counted from 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn range(y: i64, m: u32) -> (i64, i64) {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (
        days_from_civil(y, m, 1) * MS_PER_DAY,
        days_from_civil(ny, nm, 1) * MS_PER_DAY,
    )
}

/// `"2026-11"` -> `[from_ms, to_ms)`: the first millisecond of the month in UTC and the first
/// of the next.
pub fn month_range(month: &str) -> Result<(i64, i64), LedgerError> {
    let bad = || LedgerError::BadMonth(month.to_string());
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(y, 4) || !digits(m, 2) {
        return Err(bad());
    }
    let (y, m): (i64, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) {
        return Err(bad());
    }
    Ok(range(y, m))
}

/// The `[from_ms, to_ms)` of the UTC month holding `time_ms`: what the server sums at
/// start-up to restore each tenant's month-to-date charges.
pub fn month_range_of(time_ms: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(time_ms.div_euclid(MS_PER_DAY));
    range(y, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_day_zero() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn known_dates_match_unix_time() {
        // `date -u -d 2026-11-01 +%s` = 1793491200; 2000-03-01 = 951868800.
        assert_eq!(days_from_civil(2026, 11, 1) * 86_400, 1_793_491_200);
        assert_eq!(days_from_civil(2000, 3, 1) * 86_400, 951_868_800);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn leap_years_have_a_29th_of_february() {
        let feb = |y| days_from_civil(y, 3, 1) - days_from_civil(y, 2, 1);
        assert_eq!(feb(2024), 29);
        assert_eq!(feb(2000), 29); // divisible by 400
        assert_eq!(feb(1900), 28); // by 100, not 400
        assert_eq!(feb(2026), 28);
    }

    #[test]
    fn civil_from_days_inverts_days_from_civil() {
        for z in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn month_range_is_half_open_in_utc() {
        let (from, to) = month_range("2026-11").unwrap();
        assert_eq!(from, 1_793_491_200_000);
        assert_eq!(to - from, 30 * MS_PER_DAY);
    }

    #[test]
    fn december_ends_at_next_year() {
        let (from, to) = month_range("2026-12").unwrap();
        assert_eq!(to, days_from_civil(2027, 1, 1) * MS_PER_DAY);
        assert_eq!(to - from, 31 * MS_PER_DAY);
    }

    #[test]
    fn leap_february_has_29_days() {
        let (from, to) = month_range("2028-02").unwrap();
        assert_eq!(to - from, 29 * MS_PER_DAY);
    }

    #[test]
    fn malformed_months_are_rejected() {
        for m in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            "2026-11-01",
            "",
        ] {
            assert!(month_range(m).is_err(), "{m}");
        }
    }

    #[test]
    fn month_of_a_time_contains_it() {
        let t = 1_793_491_200_000 + 5 * MS_PER_DAY + 123;
        assert_eq!(month_range_of(t), month_range("2026-11").unwrap());
        assert_eq!(
            month_range_of(1_793_491_200_000 - 1),
            month_range("2026-10").unwrap()
        );
    }
}
