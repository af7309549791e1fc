//! Resource quantities: parsing, the CRI cgroup settings they become, and
//! `resourceFieldRef` values.

use anyhow::bail;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kestrel_api::quantity;
use kestrel_cri::v1;

/// CFS period the kubelet uses, in microseconds.
const CPU_PERIOD: i64 = 100_000;

/// Millicores of a cpu quantity, rounded up as upstream does.
pub fn millicores(q: &Quantity) -> anyhow::Result<i64> {
    Ok(quantity::milli(&q.0)?)
}

/// Bytes of a memory quantity, rounded up.
pub fn bytes(q: &Quantity) -> anyhow::Result<i64> {
    Ok(quantity::units(&q.0)?)
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
    // As upstream: cpu in millicores, everything else in units (bytes),
    // each rounded up before dividing.
    let parse = if name == "cpu" {
        quantity::milli
    } else {
        quantity::units
    };
    let div = parse(divisor.map_or("1", |d| d.0.as_str()))?;
    if div <= 0 {
        bail!("resourceFieldRef divisor must be positive");
    }
    // Unset limits fall back to the node's capacity, as upstream.
    let value = match get(c, limits, name) {
        Some(q) => parse(&q.0)?,
        None if limits && name == "cpu" => {
            i64::try_from(std::thread::available_parallelism().map_or(1, usize::from)).unwrap_or(1)
                * 1000
        }
        None if limits && name == "memory" => {
            let kb: i64 = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0);
            kb.saturating_mul(1024)
        }
        None => 0,
    };
    // Ceiling division, as upstream rounds resource values up.
    Ok((value.saturating_add(div - 1) / div).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_upstream() {
        // The parsing itself is kestrel_api::quantity's (tested there).
        let q = |s: &str| Quantity(s.to_owned());
        assert_eq!(millicores(&q("250m")).ok(), Some(250));
        assert_eq!(millicores(&q("1.5")).ok(), Some(1500));
        assert_eq!(millicores(&q("100u")).ok(), Some(1));
        assert_eq!(bytes(&q("64Mi")).ok(), Some(64 << 20));
        assert_eq!(bytes(&q("0.5")).ok(), Some(1));
        assert!(millicores(&q("12Qi")).is_err());
        assert!(bytes(&q("")).is_err());
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
