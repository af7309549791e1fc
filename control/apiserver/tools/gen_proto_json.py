#!/usr/bin/env python3
"""Generate control/apiserver/src/proto/generated.rs.

For every message reachable from the kinds the API server decodes, emit an
`impl ToJson` for its k8s-pb (prost) struct that writes the upstream JSON
field names. Field numbers, types and presence come from the k8s-pb sources;
JSON names come from k8s-openapi's serializers (k8s-pb's Rust names lose the
case of acronyms: `host_ip` is `hostIP`).

Usage (from the workspace root, after a build so both crates are unpacked):

    python3 control/apiserver/tools/gen_proto_json.py > control/apiserver/src/proto/generated.rs
    cargo fmt -p kestrel-apiserver
"""

import glob
import os
import re
import sys

PB_VERSION = "0.9.0"
OPENAPI_VERSION = "0.29.0"
OPENAPI_K8S = "v1_37"

# Packages whose top-level kinds are decoded: every group/version the
# registry serves, plus the subresource bodies (Scale, Eviction, Binding).
PACKAGES = [
    "api/core/v1",
    "api/apps/v1",
    "api/batch/v1",
    "api/discovery/v1",
    "api/networking/v1",
    "api/coordination/v1",
    "api/certificates/v1",
    "api/rbac/v1",
    "api/policy/v1",
    "api/scheduling/v1",
    "api/node/v1",
    "api/storage/v1",
    "api/autoscaling/v1",
    "api/authorization/v1",
    "api/authentication/v1",
    "api/admissionregistration/v1",
    "kube_aggregator/pkg/apis/apiregistration/v1",
]
EXTRA_ROOTS = [
    ("api/autoscaling/v1", "Scale"),
    ("api/policy/v1", "Eviction"),
    ("api/authentication/v1", "TokenRequest"),
]

# Messages with a JSON form of their own, written by hand in proto.rs.
SPECIAL = {
    ("apimachinery/pkg/apis/meta/v1", "Time"),
    ("apimachinery/pkg/apis/meta/v1", "MicroTime"),
    ("apimachinery/pkg/apis/meta/v1", "Duration"),
    ("apimachinery/pkg/apis/meta/v1", "FieldsV1"),
    ("apimachinery/pkg/util/intstr", "IntOrString"),
    ("apimachinery/pkg/api/resource", "Quantity"),
    ("apimachinery/pkg/runtime", "RawExtension"),
    ("api/certificates/v1", "ExtraValue"),
    ("api/authorization/v1", "ExtraValue"),
    ("api/authentication/v1", "ExtraValue"),
}


def registry_src(name):
    hits = glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/{name}"))
    if not hits:
        sys.exit(f"{name} is not unpacked; run `cargo fetch` first")
    return hits[0]


PB = os.path.join(registry_src(f"k8s-pb-{PB_VERSION}"), "src")
OA = os.path.join(registry_src(f"k8s-openapi-{OPENAPI_VERSION}"), "src", OPENAPI_K8S)

STRUCT_RE = re.compile(r"^pub struct (\w+) \{(?:\}|\n(.*?)^\})", re.M | re.S)
FIELD_RE = re.compile(r"#\[prost\(([^\]]*)\)\]\s*pub ((?:r#)?\w+):\s*(.*?),?\s*(?=(?:///|#\[prost|$))", re.S)
RESOURCE_RE = re.compile(r"impl crate::Resource for (\w+) \{\n\s*const API_VERSION: &'static str = \"([^\"]*)\";")

pb_structs = {}  # (module, name) -> [(attr, rust_name, type)]
pb_resources = {}  # (module, name) -> apiVersion


def load_pb(module):
    if any(m == module for (m, _) in pb_structs):
        return
    text = open(os.path.join(PB, module, "mod.rs")).read()
    for m in STRUCT_RE.finditer(text):
        fields = [(a, n, " ".join(t.split())) for a, n, t in FIELD_RE.findall(m.group(2) or "")]
        pb_structs[(module, m.group(1))] = fields
    for m in RESOURCE_RE.finditer(text):
        pb_resources[(module, m.group(1))] = m.group(2)
    pb_structs.setdefault((module, None), [])


oa_fields = {}  # (module, name) -> [json names]


def load_oa(module):
    d = os.path.join(OA, module)
    if not os.path.isdir(d):
        return
    for f in glob.glob(os.path.join(d, "*.rs")):
        text = open(f).read()
        for m in re.finditer(r"impl crate::serde::Serialize for (\w+) \{(.*?)\n\}\n", text, re.S):
            names = re.findall(r'serialize_field\(&mut state, "([^"]+)"', m.group(2))
            oa_fields[(module, m.group(1).lower())] = names


def resolve(module, path):
    """A Rust type path inside k8s-pb, relative to `module`."""
    parts = path.split("::")
    cur = module.split("/")
    while parts[0] == "super":
        parts.pop(0)
        cur.pop()
    if parts[0] == "crate":
        parts.pop(0)
        cur = []
    return ("/".join(cur + parts[:-1]), parts[-1])


def inner(ty):
    """The message type inside Option<..>, Vec<..> or a map's value."""
    ty = ty.replace(" ", "")
    for w in ("::core::option::Option<", "::prost::alloc::vec::Vec<"):
        if ty.startswith(w):
            return ty[len(w):-1].rstrip(",")
    m = re.match(r"::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,(.*?),?>$", ty)
    if m:
        return m.group(1).rstrip(",")
    sys.exit(f"unexpected type {ty}")


def camel(rust):
    parts = rust.removeprefix("r#").split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


# Messages inlined into another's JSON (Go embedded structs such as
# Probe's ProbeHandler), and whose JSON names are therefore the parent's.
inlined_into = {}


def oa_names(key):
    key = inlined_into.get(key, key)
    return oa_fields.get((key[0], key[1].lower()))


def json_name(key, rust):
    """The upstream JSON name, or None when the field is an embedded struct."""
    want = rust.removeprefix("r#").replace("_", "").lower()
    names = oa_names(key)
    for n in names or []:
        if n.lower() == want:
            return n
    if names is not None:
        return None
    print(f"warning: no k8s-openapi type for {key[0]}.{key[1]}.{rust}", file=sys.stderr)
    return camel(rust)


def rust_path(key):
    return "k8s_pb::" + "::".join(key[0].split("/")) + "::" + key[1]


def field_code(key, attr, rust, ty, todo, name=None):
    name = name or json_name(key, rust)
    kind = attr.split(",")[0].strip()
    label = "repeated" if ", repeated" in attr else "optional"
    f = f"&self.{rust}"
    if name is None:
        child = resolve(key[0], inner(ty)) if kind == "message" else None
        if child:
            load_pb(child[0])
        parent = {n.lower() for n in oa_names(key)}
        own = {r.removeprefix("r#").replace("_", "").lower() for _, r, _ in pb_structs.get(child, [])}
        if not child or label != "optional" or not own <= parent:
            # A field k8s-openapi does not have (newer or older than its
            # Kubernetes version): keep prost's name, camel-cased.
            print(f"warning: no k8s-openapi field for {key[0]}.{key[1]}.{rust}", file=sys.stderr)
            return field_code(key, attr, rust, ty, todo, camel(rust))
        print(f"note: {key[1]}.{rust} ({child[1]}) is inlined", file=sys.stderr)
        if oa_names(child) is None:
            inlined_into[child] = inlined_into.get(key, key)
        todo.append(child)
        return f"o.inline({f})?;"
    if kind.startswith("btree_map") or kind.startswith("map"):
        value = re.search(r'"string, (\w+)"', attr).group(1)
        if value == "message":
            todo.append(resolve(key[0], inner(ty)))
            return f'o.map_msg("{name}", {f})?;'
        return {"string": f'o.map_str("{name}", {f});', "bytes": f'o.map_bytes("{name}", {f});'}[value]
    if kind == "message":
        todo.append(resolve(key[0], inner(ty)))
        return f'o.{"msgs" if label == "repeated" else "msg"}("{name}", {f})?;'
    if label == "repeated":
        return {
            "string": f'o.strs("{name}", {f});',
            "int32": f'o.ints("{name}", {f});',
            "int64": f'o.ints("{name}", {f});',
        }[kind]
    return {
        "string": f'o.str("{name}", {f});',
        "int32": f'o.int("{name}", self.{rust}.map(i64::from));',
        "int64": f'o.int("{name}", self.{rust});',
        "bool": f'o.bool("{name}", self.{rust});',
        'bytes = "vec"': f'o.bytes("{name}", {f});',
    }[kind]


def api_version(key):
    """From k8s-pb's Resource impl, else from the package (`api/apps/v1`)."""
    if pb_resources.get(key):
        return pb_resources[key]
    _, group, version = key[0].split("/")
    if group in ("authentication", "authorization", "admissionregistration"):
        group = f"{group}.k8s.io"
    return version if group == "core" else f"{group}/{version}"


def main():
    for p in PACKAGES:
        load_pb(p)
    roots = sorted(k for k in pb_resources if k[0] in PACKAGES) + EXTRA_ROOTS
    done, out, todo = set(), [], list(roots)
    while todo:
        key = todo.pop()
        if key in done or key in SPECIAL:
            continue
        done.add(key)
        load_pb(key[0])
        load_oa(key[0])
        if key not in pb_structs:
            sys.exit(f"unknown message {key}")
        lines = []
        for attr, rust, ty in pb_structs[key]:
            lines.append("        " + field_code(key, attr, rust, ty, todo))
        body = "\n".join(lines)
        out.append(
            (key, f"impl ToJson for {rust_path(key)} {{\n"
             f"    fn to_json(&self) -> Result<Value, ProtoError> {{\n"
             f"        {'let mut o' if lines else 'let o'} = Obj::default();\n{body}\n"
             f"        Ok(o.done())\n    }}\n}}\n")
        )
    print("// @generated by control/apiserver/tools/gen_proto_json.py from")
    print(f"// k8s-pb {PB_VERSION} (field numbers, types) and k8s-openapi {OPENAPI_VERSION}")
    print("// (JSON names). Do not edit; regenerate.")
    print()
    print("use serde_json::Value;")
    print()
    print("use super::{Obj, ProtoError, ToJson, decode_as};")
    print()
    print("/// Decode `raw` as the message of `api_version`/`kind`; `None` for a kind")
    print("/// with no protobuf form here.")
    print("pub(super) fn decode_kind(api_version: &str, kind: &str, raw: &[u8]) -> Option<Result<Value, ProtoError>> {")
    print("    Some(match (api_version, kind) {")
    for key in roots:
        print(f'        ("{api_version(key)}", "{key[1]}") => decode_as::<{rust_path(key)}>(raw),')
    print("        _ => return None,")
    print("    })")
    print("}")
    for _, code in sorted(out, key=lambda x: x[0]):
        print()
        print(code, end="")


main()
