//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed clients send for built-in kinds (`kubectl create
//! deployment|job|service|secret ...`, `kubectl run`, `kubectl expose`).
//!
//! A body is the `k8s\0` magic and a `runtime.Unknown` envelope (`typeMeta`,
//! `raw`) around the object's protobuf encoding. The envelope and the object
//! are decoded with k8s-pb's prost messages, then turned into the JSON the
//! rest of the server handles by [`ToJson`] impls generated for every message
//! reachable from the decoded kinds (`generated.rs`, written by
//! `tools/gen_proto_json.py` from k8s-pb's field definitions and
//! k8s-openapi's JSON names). The JSON follows upstream's encoding:
//!
//! - field names as upstream's JSON tags (`hostIP`, `clusterIPs`), Go
//!   embedded structs (`Probe`'s handler, `Volume`'s source,
//!   `LocalObjectReference` in key selectors) inlined into their parent;
//! - `Time` as RFC 3339 seconds, `MicroTime` with microseconds, zero times
//!   omitted; `IntOrString` as a number or a string; `Quantity` as its
//!   string; `bytes` as base64 (Secret `data`); `RawExtension` and
//!   `FieldsV1` as the JSON they carry (anything else is malformed); maps
//!   as objects;
//! - what upstream's `omitempty` drops is dropped. Go's protobuf encoder
//!   writes value-typed fields even when zero, so a present `""`, `0` or
//!   `false` is taken as unset, except for the pointer fields in
//!   [`KEEP_ZERO`], where an explicit zero means something (`replicas: 0`,
//!   `backoffLimit: 0`, `gracePeriodSeconds: 0`, `automountServiceAccountToken:
//!   false`). Empty lists and maps are dropped; empty messages stay `{}`,
//!   as in upstream's JSON.
//!
//! A kind with no protobuf form here is [`ProtoError::Unsupported`] (415);
//! anything that does not decode is [`ProtoError::Malformed`] (400).

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value};

mod generated;

const MAGIC: &[u8] = b"k8s\x00";

/// JSON names of pointer fields whose explicit zero or `false` differs from
/// leaving them unset, so they are kept when present.
const KEEP_ZERO: &[&str] = &[
    // ints
    "activeDeadlineSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "completions",
    "containerPort",
    "defaultMode",
    "deletionGracePeriodSeconds",
    "expirationSeconds",
    "failedJobsHistoryLimit",
    "fsGroup",
    "gracePeriodSeconds",
    "leaseDurationSeconds",
    "leaseTransitions",
    "maxFailedIndexes",
    "mode",
    "parallelism",
    "port",
    "priority",
    "progressDeadlineSeconds",
    "replicas",
    "revisionHistoryLimit",
    "runAsGroup",
    "runAsUser",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "terminationGracePeriodSeconds",
    "ttlSecondsAfterFinished",
    // bools
    "allocateLoadBalancerNodePorts",
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "blockOwnerDeletion",
    "controller",
    "enableServiceLinks",
    "hostUsers",
    "immutable",
    "manualSelector",
    "optional",
    "ready",
    "runAsNonRoot",
    "serving",
    "suspend",
    "terminating",
];

/// Why a protobuf body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not a Kubernetes protobuf envelope, truncated, or not the message
    /// its `typeMeta` names.
    #[error("invalid protobuf body: {0}")]
    Malformed(String),
    /// A kind this server cannot decode from protobuf.
    #[error("protobuf is not supported for {0}; send JSON")]
    Unsupported(String),
}

/// A prost message's upstream JSON form.
trait ToJson {
    /// `Value::Null` means "leave the field out".
    fn to_json(&self) -> Result<Value, ProtoError>;
}

/// A JSON object under construction, applying the omission rules above.
#[derive(Default)]
struct Obj(Map<String, Value>);

fn keep_zero(name: &str) -> bool {
    KEEP_ZERO.contains(&name)
}

fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

impl Obj {
    fn done(self) -> Value {
        Value::Object(self.0)
    }

    fn put(&mut self, name: &str, v: Value) {
        self.0.insert(name.to_owned(), v);
    }

    fn str(&mut self, name: &str, v: &Option<String>) {
        if let Some(s) = v.as_deref().filter(|s| !s.is_empty()) {
            self.put(name, Value::from(s));
        }
    }

    fn int(&mut self, name: &str, v: Option<i64>) {
        if let Some(i) = v.filter(|i| *i != 0 || keep_zero(name)) {
            self.put(name, Value::from(i));
        }
    }

    fn bool(&mut self, name: &str, v: Option<bool>) {
        if let Some(b) = v.filter(|b| *b || keep_zero(name)) {
            self.put(name, Value::from(b));
        }
    }

    fn bytes(&mut self, name: &str, v: &Option<Vec<u8>>) {
        if let Some(b) = v.as_deref().filter(|b| !b.is_empty()) {
            self.put(name, b64(b));
        }
    }

    fn msg<T: ToJson>(&mut self, name: &str, v: &Option<T>) -> Result<(), ProtoError> {
        if let Some(m) = v {
            let j = m.to_json()?;
            if !j.is_null() {
                self.put(name, j);
            }
        }
        Ok(())
    }

    /// A Go embedded struct: its fields are the parent's.
    fn inline<T: ToJson>(&mut self, v: &Option<T>) -> Result<(), ProtoError> {
        if let Some(m) = v
            && let Value::Object(fields) = m.to_json()?
        {
            self.0.extend(fields);
        }
        Ok(())
    }

    fn strs(&mut self, name: &str, v: &[String]) {
        if !v.is_empty() {
            self.put(name, Value::from(v.to_vec()));
        }
    }

    fn ints<I: Copy + Into<i64>>(&mut self, name: &str, v: &[I]) {
        if !v.is_empty() {
            let a = v.iter().map(|i| Value::from((*i).into())).collect();
            self.put(name, Value::Array(a));
        }
    }

    fn msgs<T: ToJson>(&mut self, name: &str, v: &[T]) -> Result<(), ProtoError> {
        if !v.is_empty() {
            let a = v.iter().map(ToJson::to_json).collect::<Result<_, _>>()?;
            self.put(name, Value::Array(a));
        }
        Ok(())
    }

    fn map_str(&mut self, name: &str, v: &BTreeMap<String, String>) {
        if !v.is_empty() {
            let m = v.iter().map(|(k, s)| (k.clone(), Value::from(s.as_str())));
            self.put(name, Value::Object(m.collect()));
        }
    }

    fn map_bytes(&mut self, name: &str, v: &BTreeMap<String, Vec<u8>>) {
        if !v.is_empty() {
            let m = v.iter().map(|(k, b)| (k.clone(), b64(b)));
            self.put(name, Value::Object(m.collect()));
        }
    }

    fn map_msg<T: ToJson>(
        &mut self,
        name: &str,
        v: &BTreeMap<String, T>,
    ) -> Result<(), ProtoError> {
        if !v.is_empty() {
            let mut m = Map::new();
            for (k, x) in v {
                m.insert(k.clone(), x.to_json()?);
            }
            self.put(name, Value::Object(m));
        }
        Ok(())
    }
}

use k8s_pb::apimachinery::pkg::{api::resource, apis::meta::v1 as meta, runtime, util::intstr};

fn timestamp(
    seconds: Option<i64>,
    nanos: Option<i32>,
) -> Result<Option<jiff::Timestamp>, ProtoError> {
    let Some(s) = seconds else {
        return Ok(None);
    };
    jiff::Timestamp::new(s, nanos.unwrap_or(0))
        .map(Some)
        .map_err(|e| ProtoError::Malformed(format!("time out of range: {e}")))
}

impl ToJson for meta::Time {
    fn to_json(&self) -> Result<Value, ProtoError> {
        // Time has second precision in JSON.
        Ok(timestamp(self.seconds, Some(0))?
            .map(|t| Value::from(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
            .unwrap_or(Value::Null))
    }
}

impl ToJson for meta::MicroTime {
    fn to_json(&self) -> Result<Value, ProtoError> {
        let nanos = self.nanos.unwrap_or(0);
        Ok(timestamp(self.seconds, Some(nanos))?
            .map(|t| {
                let base = t.strftime("%Y-%m-%dT%H:%M:%S");
                Value::from(format!("{base}.{:06}Z", t.subsec_nanosecond() / 1000))
            })
            .unwrap_or(Value::Null))
    }
}

impl ToJson for meta::Duration {
    /// Go's `time.Duration` string (`1h2m3.5s`, `0s`).
    fn to_json(&self) -> Result<Value, ProtoError> {
        let Some(d) = self.duration else {
            return Ok(Value::Null);
        };
        Ok(Value::from(go_duration(d)))
    }
}

fn go_duration(d: i64) -> String {
    let sign = if d < 0 { "-" } else { "" };
    let n = d.unsigned_abs();
    if n == 0 {
        return "0s".to_owned();
    }
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", frac(n, div));
    }
    let (h, m) = (n / 3_600_000_000_000, n / 60_000_000_000 % 60);
    let s = frac(n % 60_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, _) => format!("{sign}{m}m{s}s"),
        _ => format!("{sign}{h}h{m}m{s}s"),
    }
}

/// `n / div` with the fraction's trailing zeros trimmed.
fn frac(n: u64, div: u64) -> String {
    let (whole, rest) = (n / div, n % div);
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let f = format!("{rest:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

impl ToJson for meta::FieldsV1 {
    fn to_json(&self) -> Result<Value, ProtoError> {
        raw_json(self.raw.as_deref())
    }
}

impl ToJson for runtime::RawExtension {
    /// The bytes are JSON, as upstream's JSON form writes them out verbatim
    /// (ControllerRevision `data`).
    fn to_json(&self) -> Result<Value, ProtoError> {
        raw_json(self.raw.as_deref())
    }
}

fn raw_json(b: Option<&[u8]>) -> Result<Value, ProtoError> {
    match b {
        None | Some([]) => Ok(Value::Null),
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| ProtoError::Malformed(format!("embedded JSON: {e}"))),
    }
}

impl ToJson for intstr::IntOrString {
    fn to_json(&self) -> Result<Value, ProtoError> {
        Ok(match self.r#type.unwrap_or(0) {
            0 => Value::from(self.int_val.unwrap_or(0)),
            1 => Value::from(self.str_val.clone().unwrap_or_default()),
            t => return Err(ProtoError::Malformed(format!("IntOrString type {t}"))),
        })
    }
}

impl ToJson for resource::Quantity {
    fn to_json(&self) -> Result<Value, ProtoError> {
        Ok(Value::from(self.string.as_deref().unwrap_or("0")))
    }
}

/// Go `[]string` types (a user's extra values): plain lists in JSON.
macro_rules! extra_value {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(&self) -> Result<Value, ProtoError> {
                Ok(Value::from(self.items.clone()))
            }
        }
    )*};
}

extra_value!(
    k8s_pb::api::certificates::v1::ExtraValue,
    k8s_pb::api::authorization::v1::ExtraValue,
    k8s_pb::api::authentication::v1::ExtraValue
);

/// Decode `raw` as `T` and convert it.
fn decode_as<T: Message + Default + ToJson>(raw: &[u8]) -> Result<Value, ProtoError> {
    T::decode(raw)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?
        .to_json()
}

/// Decode a protobuf request body to JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ProtoError::Malformed("missing k8s magic".to_owned()))?;
    let env = runtime::Unknown::decode(rest).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if env
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(ProtoError::Malformed(
            "content encodings are not supported".to_owned(),
        ));
    }
    let tm = env.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    if kind.is_empty() {
        return Err(ProtoError::Malformed(
            "Object 'Kind' is missing in the envelope".to_owned(),
        ));
    }
    let raw = env.raw.unwrap_or_default();
    // DeleteOptions is registered in every group version (client-go sends
    // it with the resource's apiVersion), so it decodes under any of them.
    let decoded = if kind == "DeleteOptions" {
        Some(decode_as::<
            k8s_pb::apimachinery::pkg::apis::meta::v1::DeleteOptions,
        >(&raw))
    } else {
        generated::decode_kind(&api_version, &kind, &raw)
    };
    let mut v =
        decoded.ok_or_else(|| ProtoError::Unsupported(format!("{api_version}, Kind={kind}")))??;
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::from(api_version));
        m.insert("kind".into(), Value::from(kind));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
