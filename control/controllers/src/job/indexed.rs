//! Indexed completion: each pod carries its completion index (annotation,
//! label, `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`), and the Job's
//! status lists the finished indexes as upstream's interval strings
//! (`"1,3-5,7"`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec,
};

/// The annotation and label holding a pod's completion index.
pub(super) const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The annotation counting the earlier failures of a pod's index.
pub(super) const FAILURE_COUNT_KEY: &str = "batch.kubernetes.io/job-index-failure-count";
/// The annotation counting the earlier ignored failures of a pod's index.
pub(super) const IGNORED_COUNT_KEY: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// The environment variable every container of an Indexed Job gets.
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The longest `generateName` the API server keeps whole.
const MAX_GENERATED_NAME: usize = 58;

/// The completion index of `pod`, if it has a valid one.
pub(super) fn index_of(pod: &Pod) -> Option<usize> {
    let v = pod.metadata.annotations.as_ref()?.get(INDEX_KEY)?;
    // Upstream rejects leading zeros and signs.
    if v.is_empty() || (v.len() > 1 && v.starts_with('0')) {
        return None;
    }
    v.parse().ok()
}

fn annotation_count(pod: &Pod, key: &str) -> u32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How many earlier failures of its index `pod` was created after.
pub(super) fn failure_count(pod: &Pod) -> u32 {
    annotation_count(pod, FAILURE_COUNT_KEY)
}

/// How many earlier ignored failures of its index `pod` was created after.
pub(super) fn ignored_count(pod: &Pod) -> u32 {
    annotation_count(pod, IGNORED_COUNT_KEY)
}

/// `indexes` as upstream's compressed intervals: `"0,2-4,7"`.
pub(super) fn format(indexes: &BTreeSet<usize>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = indexes.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last + 1)) {
            last += 1;
            it.next();
        }
        out.push(if last == first {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

/// The indexes below `limit` an interval string lists (bad parts skipped).
pub(super) fn parse(s: &str, limit: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
            continue;
        };
        out.extend((a..=b.min(limit.saturating_sub(1))).take_while(|i| *i < limit));
    }
    out
}

/// The `generateName` of the pods of index `index` of Job `job`:
/// `<job>-<index>-`, the job name cut so the prefix stays whole.
pub(super) fn generate_name(job: &str, index: usize) -> String {
    let suffix = format!("-{index}-");
    let prefix = format!("{job}{suffix}");
    if prefix.len() <= MAX_GENERATED_NAME {
        return prefix;
    }
    let mut keep = MAX_GENERATED_NAME
        .saturating_sub(suffix.len())
        .min(job.len());
    while !job.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &job[..keep])
}

fn add_env(c: &mut Container) {
    let env = c.env.get_or_insert_with(Vec::new);
    if env.iter().any(|e| e.name == INDEX_ENV) {
        return;
    }
    env.push(EnvVar {
        name: INDEX_ENV.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: format!("metadata.annotations['{INDEX_KEY}']"),
            }),
            ..Default::default()
        }),
    });
}

/// The template of a pod of index `index`: its index annotation and label,
/// the index variable in every container, hostname `<job>-<index>`, and
/// with a per-index backoff limit the failure counts of the index so far.
pub(super) fn template_for(
    template: &PodTemplateSpec,
    job: &str,
    index: usize,
    failures: Option<(u32, u32)>,
) -> PodTemplateSpec {
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(INDEX_KEY.to_owned(), index.to_string());
    if let Some((counted, ignored)) = failures {
        annotations.insert(FAILURE_COUNT_KEY.to_owned(), counted.to_string());
        if ignored > 0 {
            annotations.insert(IGNORED_COUNT_KEY.to_owned(), ignored.to_string());
        }
    }
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(INDEX_KEY.to_owned(), index.to_string());
    if let Some(spec) = t.spec.as_mut() {
        spec.hostname = Some(format!("{job}-{index}"));
        spec.containers.iter_mut().for_each(add_env);
        spec.init_containers.iter_mut().flatten().for_each(add_env);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_compress_and_parse() {
        let s: BTreeSet<usize> = [1, 3, 4, 5, 7].into_iter().collect();
        assert_eq!(format(&s), "1,3-5,7");
        assert_eq!(format(&BTreeSet::new()), "");
        assert_eq!(parse("1,3-5,7", 10), s);
        assert_eq!(parse("1,3-5,7", 5), [1, 3, 4].into_iter().collect());
        assert_eq!(parse("", 5), BTreeSet::new());
    }

    #[test]
    fn generated_names_keep_the_index() {
        assert_eq!(generate_name("job", 3), "job-3-");
        let n = generate_name(&"a".repeat(60), 12);
        assert_eq!(n.len(), MAX_GENERATED_NAME);
        assert!(n.ends_with("-12-"));
    }
}
