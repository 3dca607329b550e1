//! UTC timestamps as RFC 3339 with microseconds, without a calendar crate:
//! the proleptic Gregorian conversions of Howard Hinnant's `chrono`-style
//! algorithms (days ↔ civil date).

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC day number (days since 1970-01-01) of a µs timestamp.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(86_400_000_000)
}

/// `2026-11-23T13:45:01.123456Z`
pub fn rfc3339_micros(micros: i64) -> String {
    let mut out = String::with_capacity(27);
    write_rfc3339_micros(&mut out, micros);
    out
}

/// [`rfc3339_micros`] appended to `out`, digit by digit: every audit event
/// carries one, and the formatting machinery cost more than the rest of
/// the timestamp.
pub fn write_rfc3339_micros(out: &mut String, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    if !(0..=9999).contains(&y) {
        let _ = std::fmt::Write::write_fmt(
            out,
            format_args!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
                sod / 3600,
                sod / 60 % 60,
                sod % 60
            ),
        );
        return;
    }
    // Right to left by constant division (a multiply), not by a power of
    // ten computed per digit (a real division each).
    let digits = |out: &mut String, mut v: i64, width: usize| {
        let mut buf = [b'0'; 6];
        for b in buf[..width].iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend(buf[..width].iter().map(|&b| char::from(b)));
    };
    digits(out, y, 4);
    out.push('-');
    digits(out, i64::from(mo), 2);
    out.push('-');
    digits(out, i64::from(d), 2);
    out.push('T');
    digits(out, sod / 3600, 2);
    out.push(':');
    digits(out, sod / 60 % 60, 2);
    out.push(':');
    digits(out, sod % 60, 2);
    out.push('.');
    digits(out, frac, 6);
    out.push('Z');
}

/// `20261123T134501.123456Z`: for file names (no `:`), sorts like the time.
pub fn compact_micros(micros: i64) -> String {
    rfc3339_micros(micros).replace(['-', ':'], "")
}

/// Parse `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.frac]]` with `Z`, `±HH:MM` or
/// nothing (UTC), also with a space for `T`, into µs since the epoch.
pub fn parse(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time (e.g. 2026-11-23T13:45:00Z)");
    let s = text.trim();
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    if s.len() < 10 || s.as_bytes()[4] != b'-' || s.as_bytes()[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut micros = days_from_civil(y, mo as u32, d as u32) * 86_400_000_000;
    let rest = &s[10..];
    if rest.is_empty() {
        return Ok(micros);
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    let b = rest.as_bytes();
    if b.len() < 5 || b[2] != b':' {
        return Err(bad());
    }
    let field = |r: std::ops::Range<usize>, max: i64| -> Result<i64, String> {
        let part = rest.get(r).ok_or_else(bad)?;
        let v: i64 = part
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
            .ok_or_else(bad)?;
        (v <= max).then_some(v).ok_or_else(bad)
    };
    let (h, mi) = (field(0..2, 23)?, field(3..5, 59)?);
    let mut i = 5;
    let mut sec = 0;
    if b.get(i) == Some(&b':') {
        sec = field(6..8, 60)?;
        i = 8;
    }
    let mut frac = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &rest[start..i];
        if digits.is_empty() {
            return Err(bad());
        }
        let six: String = digits.chars().chain("000000".chars()).take(6).collect();
        frac = six.parse().map_err(|_| bad())?;
    }
    micros += ((h * 60 + mi) * 60 + sec) * 1_000_000 + frac;
    let zone = &rest[i..];
    let offset = match zone {
        "" | "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let oh: i64 = z[1..3].parse().map_err(|_| bad())?;
            let om: i64 = z[4..6].parse().map_err(|_| bad())?;
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om) * 60_000_000
        }
        _ => return Err(bad()),
    };
    Ok(micros - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = 1_795_000_000_123_456;
        let s = rfc3339_micros(t);
        assert_eq!(s, "2026-11-18T11:06:40.123456Z");
        assert_eq!(parse(&s), Ok(t));
        assert_eq!(compact_micros(t), "20261118T110640.123456Z");
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn digit_writer_matches_the_format_machinery() {
        let reference = |micros: i64| {
            let secs = micros.div_euclid(1_000_000);
            let frac = micros.rem_euclid(1_000_000);
            let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
            let sod = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
                sod / 3600,
                sod / 60 % 60,
                sod % 60
            )
        };
        let edges = [
            -1,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            86_399_999_999,
        ];
        let steps = (0..2000i64).map(|i| i * 7_919_000_003_117 - 3_000_000_000_000_000);
        for t in edges.into_iter().chain(steps) {
            assert_eq!(rfc3339_micros(t), reference(t), "{t}");
        }
    }

    #[test]
    fn parses_dates_offsets_and_rejects_garbage() {
        assert_eq!(parse("1970-01-02"), Ok(86_400_000_000));
        assert_eq!(parse("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse("1970-01-01 00:01"), Ok(60_000_000));
        assert_eq!(parse("1970-01-01T00:00:00.5Z"), Ok(500_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-01-01T25:00",
            "2026-01-01T00:00+1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
