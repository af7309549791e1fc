//! String formats as kube-openapi's `strfmt.Default` registry checks them,
//! restricted to the formats apiextensions supports (others are ignored).

use regex::Regex;
use std::net::Ipv6Addr;
use std::sync::LazyLock;

/// Formats CRD schemas may use, dashes removed as go-openapi normalizes them
/// (`StripUnsupportedFormatsPostProcessorForVersion` at 1.35).
const SUPPORTED: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "k8sshortname",
    "k8slongname",
];

/// The normalized name of `format` if the validator checks it.
pub(super) fn supported(format: &str) -> Option<String> {
    let name = format.replace('-', "");
    SUPPORTED.contains(&name.as_str()).then_some(name)
}

fn rx(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("format regex {pattern}: {e}"))
}

macro_rules! regex {
    ($re:literal) => {{
        static RE: LazyLock<Regex> = LazyLock::new(|| rx($re));
        &*RE
    }};
}

/// Whether `s` is valid for the (normalized, supported) format `name`.
pub(super) fn valid(name: &str, s: &str) -> bool {
    match name {
        "bsonobjectid" => s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "uri" => is_request_uri(s),
        "email" => is_email(s),
        "hostname" => is_hostname(s),
        "ipv4" => parse_ip_sloppy(s).is_some() && s.contains('.'),
        "ipv6" => parse_ip_sloppy(s).is_some() && s.contains(':'),
        "cidr" => is_cidr(s),
        "mac" => is_mac(s),
        "uuid" => regex!(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$").is_match(s),
        "uuid3" => regex!(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$").is_match(s),
        "uuid4" => regex!(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$").is_match(s),
        "uuid5" => regex!(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$").is_match(s),
        "isbn" => is_isbn10(s) || is_isbn13(s),
        "isbn10" => is_isbn10(s),
        "isbn13" => is_isbn13(s),
        "creditcard" => is_credit_card(s),
        "ssn" => s.len() == 11 && regex!(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$").is_match(s),
        "hexcolor" => regex!(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$").is_match(s),
        "rgbcolor" => regex!(
            r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$"
        )
        .is_match(s),
        "byte" => regex!(
            r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
        )
        .is_match(s),
        "date" => is_date(s),
        "datetime" => is_date_time(s),
        "duration" => is_duration(s),
        "k8sshortname" => s.len() <= 63 && regex!(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").is_match(s),
        "k8slongname" => {
            s.len() <= 253
                && regex!(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").is_match(s)
        }
        _ => true, // password
    }
}

/// Go's `url.ParseRequestURI`, approximately: an absolute URI or an absolute path.
fn is_request_uri(s: &str) -> bool {
    if s.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return false;
    }
    s.starts_with('/') || regex!(r"^[A-Za-z][A-Za-z0-9+.\-]*:.+").is_match(s)
}

/// Go's `mail.ParseAddress`, approximately: `local@domain` or `Name <local@domain>`.
fn is_email(s: &str) -> bool {
    const ADDR: &str = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*";
    static PLAIN: LazyLock<Regex> = LazyLock::new(|| rx(&format!(r"^\s*{ADDR}\s*$")));
    static NAMED: LazyLock<Regex> = LazyLock::new(|| rx(&format!(r"^\s*[^<>@]*<{ADDR}>\s*$")));
    PLAIN.is_match(s) || NAMED.is_match(s)
}

fn is_hostname(s: &str) -> bool {
    let re = regex!(
        r"^([a-zA-Z0-9\p{S}\p{L}]((-?[a-zA-Z0-9\p{S}\p{L}]{0,62})?)|([a-zA-Z0-9\p{S}\p{L}](([a-zA-Z0-9\-\p{S}\p{L}]{0,61}[a-zA-Z0-9\p{S}\p{L}])?)(\.)){1,}([a-zA-Z\p{L}]){2,63})$"
    );
    re.is_match(s) && s.len() <= 255 && s.split('.').all(|p| p.len() <= 63)
}

/// `netutils.ParseIPSloppy`: IPv4 octets may have leading zeros.
fn parse_ip_sloppy(s: &str) -> Option<()> {
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().ok().map(drop);
    }
    let octets: Vec<&str> = s.split('.').collect();
    let ok = octets.len() == 4
        && octets
            .iter()
            .all(|o| !o.is_empty() && o.len() <= 3 && o.bytes().all(|b| b.is_ascii_digit()))
        && octets
            .iter()
            .all(|o| o.parse::<u16>().is_ok_and(|n| n <= 255));
    ok.then_some(())
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let max = if ip.contains(':') { 128 } else { 32 };
    let bits_ok = !bits.is_empty()
        && bits.len() <= 3
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u32>().is_ok_and(|b| b <= max);
    bits_ok && parse_ip_sloppy(ip).is_some()
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets separated by `:` or `-`, or dotted quads of hex.
fn is_mac(s: &str) -> bool {
    let hex = |g: &str, n: usize| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit());
    let groups = |sep: char, width: usize| {
        let parts: Vec<&str> = s.split(sep).collect();
        let octets = parts.len() * width / 2;
        parts.len() > 1 && [6, 8, 20].contains(&octets) && parts.iter().all(|p| hex(p, width))
    };
    groups(':', 2) || groups('-', 2) || groups('.', 4)
}

fn digits_of(s: &str) -> String {
    s.chars().filter(|c| *c != ' ' && *c != '-').collect()
}

fn is_isbn10(s: &str) -> bool {
    let d = digits_of(s);
    let b = d.as_bytes();
    if b.len() != 10
        || !b[..9].iter().all(u8::is_ascii_digit)
        || !(b[9].is_ascii_digit() || b[9] == b'X')
    {
        return false;
    }
    let sum: u32 = b
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = if *c == b'X' { 10 } else { u32::from(c - b'0') };
            (i as u32 + 1) * v
        })
        .sum();
    sum.is_multiple_of(11)
}

fn is_isbn13(s: &str) -> bool {
    let d = digits_of(s);
    if d.len() != 13 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = d
        .bytes()
        .enumerate()
        .map(|(i, c)| u32::from(c - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    sum.is_multiple_of(10)
}

fn is_credit_card(s: &str) -> bool {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    let re = regex!(
        r"^(?:4[0-9]{12}(?:[0-9]{3})?|5[1-5][0-9]{14}|(222[1-9]|22[3-9][0-9]|2[3-6][0-9]{2}|27[01][0-9]|2720)[0-9]{12}|6(?:011|5[0-9][0-9])[0-9]{12}|3[47][0-9]{13}|3(?:0[0-5]|[68][0-9])[0-9]{11}|(?:2131|1800|35\d{3})\d{11}|6[27][0-9]{14})$"
    );
    if !re.is_match(&d) {
        return false;
    }
    let sum: u32 = d
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let v = u32::from(c - b'0');
            if i % 2 == 1 {
                if v * 2 > 9 { v * 2 - 9 } else { v * 2 }
            } else {
                v
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Go's `time.Parse("2006-01-02", s)`.
fn is_date(s: &str) -> bool {
    if !regex!(r"^\d{4}-\d{2}-\d{2}$").is_match(s) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|p| p.parse::<i16>().ok());
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => {
            let (Ok(m), Ok(d)) = (i8::try_from(m), i8::try_from(d)) else {
                return false;
            };
            jiff::civil::Date::new(y, m, d).is_ok()
        }
        _ => false,
    }
}

/// strfmt's `IsDateTime`: a date, a `t`, and a time with a zone.
fn is_date_time(s: &str) -> bool {
    if s.len() < 4 {
        return false;
    }
    let lower = s.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    let re = regex!(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$");
    re.captures(parts[1])
        .is_some_and(|c| &c[1] <= "23" && &c[2] <= "59" && &c[3] <= "59")
}

/// strfmt's `ParseDuration`: Go's `time.ParseDuration`, or any `<n> <unit>` with a known unit.
fn is_duration(s: &str) -> bool {
    let go = regex!(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$");
    if go.is_match(s) {
        return true;
    }
    const UNITS: &[&[&str]] = &[
        &["ns", "nano"],
        &["us", "µs", "micro"],
        &["ms", "milli"],
        &["s", "sec"],
        &["m", "min"],
        &["h", "hr", "hour"],
        &["d", "day"],
        &["w", "wk", "week"],
    ];
    regex!(r"((\d+)\s*([A-Za-zµ]+))").captures_iter(s).any(|c| {
        let unit = c[3].trim().to_lowercase();
        c[2].parse::<i64>().is_ok()
            && UNITS.iter().any(|variants| {
                let last = variants.len() - 1;
                variants.iter().enumerate().any(|(i, v)| {
                    (i == last && unit.starts_with(v)) || unit.eq_ignore_ascii_case(v)
                })
            })
    })
}
