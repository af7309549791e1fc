//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) as integers.
//!
//! The scheduler, LimitRanger and ResourceQuota compare in integers, as
//! upstream does: CPU in millicores, everything else in units (bytes,
//! pods). Fractions round up, as `Quantity.MilliValue()`/`Value()` do.

/// A quantity that does not parse, or does not fit in an `i64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid quantity")]
pub struct InvalidQuantity(pub String);

/// The value of `s` times `scale` (1000 for milli-units, 1 for units),
/// rounded up.
fn parse_scaled(s: &str, scale: i128) -> Result<i64, InvalidQuantity> {
    let bad = || InvalidQuantity(s.to_owned());
    let t = s.trim();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    // Ridiculously long inputs would overflow i128 below anyway.
    if int.len() + frac.len() > 30 {
        return Err(bad());
    }
    let mut mantissa: i128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa * 10 + i128::from(c - b'0');
    }
    // value = mantissa * num / den
    let mut num: i128 = scale;
    let mut den: i128 = 10i128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
    let pow = |base: i128, e: u32| base.checked_pow(e).ok_or_else(bad);
    match suffix {
        "" => {}
        "Ki" => num *= 1 << 10,
        "Mi" => num *= 1 << 20,
        "Gi" => num *= 1 << 30,
        "Ti" => num *= 1 << 40,
        "Pi" => num *= 1 << 50,
        "Ei" => num *= 1 << 60,
        "n" => den *= 1_000_000_000,
        "u" => den *= 1_000_000,
        "m" => den *= 1_000,
        "k" => num *= 1_000,
        "M" => num *= 1_000_000,
        "G" => num *= pow(10, 9)?,
        "T" => num *= pow(10, 12)?,
        "P" => num *= pow(10, 15)?,
        "E" => num *= pow(10, 18)?,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| bad())?;
            if e.unsigned_abs() > 30 {
                return Err(bad());
            }
            if e >= 0 {
                num *= pow(10, e.unsigned_abs())?;
            } else {
                den *= pow(10, e.unsigned_abs())?;
            }
        }
        _ => return Err(bad()),
    }
    let top = mantissa.checked_mul(num).ok_or_else(bad)?;
    // Round away from zero, as upstream rounds up the magnitude.
    let v = (top + den - 1) / den;
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| bad())
}

/// Millicores (or milli-units) of a quantity.
pub fn milli(s: &str) -> Result<i64, InvalidQuantity> {
    parse_scaled(s, 1000)
}

/// Whole units (bytes, pods) of a quantity.
pub fn units(s: &str) -> Result<i64, InvalidQuantity> {
    parse_scaled(s, 1)
}

/// A milli-unit value as a quantity string: `500m`, `2`, or with the
/// largest binary suffix that divides it exactly (`1Gi`), as a sum of
/// quantities is shown in ResourceQuota status.
pub fn format_milli(v: i64) -> String {
    if v % 1000 != 0 {
        return format!("{v}m");
    }
    let mut u = v / 1000;
    if u == 0 {
        return "0".to_owned();
    }
    let mut suffix = "";
    for s in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
        if u % 1024 != 0 {
            break;
        }
        u /= 1024;
        suffix = s;
    }
    format!("{u}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(format_milli(500), "500m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(1024 * 1024 * 1024 * 1000), "1Gi");
        assert_eq!(format_milli(1536 * 1000), "1536");
        assert_eq!(format_milli(0), "0");
    }

    #[test]
    fn cpu_in_millicores() {
        assert_eq!(milli("100m"), Ok(100));
        assert_eq!(milli("1"), Ok(1000));
        assert_eq!(milli("0.1"), Ok(100));
        assert_eq!(milli("1.5"), Ok(1500));
        assert_eq!(milli("32"), Ok(32_000));
        assert_eq!(milli("1e3"), Ok(1_000_000));
        // A fraction of a millicore rounds up.
        assert_eq!(milli("0.0001"), Ok(1));
        assert_eq!(milli("500u"), Ok(1));
    }

    #[test]
    fn memory_in_bytes() {
        assert_eq!(units("256Gi"), Ok(256 << 30));
        assert_eq!(units("200Mi"), Ok(200 << 20));
        assert_eq!(units("1G"), Ok(1_000_000_000));
        assert_eq!(units("1.5Ki"), Ok(1536));
        assert_eq!(units("110"), Ok(110));
        assert_eq!(units("128974848"), Ok(128_974_848));
        assert_eq!(units("129e6"), Ok(129_000_000));
        assert_eq!(units("0"), Ok(0));
    }

    #[test]
    fn quantities_parse_like_upstream() {
        // The agent's cases (cgroup settings, resourceFieldRef values).
        assert_eq!(milli("250m"), Ok(250));
        assert_eq!(milli("2"), Ok(2000));
        assert_eq!(milli("+2"), Ok(2000));
        assert_eq!(milli("1n"), Ok(1));
        assert_eq!(units("64Mi"), Ok(64 << 20));
        assert_eq!(units("1e3"), Ok(1000));
        assert_eq!(units("1E3"), Ok(1000));
        assert_eq!(units("1Ei"), Ok(1 << 60));
        assert_eq!(units("0.5"), Ok(1));
        assert_eq!(units("-1.5"), Ok(-2));
        assert!(units("12Qi").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for s in [
            "",
            "abc",
            "1x",
            "1.2.3",
            ".",
            "--1",
            "1Qi",
            "9999999999Ei",
            "1e99",
            "1e",
        ] {
            assert!(units(s).is_err(), "{s:?} should be rejected");
        }
        assert_eq!(
            milli("lots").expect_err("invalid").to_string(),
            "\"lots\" is not a valid quantity"
        );
    }
}
