//! Object-metadata helpers shared by the server and its tests.

use rand::Rng;

/// Characters upstream uses for generated name suffixes: no vowels (so no
/// words are spelled) and no look-alikes such as `0`/`o` or `1`/`l`.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of the random suffix appended to `generateName`.
pub const GENERATE_NAME_SUFFIX_LEN: usize = 5;
/// Longest base kept from `generateName`, so the result stays within 63.
const MAX_GENERATED_BASE: usize = 63 - GENERATE_NAME_SUFFIX_LEN;

/// A fresh object UID (random UUID v4).
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The current time, truncated to whole seconds as metav1.Time serialises it.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now_timestamp())
}

/// The current instant at second precision.
pub fn now_timestamp() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// RFC 3339 `...Z` string for the current second, as stored in metadata.
pub fn now_rfc3339() -> String {
    now_timestamp().to_string()
}

/// The name for `generateName`: the base (trimmed so the whole name fits a
/// DNS label) plus a random five-character suffix.
pub fn generate_name(base: &str) -> String {
    let mut out: String = base.chars().take(MAX_GENERATED_BASE).collect();
    let mut rng = rand::rng();
    for _ in 0..GENERATE_NAME_SUFFIX_LEN {
        let i = rng.random_range(0..SUFFIX_ALPHABET.len());
        out.push(char::from(SUFFIX_ALPHABET[i]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_keep_base_and_add_suffix() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-"));
        assert_eq!(n.len(), 4 + GENERATE_NAME_SUFFIX_LEN);
        assert!(n[4..].bytes().all(|c| SUFFIX_ALPHABET.contains(&c)));
        let long = generate_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert_ne!(generate_name("a-"), generate_name("a-"));
    }

    #[test]
    fn uids_are_unique_uuids() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_ne!(a, new_uid());
    }

    #[test]
    fn timestamps_are_whole_seconds_utc() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z'), "{s}");
        assert!(!s.contains('.'), "{s}");
    }
}
