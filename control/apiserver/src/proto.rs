//! Kubernetes protobuf request bodies, for the kinds kubectl's typed clients
//! send as protobuf (`kubectl create namespace|configmap|secret`). A body is
//! the `k8s\0` magic and a `runtime.Unknown` envelope around the object's
//! protobuf encoding; the object is turned into the same JSON the rest of the
//! server handles, using the field numbers of upstream's `generated.proto`.
//! Other kinds still get 415.

use base64::Engine as _;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\x00";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    I64,
    Bool,
    Msg(&'static [Field]),
    MapStrStr,
    MapStrBytes,
    RepStr,
    RepMsg(&'static [Field]),
    Time,
}

type Field = (u32, &'static str, Kind);

const OWNER_REF: &[Field] = &[
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "controller", Kind::Bool),
    (7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (5, "uid", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "generation", Kind::I64),
    (8, "creationTimestamp", Kind::Time),
    (9, "deletionTimestamp", Kind::Time),
    (10, "deletionGracePeriodSeconds", Kind::I64),
    (11, "labels", Kind::MapStrStr),
    (12, "annotations", Kind::MapStrStr),
    (13, "ownerReferences", Kind::RepMsg(OWNER_REF)),
    (14, "finalizers", Kind::RepStr),
];

const NAMESPACE_SPEC: &[Field] = &[(1, "finalizers", Kind::RepStr)];

const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(NAMESPACE_SPEC)),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStrStr),
    (3, "binaryData", Kind::MapStrBytes),
    (4, "immutable", Kind::Bool),
];

const SECRET: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStrBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStrStr),
    (5, "immutable", Kind::Bool),
];

/// Why a protobuf body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not a Kubernetes protobuf envelope, or truncated.
    #[error("invalid protobuf body: {0}")]
    Malformed(&'static str),
    /// A kind this server cannot decode from protobuf.
    #[error("protobuf is not supported for {0}; send JSON")]
    Unsupported(String),
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.i)
                .ok_or(ProtoError::Malformed("truncated varint"))?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Malformed("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(self.varint()?).map_err(|_| ProtoError::Malformed("length"))?;
        let end = self
            .i
            .checked_add(n)
            .ok_or(ProtoError::Malformed("length"))?;
        let s = self
            .b
            .get(self.i..end)
            .ok_or(ProtoError::Malformed("truncated field"))?;
        self.i = end;
        Ok(s)
    }

    /// Next (field number, wire type, payload) with payload decoded per wire type.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtoError> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = u32::try_from(tag >> 3).map_err(|_| ProtoError::Malformed("field number"))?;
        let w = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.i += 8;
                if self.i > self.b.len() {
                    return Err(ProtoError::Malformed("truncated fixed64"));
                }
                Wire::Skip
            }
            2 => Wire::Len(self.bytes()?),
            5 => {
                self.i += 4;
                if self.i > self.b.len() {
                    return Err(ProtoError::Malformed("truncated fixed32"));
                }
                Wire::Skip
            }
            _ => return Err(ProtoError::Malformed("unsupported wire type")),
        };
        Ok(Some((field, w)))
    }
}

enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Skip,
}

fn utf8(b: &[u8]) -> Result<String, ProtoError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| ProtoError::Malformed("invalid UTF-8 in a string"))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ProtoError> {
    let mut r = Reader { b, i: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((f, w)) = r.next()? {
        if let Wire::Len(x) = w {
            match f {
                1 => k = utf8(x)?,
                2 if bytes_value => v = json!(base64::engine::general_purpose::STANDARD.encode(x)),
                2 => v = json!(utf8(x)?),
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value, ProtoError> {
    let mut r = Reader { b, i: 0 };
    let mut secs = 0i64;
    while let Some((f, w)) = r.next()? {
        if let (1, Wire::Varint(v)) = (f, w) {
            secs = v as i64;
        }
    }
    Ok(jiff::Timestamp::from_second(secs)
        .map(|t| json!(t.to_string()))
        .unwrap_or(Value::Null))
}

fn message(b: &[u8], schema: &[Field], depth: usize) -> Result<Value, ProtoError> {
    if depth > 32 {
        return Err(ProtoError::Malformed("nested too deeply"));
    }
    let mut out = Map::new();
    let mut r = Reader { b, i: 0 };
    while let Some((f, w)) = r.next()? {
        let Some((_, name, kind)) = schema.iter().find(|(n, _, _)| *n == f) else {
            continue;
        };
        let name = (*name).to_owned();
        match (kind, w) {
            (Kind::Str, Wire::Len(x)) => {
                out.insert(name, json!(utf8(x)?));
            }
            (Kind::I64, Wire::Varint(v)) => {
                out.insert(name, json!(v as i64));
            }
            (Kind::Bool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (Kind::Msg(s), Wire::Len(x)) => {
                out.insert(name, message(x, s, depth + 1)?);
            }
            (Kind::Time, Wire::Len(x)) => {
                out.insert(name, time(x)?);
            }
            (Kind::MapStrStr | Kind::MapStrBytes, Wire::Len(x)) => {
                let (k, v) = map_entry(x, matches!(kind, Kind::MapStrBytes))?;
                if let Value::Object(m) = out.entry(name).or_insert_with(|| json!({})) {
                    m.insert(k, v);
                }
            }
            (Kind::RepStr, Wire::Len(x)) => {
                let s = utf8(x)?;
                if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
                    a.push(json!(s));
                }
            }
            (Kind::RepMsg(s), Wire::Len(x)) => {
                let m = message(x, s, depth + 1)?;
                if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
                    a.push(m);
                }
            }
            _ => return Err(ProtoError::Malformed("field has an unexpected wire type")),
        }
    }
    Ok(Value::Object(out))
}

/// Decode a protobuf request body to JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or(ProtoError::Malformed("missing k8s magic"))?;
    let mut r = Reader { b: rest, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((f, w)) = r.next()? {
        match (f, w) {
            (1, Wire::Len(tm)) => {
                let mut t = Reader { b: tm, i: 0 };
                while let Some((tf, tw)) = t.next()? {
                    match (tf, tw) {
                        (1, Wire::Len(x)) => api_version = utf8(x)?,
                        (2, Wire::Len(x)) => kind = utf8(x)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(x)) => raw = x,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        _ => {
            return Err(ProtoError::Unsupported(format!(
                "{api_version}, Kind={kind}"
            )));
        }
    };
    let mut v = message(raw, schema, 0)?;
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn len_field(f: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(f << 3 | 2), out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = Vec::new();
        len_field(1, b"cm", &mut meta);
        let mut label = Vec::new();
        len_field(1, b"app", &mut label);
        len_field(2, b"web", &mut label);
        len_field(11, &label, &mut meta);
        let mut cm = Vec::new();
        len_field(1, &meta, &mut cm);
        let mut entry = Vec::new();
        len_field(1, b"k", &mut entry);
        len_field(2, b"v", &mut entry);
        len_field(2, &entry, &mut cm);
        varint(4 << 3, &mut cm);
        varint(1, &mut cm);
        let mut tm = Vec::new();
        len_field(1, b"v1", &mut tm);
        len_field(2, b"ConfigMap", &mut tm);
        let mut body = MAGIC.to_vec();
        len_field(1, &tm, &mut body);
        len_field(2, &cm, &mut body);
        let v = decode(&body).expect("decode");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"app": "web"}}, "data": {"k": "v"}, "immutable": true})
        );
        assert!(matches!(decode(b"nope"), Err(ProtoError::Malformed(_))));
        assert!(decode(&body[..body.len() - 3]).is_err());
    }
}
