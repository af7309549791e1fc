//! Resource quantities: parsing, the CRI cgroup settings they become, and
//! `resourceFieldRef` values.

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kestrel_cri::v1;

/// CFS period the kubelet uses, in microseconds.
const CPU_PERIOD: i64 = 100_000;

/// A quantity as a number of `1e-9` units (nano), exact for every
/// quantity a pod can sensibly carry.
pub fn nanos(q: &str) -> anyhow::Result<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        bail!("quantity {q:?} has no number");
    }
    let neg = int.starts_with('-');
    let int: i128 = int
        .trim_start_matches(['+', '-'])
        .parse::<i128>()
        .or_else(|e| {
            if int.trim_start_matches(['+', '-']).is_empty() {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("quantity {q:?}"))?;
    let mut frac_n: i128 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        if !d.is_ascii_digit() {
            bail!("quantity {q:?}");
        }
        frac_n += i128::from(d - b'0') * 10i128.pow(8 - i as u32);
    }
    let base = int * 1_000_000_000 + frac_n;
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().with_context(|| format!("quantity {q:?}"))?;
            (
                10i128
                    .checked_pow(exp)
                    .context("quantity exponent too large")?,
                1,
            )
        }
        other => bail!("quantity {q:?} has an unknown suffix {other:?}"),
    };
    let v = base.checked_mul(mul).context("quantity too large")? / div;
    Ok(if neg { -v } else { v })
}

/// Millicores of a cpu quantity, rounded up as upstream does.
pub fn millicores(q: &Quantity) -> anyhow::Result<i64> {
    let n = nanos(&q.0)?;
    Ok(i64::try_from((n + 999_999) / 1_000_000).unwrap_or(i64::MAX))
}

/// Bytes of a memory quantity, rounded up.
pub fn bytes(q: &Quantity) -> anyhow::Result<i64> {
    let n = nanos(&q.0)?;
    Ok(i64::try_from((n + 999_999_999) / 1_000_000_000).unwrap_or(i64::MAX))
}

fn get<'a>(c: &'a Container, limits: bool, name: &str) -> Option<&'a Quantity> {
    let r = c.resources.as_ref()?;
    let m = if limits {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    };
    m?.get(name)
}

/// The CRI cgroup settings for `c`: shares from the cpu request, CFS quota
/// from the cpu limit, the memory limit, as the kubelet computes them.
pub fn linux(c: &Container) -> anyhow::Result<v1::LinuxContainerResources> {
    let mut r = v1::LinuxContainerResources::default();
    // Requests default to limits when only limits are set.
    let cpu_req = get(c, false, "cpu").or_else(|| get(c, true, "cpu"));
    r.cpu_shares = match cpu_req {
        Some(q) => (millicores(q)? * 1024 / 1000).max(2),
        None => 2,
    };
    if let Some(q) = get(c, true, "cpu") {
        let m = millicores(q)?;
        r.cpu_period = CPU_PERIOD;
        r.cpu_quota = (m * CPU_PERIOD / 1000).max(1000);
    }
    if let Some(q) = get(c, true, "memory") {
        r.memory_limit_in_bytes = bytes(q)?;
    }
    Ok(r)
}

/// The value of a `resourceFieldRef` for `c`, divided by `divisor`.
pub fn field_value(
    c: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
) -> anyhow::Result<String> {
    let (limits, name) = match resource.split_once('.') {
        Some(("limits", n)) => (true, n),
        Some(("requests", n)) => (false, n),
        _ => bail!("unsupported resourceFieldRef resource {resource:?}"),
    };
    let div = nanos(divisor.map_or("1", |d| d.0.as_str()))?;
    if div <= 0 {
        bail!("resourceFieldRef divisor must be positive");
    }
    // Unset limits fall back to the node's capacity, as upstream.
    let value = match get(c, limits, name) {
        Some(q) => nanos(&q.0)?,
        None if limits && name == "cpu" => {
            i128::try_from(std::thread::available_parallelism().map_or(1, usize::from)).unwrap_or(1)
                * 1_000_000_000
        }
        None if limits && name == "memory" => {
            let kb: i128 = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0);
            kb * 1024 * 1_000_000_000
        }
        None => 0,
    };
    // Ceiling division, as upstream rounds resource values up.
    Ok(((value + div - 1) / div).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_upstream() {
        let q = |s: &str| Quantity(s.to_owned());
        assert_eq!(millicores(&q("250m")).ok(), Some(250));
        assert_eq!(millicores(&q("1.5")).ok(), Some(1500));
        assert_eq!(millicores(&q("2")).ok(), Some(2000));
        assert_eq!(bytes(&q("64Mi")).ok(), Some(64 << 20));
        assert_eq!(bytes(&q("1G")).ok(), Some(1_000_000_000));
        assert_eq!(bytes(&q("1e3")).ok(), Some(1000));
        assert!(nanos("12Qi").is_err());
        assert!(nanos("").is_err());
        assert!(nanos("abc").is_err());
    }

    #[test]
    fn cgroup_settings_follow_the_kubelet() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "a",
            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}
        }))
        .expect("container");
        let r = linux(&c).expect("resources");
        assert_eq!(r.cpu_shares, 512);
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.memory_limit_in_bytes, 128 << 20);
        assert_eq!(
            field_value(&c, "limits.memory", Some(&Quantity("1Mi".into()))).ok(),
            Some("128".into())
        );
        assert_eq!(
            field_value(&c, "limits.cpu", Some(&Quantity("1m".into()))).ok(),
            Some("500".into())
        );
        assert_eq!(field_value(&c, "limits.cpu", None).ok(), Some("1".into()));
    }
}
