//! PersistentVolume, PersistentVolumeClaim and StorageClass defaulting and
//! validation, as upstream's (`pkg/apis/core/validation`,
//! `pkg/apis/storage/validation`), with upstream's field paths and
//! messages:
//!
//! - a volume has a storage capacity, access modes (ReadWriteOncePod
//!   alone), exactly one volume source, and keeps that source, its
//!   `volumeMode` and its node affinity (once set) for life;
//! - a claim asks for a positive amount of storage; once created its spec
//!   is fixed but for `volumeName` (set once, by the binder), the storage
//!   request of a bound claim (growing, or shrinking back towards
//!   `status.capacity` after a failed expansion, as upstream's
//!   RecoverVolumeExpansionFailure) and its `volumeAttributesClassName`;
//! - a class names a provisioner, and its parameters, provisioner,
//!   reclaim policy and binding mode never change.
//!
//! Binding and provisioning are the controllers' and the node agents'.
//! Quantities that do not parse are refused here with upstream's decoding
//! message (upstream refuses them while decoding, as a 400).

use kestrel_api::{FieldError, quantity, validation};
use serde_json::{Map, Value, json};

/// The access modes (sorted, as upstream lists them).
const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];
/// A volume's reclaim policies.
const PV_RECLAIM: &[&str] = &["Delete", "Recycle", "Retain"];
/// A class's reclaim policies: Recycle is a volume's only.
const SC_RECLAIM: &[&str] = &["Delete", "Retain"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

/// The volume sources of a PersistentVolume, in upstream's checking order,
/// with the field name upstream's "more than 1 volume type" error uses.
const SOURCES: &[(&str, &str)] = &[
    ("hostPath", "hostPath"),
    ("gcePersistentDisk", "gcePersistentDisk"),
    ("awsElasticBlockStore", "awsElasticBlockStore"),
    ("glusterfs", "glusterfs"),
    ("flocker", "flocker"),
    ("nfs", "nfs"),
    ("rbd", "rbd"),
    ("quobyte", "quobyte"),
    ("cephfs", "cephFS"),
    ("iscsi", "iscsi"),
    ("cinder", "cinder"),
    ("fc", "fc"),
    ("flexVolume", "flexVolume"),
    ("azureFile", "azureFile"),
    ("vsphereVolume", "vsphereVolume"),
    ("photonPersistentDisk", "photonPersistentDisk"),
    ("portworxVolume", "portworxVolume"),
    ("azureDisk", "azureDisk"),
    ("scaleIO", "scaleIO"),
    ("local", "local"),
    ("storageos", "storageos"),
    ("csi", "csi"),
];

/// The beta annotation that named a claim's class before
/// `spec.storageClassName`.
pub const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// The regular expression upstream's quantity decoding names.
const QUANTITY_FMT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

const PVC_IMMUTABLE: &str = "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";

fn default(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.entry(k.to_owned()).or_insert(v);
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let o = v.as_object_mut()?;
    let slot = o.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut()
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// A quantity as JSON gives it: a string, or a bare number.
fn quantity_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Upstream's defaults for a PersistentVolume (`SetDefaults_PersistentVolume`).
pub fn default_volume(obj: &mut Value) {
    if let Some(spec) = obj_mut(obj, "spec") {
        default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        default(spec, "volumeMode", json!("Filesystem"));
    }
    if let Some(status) = obj_mut(obj, "status") {
        default(status, "phase", json!("Pending"));
    }
}

/// Upstream's defaults for a PersistentVolumeClaim.
pub fn default_claim(obj: &mut Value) {
    if let Some(spec) = obj_mut(obj, "spec") {
        default(spec, "volumeMode", json!("Filesystem"));
    }
    if let Some(status) = obj_mut(obj, "status") {
        default(status, "phase", json!("Pending"));
    }
}

/// Upstream's defaults for a StorageClass.
pub fn default_class(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        default(o, "reclaimPolicy", json!("Delete"));
        default(o, "volumeBindingMode", json!("Immediate"));
    }
}

/// What a new PersistentVolume's strategy sets (upstream's
/// `PrepareForCreate`): a fresh status, Pending since now.
pub fn prepare_volume(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert(
            "status".into(),
            json!({"phase": "Pending", "lastPhaseTransitionTime": kestrel_api::meta::now_rfc3339()}),
        );
    }
}

fn access_modes(spec: &Value, path: &str, required_why: &str, errs: &mut Vec<FieldError>) {
    let modes: Vec<&str> = spec
        .get("accessModes")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|m| m.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    let field = format!("{path}.accessModes");
    if modes.is_empty() {
        errs.push(FieldError::required(&field, required_why));
    }
    let (mut once_pod, mut other) = (false, false);
    for m in modes {
        if !ACCESS_MODES.contains(&m) {
            errs.push(FieldError::not_supported(&field, m, ACCESS_MODES));
        } else if m == "ReadWriteOncePod" {
            once_pod = true;
        } else {
            other = true;
        }
    }
    if once_pod && other {
        errs.push(FieldError::forbidden(
            &field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

/// A quantity that must parse and be greater than zero; `basic` adds
/// upstream's `validateBasicResource` (a volume's capacity) before that.
fn positive_quantity(
    v: &Value,
    field: &str,
    basic: bool,
    errs: &mut Vec<FieldError>,
) -> Option<i64> {
    let text = quantity_text(v);
    match quantity::milli(&text) {
        Err(_) => {
            errs.push(FieldError::invalid(field, &text, QUANTITY_FMT));
            None
        }
        Ok(n) if n <= 0 => {
            if basic && n < 0 {
                errs.push(FieldError::invalid(
                    field,
                    &text,
                    "must be a valid resource quantity",
                ));
            }
            errs.push(FieldError::invalid(
                field,
                &text,
                "must be greater than zero",
            ));
            None
        }
        Ok(n) => Some(n),
    }
}

/// `..` as a path element (upstream's `validatePathNoBacksteps`).
fn no_backsteps(path: &str, field: &str, errs: &mut Vec<FieldError>) {
    if path.split(['/', '\\']).any(|p| p == "..") {
        errs.push(FieldError::invalid(field, path, "must not contain '..'"));
    }
}

fn class_name(name: &str, field: &str, errs: &mut Vec<FieldError>) {
    for m in validation::dns1123_subdomain(name) {
        errs.push(FieldError::invalid(field, name, m));
    }
}

/// The checks of one volume source upstream makes that Kestrel's users
/// meet: paths of hostPath, local and NFS volumes, a CSI volume's driver
/// and handle. Other sources are accepted as given.
fn check_source(key: &str, src: &Value, errs: &mut Vec<FieldError>) {
    let base = format!("spec.{key}");
    let s = |k: &str| src.get(k).and_then(Value::as_str).unwrap_or("");
    match key {
        "hostPath" => {
            let p = s("path");
            if p.is_empty() {
                errs.push(FieldError::required(format!("{base}.path"), ""));
                return;
            }
            no_backsteps(p, &format!("{base}.path"), errs);
            if let Some(t) = src.get("type").and_then(Value::as_str)
                && !HOST_PATH_TYPES.contains(&t)
            {
                errs.push(FieldError::not_supported(
                    format!("{base}.type"),
                    t,
                    HOST_PATH_TYPES,
                ));
            }
        }
        "local" => {
            let p = s("path");
            if p.is_empty() {
                errs.push(FieldError::required(format!("{base}.path"), ""));
                return;
            }
            no_backsteps(p, &format!("{base}.path"), errs);
        }
        "nfs" => {
            if s("server").is_empty() {
                errs.push(FieldError::required(format!("{base}.server"), ""));
            }
            let p = s("path");
            if p.is_empty() {
                errs.push(FieldError::required(format!("{base}.path"), ""));
            }
            if !p.starts_with('/') {
                errs.push(FieldError::invalid(
                    format!("{base}.path"),
                    p,
                    "must be an absolute path",
                ));
            }
        }
        "csi" => {
            let d = s("driver");
            if d.is_empty() {
                errs.push(FieldError::required(format!("{base}.driver"), ""));
            } else if d.len() > 63 {
                errs.push(FieldError {
                    reason: "FieldValueTooLong",
                    field: format!("{base}.driver"),
                    detail: "Too long: may not be more than 63 bytes".to_owned(),
                });
            } else {
                for m in validation::dns1123_subdomain(&d.to_lowercase()) {
                    errs.push(FieldError::invalid(format!("{base}.driver"), d, m));
                }
            }
            if s("volumeHandle").is_empty() {
                errs.push(FieldError::required(format!("{base}.volumeHandle"), ""));
            }
        }
        _ => {}
    }
}

/// Check a PersistentVolume; `old` on updates.
pub fn validate_volume(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let empty = json!({});
    let spec = obj.get("spec").filter(|s| s.is_object()).unwrap_or(&empty);
    access_modes(spec, "spec", "", errs);
    let cap = spec.get("capacity").and_then(Value::as_object);
    match cap {
        None => errs.push(FieldError::required("spec.capacity", "")),
        Some(c) if c.is_empty() => errs.push(FieldError::required("spec.capacity", "")),
        Some(_) => {}
    }
    let cap_ok = cap.is_some_and(|c| c.len() == 1 && c.contains_key("storage"));
    if !cap_ok {
        let shown = cap.map_or_else(|| "{}".to_owned(), |c| Value::Object(c.clone()).to_string());
        errs.push(FieldError::not_supported(
            "spec.capacity",
            &shown,
            &["storage"],
        ));
    }
    for (k, v) in cap.into_iter().flatten() {
        positive_quantity(v, &format!("spec.capacity[{k}]"), true, errs);
    }
    let policy = str_at(spec, "/persistentVolumeReclaimPolicy").unwrap_or("");
    if !policy.is_empty() && !PV_RECLAIM.contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            policy,
            PV_RECLAIM,
        ));
    }
    let affinity = spec.get("nodeAffinity").filter(|a| !a.is_null());
    if let Some(a) = affinity {
        match a.get("required").filter(|r| !r.is_null()) {
            None => errs.push(FieldError::required(
                "spec.nodeAffinity.required",
                "must specify required node constraints",
            )),
            Some(r) => {
                if r.get("nodeSelectorTerms")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                {
                    errs.push(FieldError::required(
                        "spec.nodeAffinity.required.nodeSelectorTerms",
                        "must have at least one node selector term",
                    ));
                }
            }
        }
    }
    let mut sources = 0;
    for (key, name) in SOURCES {
        let Some(src) = spec.get(*key).filter(|s| !s.is_null()) else {
            continue;
        };
        // Upstream counts a flexVolume without checking for another.
        if sources > 0 && *key != "flexVolume" {
            errs.push(FieldError::forbidden(
                format!("spec.{name}"),
                "may not specify more than 1 volume type",
            ));
            continue;
        }
        sources += 1;
        check_source(key, src, errs);
        if *key == "local" && affinity.is_none() {
            errs.push(FieldError::required(
                "spec.nodeAffinity",
                "Local volume requires node affinity",
            ));
        }
    }
    if sources == 0 {
        errs.push(FieldError::required("spec", "must specify a volume type"));
    }
    if policy == "Recycle"
        && let Some(p) = str_at(spec, "/hostPath/path")
        && !p.is_empty()
        && p.trim_end_matches('/').is_empty()
    {
        errs.push(FieldError::forbidden(
            "spec.persistentVolumeReclaimPolicy",
            "may not be 'recycle' for a hostPath mount of '/'",
        ));
    }
    if let Some(c) = str_at(spec, "/storageClassName").filter(|c| !c.is_empty()) {
        class_name(c, "spec.storageClassName", errs);
    }
    if let Some(m) = str_at(spec, "/volumeMode")
        && !VOLUME_MODES.contains(&m)
    {
        errs.push(FieldError::not_supported(
            "spec.volumeMode",
            m,
            VOLUME_MODES,
        ));
    }
    if let Some(v) = spec
        .get("volumeAttributesClassName")
        .and_then(Value::as_str)
    {
        if v.is_empty() {
            errs.push(FieldError::required(
                "spec.volumeAttributesClassName",
                "an empty string is disallowed",
            ));
        } else {
            class_name(v, "spec.volumeAttributesClassName", errs);
        }
        if spec.get("csi").is_none_or(Value::is_null) {
            errs.push(FieldError::required(
                "spec.csi",
                "has to be specified when using volumeAttributesClassName",
            ));
        }
    }
    if let Some(old) = old {
        validate_volume_update(obj, old, errs);
    }
}

/// The volume source of a PersistentVolume's spec, for comparing.
fn volume_source(spec: Option<&Value>) -> Map<String, Value> {
    SOURCES
        .iter()
        .filter_map(|(k, _)| {
            let v = spec?.get(*k).filter(|v| !v.is_null())?;
            Some(((*k).to_owned(), v.clone()))
        })
        .collect()
}

/// `spec.<key>` when set and not null.
fn spec_field<'a>(spec: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    spec.and_then(|s| s.get(key)).filter(|v| !v.is_null())
}

fn validate_volume_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let (ns, os) = (obj.get("spec"), old.get("spec"));
    let mut new_src = volume_source(ns);
    let old_src = volume_source(os);
    // A CSI volume may gain a controllerExpandSecretRef.
    if old_src.get("csi").is_some_and(|c| {
        c.get("controllerExpandSecretRef")
            .is_none_or(Value::is_null)
    }) && let Some(c) = new_src.get_mut("csi").and_then(Value::as_object_mut)
    {
        c.remove("controllerExpandSecretRef");
    }
    if new_src != old_src {
        errs.push(FieldError::forbidden(
            "spec.persistentvolumesource",
            "spec.persistentvolumesource is immutable after creation",
        ));
    }
    immutable(ns, os, "volumeMode", "volumeMode", errs);
    let affinity = |s| spec_field(s, "nodeAffinity");
    if let Some(oa) = affinity(os)
        && affinity(ns) != Some(oa)
    {
        let shown = affinity(ns).map_or_else(|| "null".to_owned(), Value::to_string);
        errs.push(FieldError::invalid(
            "nodeAffinity",
            &shown,
            "field is immutable, except for updating from beta label to GA",
        ));
    }
    attributes_class_update(ns, os, false, errs);
}

/// Upstream's `ValidateImmutableField` on `spec.<key>`, reported at `path`.
fn immutable(
    new: Option<&Value>,
    old: Option<&Value>,
    key: &str,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let get = |s| spec_field(s, key);
    if get(new) != get(old) {
        let shown = match get(new) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "null".to_owned(),
        };
        errs.push(FieldError::invalid(path, &shown, "field is immutable"));
    }
}

fn attributes_class_update(
    new: Option<&Value>,
    old: Option<&Value>,
    claim: bool,
    errs: &mut Vec<FieldError>,
) {
    let get = |s| spec_field(s, "volumeAttributesClassName").and_then(Value::as_str);
    if get(old).is_some() {
        match get(new) {
            None => errs.push(FieldError::forbidden(
                "spec.volumeAttributesClassName",
                "update from non-nil value to nil is forbidden",
            )),
            Some("") if claim => errs.push(FieldError::forbidden(
                "spec.volumeAttributesClassName",
                "update from non-nil value to an empty string is forbidden",
            )),
            _ => {}
        }
    }
}

/// The claim's storage request in milli-units, if it parses.
fn storage_request(obj: &Value) -> Option<i64> {
    obj.pointer("/spec/resources/requests/storage")
        .map(quantity_text)
        .and_then(|q| quantity::milli(&q).ok())
}

/// Check a PersistentVolumeClaim; `old` on updates.
pub fn validate_claim(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let empty = json!({});
    let spec = obj.get("spec").filter(|s| s.is_object()).unwrap_or(&empty);
    access_modes(spec, "spec", "at least 1 access mode is required", errs);
    match spec.pointer("/resources/requests/storage") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.resources[storage]", "")),
        Some(q) => {
            positive_quantity(q, "spec.resources[storage]", false, errs);
        }
    }
    if let Some(c) = str_at(spec, "/storageClassName").filter(|c| !c.is_empty()) {
        class_name(c, "spec.storageClassName", errs);
    }
    if let Some(m) = str_at(spec, "/volumeMode")
        && !VOLUME_MODES.contains(&m)
    {
        errs.push(FieldError::not_supported(
            "spec.volumeMode",
            m,
            VOLUME_MODES,
        ));
    }
    for key in ["dataSource", "dataSourceRef"] {
        let Some(ds) = spec.get(key).filter(|d| d.is_object()) else {
            continue;
        };
        let s = |k: &str| ds.get(k).and_then(Value::as_str).unwrap_or("");
        if s("name").is_empty() {
            errs.push(FieldError::required(format!("spec.{key}.name"), ""));
        }
        if s("kind").is_empty() {
            errs.push(FieldError::required(format!("spec.{key}.kind"), ""));
        }
        if s("apiGroup").is_empty() && s("kind") != "PersistentVolumeClaim" {
            errs.push(FieldError::invalid(
                format!("spec.{key}"),
                s("kind"),
                "must be 'PersistentVolumeClaim' when referencing the default apiGroup",
            ));
        }
    }
    if let Some(v) = str_at(spec, "/volumeAttributesClassName").filter(|v| !v.is_empty()) {
        class_name(v, "spec.volumeAttributesClassName", errs);
    }
    if let Some(old) = old {
        validate_claim_update(obj, old, errs);
    }
}

/// A claim's spec as upstream compares it: quantities by value.
fn comparable_spec(obj: &Value) -> Value {
    let mut spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    for list in ["requests", "limits"] {
        if let Some(m) = spec
            .pointer_mut(&format!("/resources/{list}"))
            .and_then(Value::as_object_mut)
        {
            for v in m.values_mut() {
                if let Ok(n) = quantity::milli(&quantity_text(v)) {
                    *v = json!(n);
                }
            }
        }
    }
    spec
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn validate_claim_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let mut new_spec = comparable_spec(obj);
    let mut old_spec = comparable_spec(old);
    let (Some(n), Some(o)) = (new_spec.as_object_mut(), old_spec.as_object_mut()) else {
        return;
    };
    // The binder sets volumeName once.
    if o.get("volumeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        match n.get("volumeName") {
            Some(v) => o.insert("volumeName".into(), v.clone()),
            None => o.remove("volumeName"),
        };
    }
    let old_class = o
        .get("storageClassName")
        .filter(|v| !v.is_null())
        .and_then(Value::as_str);
    let new_class = n
        .get("storageClassName")
        .filter(|v| !v.is_null())
        .and_then(Value::as_str);
    let old_ann = annotation(old, BETA_CLASS_ANNOTATION);
    let new_ann = annotation(obj, BETA_CLASS_ANNOTATION);
    let from_annotation = old_ann.is_some()
        && old_class.is_none()
        && new_class.is_some()
        && new_class == old_ann
        && (new_ann.is_none() || new_ann == old_ann);
    if from_annotation {
        n.remove("storageClassName");
    } else {
        if new_ann != old_ann {
            errs.push(FieldError::invalid(
                format!("metadata.annotations.{BETA_CLASS_ANNOTATION}"),
                new_ann.unwrap_or(""),
                "field is immutable",
            ));
        }
        // A claim without a class may be given one once (the default
        // class, retroactively), matching its beta annotation if any.
        if let Some(c) = new_class
            && old_class.is_none()
            && old_ann.is_none_or(|a| a == c)
        {
            n.remove("storageClassName");
        }
    }
    let bound = str_at(obj, "/status/phase") == Some("Bound");
    if bound {
        let old_req = o
            .get("resources")
            .and_then(|r| r.pointer("/requests/storage"))
            .cloned();
        if let Some(req) = n
            .get_mut("resources")
            .and_then(|r| r.get_mut("requests"))
            .and_then(Value::as_object_mut)
        {
            match old_req {
                Some(v) => req.insert("storage".into(), v),
                None => req.remove("storage"),
            };
        }
        if n.contains_key("volumeAttributesClassName") {
            match o.get("volumeAttributesClassName") {
                Some(v) => n.insert("volumeAttributesClassName".into(), v.clone()),
                None => n.remove("volumeAttributesClassName"),
            };
        }
    }
    if n != o {
        errs.push(FieldError::forbidden("spec", PVC_IMMUTABLE));
    }
    let (new_size, old_size) = (
        storage_request(obj).unwrap_or(0),
        storage_request(old).unwrap_or(0),
    );
    if new_size < old_size {
        // Shrinking is allowed back towards what a failed expansion left
        // in status.capacity, never to it or below.
        let status_size = old
            .pointer("/status/capacity/storage")
            .map(quantity_text)
            .and_then(|q| quantity::milli(&q).ok())
            .unwrap_or(0);
        if new_size <= status_size {
            errs.push(FieldError::forbidden(
                "spec.resources.requests.storage",
                "field can not be less than status.capacity",
            ));
        }
    }
    immutable(
        obj.get("spec"),
        old.get("spec"),
        "volumeMode",
        "volumeMode",
        errs,
    );
    attributes_class_update(obj.get("spec"), old.get("spec"), true, errs);
}

/// Check a StorageClass; `old` on updates.
pub fn validate_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let p = str_at(obj, "/provisioner").unwrap_or("");
    if p.is_empty() {
        errs.push(FieldError::required("provisioner", ""));
    } else {
        let lower = p.to_lowercase();
        for m in validation::qualified_name(&lower) {
            errs.push(FieldError::invalid("provisioner", &lower, m));
        }
    }
    let params = obj.get("parameters").and_then(Value::as_object);
    if let Some(params) = params {
        if params.len() > 512 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "parameters".to_owned(),
                detail: "Too long: may not have more than 512 items".to_owned(),
            });
        } else {
            let mut size = 0;
            for (k, v) in params {
                if k.is_empty() {
                    errs.push(FieldError::invalid(
                        "parameters",
                        k,
                        "field can not be empty.",
                    ));
                }
                size += k.len() + v.as_str().map_or(0, str::len);
            }
            if size > 256 * 1024 {
                errs.push(FieldError {
                    reason: "FieldValueTooLong",
                    field: "parameters".to_owned(),
                    detail: format!("Too long: may not be more than {} bytes", 256 * 1024),
                });
            }
        }
    }
    if let Some(r) = str_at(obj, "/reclaimPolicy")
        && !r.is_empty()
        && !SC_RECLAIM.contains(&r)
    {
        errs.push(FieldError::not_supported("reclaimPolicy", r, SC_RECLAIM));
    }
    match str_at(obj, "/volumeBindingMode") {
        None => errs.push(FieldError::required("volumeBindingMode", "")),
        Some(m) if !BINDING_MODES.contains(&m) => {
            errs.push(FieldError::not_supported(
                "volumeBindingMode",
                m,
                BINDING_MODES,
            ));
        }
        Some(_) => {}
    }
    let Some(old) = old else { return };
    let params_of = |v: &Value| {
        v.get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    if params_of(obj) != params_of(old) {
        errs.push(FieldError::forbidden(
            "parameters",
            "updates to parameters are forbidden.",
        ));
    }
    if str_at(obj, "/provisioner") != str_at(old, "/provisioner") {
        errs.push(FieldError::forbidden(
            "provisioner",
            "updates to provisioner are forbidden.",
        ));
    }
    if str_at(obj, "/reclaimPolicy") != str_at(old, "/reclaimPolicy") {
        errs.push(FieldError::forbidden(
            "reclaimPolicy",
            "updates to reclaimPolicy are forbidden.",
        ));
    }
    if str_at(obj, "/volumeBindingMode") != str_at(old, "/volumeBindingMode") {
        errs.push(FieldError::invalid(
            "volumeBindingMode",
            str_at(obj, "/volumeBindingMode").unwrap_or(""),
            "field is immutable",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(FieldError::to_message).collect()
    }

    fn pv(spec: Value) -> Value {
        let mut v = json!({"metadata": {"name": "v"}, "spec": spec});
        default_volume(&mut v);
        v
    }

    fn check_pv(v: &Value, old: Option<&Value>) -> Vec<String> {
        let mut errs = Vec::new();
        validate_volume(v, old, &mut errs);
        msgs(&errs)
    }

    fn good_pv() -> Value {
        pv(json!({
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/data"},
        }))
    }

    #[test]
    fn volume_defaults() {
        let v = good_pv();
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["spec"]["volumeMode"], "Filesystem");
        assert_eq!(v["status"]["phase"], "Pending");
        let mut v = json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}});
        default_volume(&mut v);
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        let mut v = json!({"metadata": {}, "spec": {}, "status": {"phase": "Bound"}});
        prepare_volume(&mut v);
        assert_eq!(v["status"]["phase"], "Pending");
        assert!(v["status"]["lastPhaseTransitionTime"].is_string());
    }

    #[test]
    fn volume_validation() {
        assert!(check_pv(&good_pv(), None).is_empty());
        assert_eq!(
            check_pv(&pv(json!({})), None),
            vec![
                "spec.accessModes: Required value",
                "spec.capacity: Required value",
                "spec.capacity: Unsupported value: \"{}\": supported values: \"storage\"",
                "spec: Required value: must specify a volume type",
            ]
        );
        let v = pv(json!({
            "capacity": {"storage": "0"},
            "accessModes": ["ReadWriteOncePod", "ReadWriteOnce", "Sometimes"],
            "persistentVolumeReclaimPolicy": "Keep",
            "volumeMode": "Raw",
            "hostPath": {"path": ""},
            "nfs": {"server": "s", "path": "/x"},
        }));
        assert_eq!(
            check_pv(&v, None),
            vec![
                "spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
                "spec.capacity[storage]: Invalid value: \"0\": must be greater than zero",
                "spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\": supported values: \"Delete\", \"Recycle\", \"Retain\"",
                "spec.hostPath.path: Required value",
                "spec.nfs: Forbidden: may not specify more than 1 volume type",
                "spec.volumeMode: Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"",
            ]
        );
        let v = pv(json!({
            "capacity": {"storage": "lots"},
            "accessModes": ["ReadWriteOnce"],
            "local": {"path": "/mnt/../etc"},
        }));
        assert_eq!(
            check_pv(&v, None),
            vec![
                format!("spec.capacity[storage]: Invalid value: \"lots\": {QUANTITY_FMT}"),
                "spec.local.path: Invalid value: \"/mnt/../etc\": must not contain '..'".to_owned(),
                "spec.nodeAffinity: Required value: Local volume requires node affinity".to_owned(),
            ]
        );
        let v = pv(json!({
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "local": {"path": "/mnt/disk"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}},
        }));
        assert!(check_pv(&v, None).is_empty());
        let v = pv(json!({
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "h"},
        }));
        assert!(check_pv(&v, None).is_empty());
    }

    #[test]
    fn volume_updates() {
        let old = good_pv();
        // Capacity, class, reclaim policy and access modes may change.
        let mut new = old.clone();
        new["spec"]["capacity"]["storage"] = json!("2Gi");
        new["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        new["spec"]["storageClassName"] = json!("fast");
        assert!(check_pv(&new, Some(&old)).is_empty());
        let mut new = old.clone();
        new["spec"]["hostPath"]["path"] = json!("/other");
        new["spec"]["volumeMode"] = json!("Block");
        assert_eq!(
            check_pv(&new, Some(&old)),
            vec![
                "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation",
                "volumeMode: Invalid value: \"Block\": field is immutable",
            ]
        );
        // Node affinity may be set once, then is fixed.
        let mut set = old.clone();
        set["spec"]["nodeAffinity"] =
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": []}]}});
        assert!(check_pv(&set, Some(&old)).is_empty());
        let mut changed = set.clone();
        changed["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] =
            json!([{"matchFields": []}]);
        let m = check_pv(&changed, Some(&set));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("nodeAffinity: Invalid value: ")
                && m[0]
                    .ends_with(": field is immutable, except for updating from beta label to GA"),
            "{m:?}"
        );
    }

    fn pvc(spec: Value) -> Value {
        let mut v = json!({"metadata": {"name": "c", "namespace": "d"}, "spec": spec});
        default_claim(&mut v);
        v
    }

    fn check_pvc(v: &Value, old: Option<&Value>) -> Vec<String> {
        let mut errs = Vec::new();
        validate_claim(v, old, &mut errs);
        msgs(&errs)
    }

    fn good_pvc() -> Value {
        pvc(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
        )
    }

    #[test]
    fn claim_defaults_and_validation() {
        let c = good_pvc();
        assert_eq!(c["spec"]["volumeMode"], "Filesystem");
        assert_eq!(c["status"]["phase"], "Pending");
        assert!(check_pvc(&c, None).is_empty());
        assert_eq!(
            check_pvc(&pvc(json!({})), None),
            vec![
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
        let c = pvc(json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "-1"}},
            "storageClassName": "Fast_SSD",
            "volumeMode": "Raw",
        }));
        assert_eq!(
            check_pvc(&c, None),
            vec![
                "spec.resources[storage]: Invalid value: \"-1\": must be greater than zero",
                "spec.storageClassName: Invalid value: \"Fast_SSD\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "spec.volumeMode: Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"",
            ]
        );
        // An explicitly empty class is no class, and valid.
        let mut c = good_pvc();
        c["spec"]["storageClassName"] = json!("");
        assert!(check_pvc(&c, None).is_empty());
    }

    #[test]
    fn claim_updates() {
        let old = good_pvc();
        // Unbound: the request is part of the fixed spec.
        let mut new = old.clone();
        new["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(
            check_pvc(&new, Some(&old)),
            vec![format!("spec: Forbidden: {PVC_IMMUTABLE}")]
        );
        let mut new = old.clone();
        new["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(
            check_pvc(&new, Some(&old)),
            vec![format!("spec: Forbidden: {PVC_IMMUTABLE}")]
        );
        // The same quantity written differently is no change.
        let mut new = old.clone();
        new["spec"]["resources"]["requests"]["storage"] = json!("1024Mi");
        assert!(check_pvc(&new, Some(&old)).is_empty());
        // volumeName is set once; a class once, when there was none.
        let mut named = old.clone();
        named["spec"]["volumeName"] = json!("pv-1");
        named["spec"]["storageClassName"] = json!("local-path");
        assert!(check_pvc(&named, Some(&old)).is_empty());
        let mut renamed = named.clone();
        renamed["spec"]["volumeName"] = json!("pv-2");
        assert_eq!(
            check_pvc(&renamed, Some(&named)),
            vec![format!("spec: Forbidden: {PVC_IMMUTABLE}")]
        );
        let mut reclassed = named.clone();
        reclassed["spec"]["storageClassName"] = json!("other");
        assert_eq!(
            check_pvc(&reclassed, Some(&named)),
            vec![format!("spec: Forbidden: {PVC_IMMUTABLE}")]
        );
        // Bound: the request grows, and shrinks only down to what the
        // volume has.
        let mut bound = named.clone();
        bound["status"] = json!({"phase": "Bound", "capacity": {"storage": "1Gi"}});
        let mut grown = bound.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("5Gi");
        assert!(check_pvc(&grown, Some(&bound)).is_empty());
        let mut shrunk = bound.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        assert_eq!(
            check_pvc(&shrunk, Some(&bound)),
            vec![
                "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
            ]
        );
        let mut back = grown.clone();
        back["spec"]["resources"]["requests"]["storage"] = json!("3Gi");
        assert!(check_pvc(&back, Some(&grown)).is_empty());
        let mut block = bound.clone();
        block["spec"]["volumeMode"] = json!("Block");
        assert_eq!(
            check_pvc(&block, Some(&bound)),
            vec![
                format!("spec: Forbidden: {PVC_IMMUTABLE}"),
                "volumeMode: Invalid value: \"Block\": field is immutable".to_owned(),
            ]
        );
    }

    fn sc(extra: Value) -> Value {
        let mut v = json!({"metadata": {"name": "fast"}, "provisioner": "kestrel.io/local-path"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        default_class(&mut v);
        v
    }

    fn check_sc(v: &Value, old: Option<&Value>) -> Vec<String> {
        let mut errs = Vec::new();
        validate_class(v, old, &mut errs);
        msgs(&errs)
    }

    #[test]
    fn classes() {
        let c = sc(json!({}));
        assert_eq!(c["reclaimPolicy"], "Delete");
        assert_eq!(c["volumeBindingMode"], "Immediate");
        assert!(check_sc(&c, None).is_empty());
        let mut bad = sc(json!({"reclaimPolicy": "Recycle", "volumeBindingMode": "Later"}));
        bad.as_object_mut().map(|o| o.remove("provisioner"));
        assert_eq!(
            check_sc(&bad, None),
            vec![
                "provisioner: Required value",
                "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\"",
                "volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"",
            ]
        );
        let bad = sc(json!({"provisioner": "a/b/c"}));
        assert_eq!(check_sc(&bad, None).len(), 1);
        let old = sc(json!({"parameters": {"k": "v"}}));
        let mut new = sc(json!({
            "provisioner": "other.io/x",
            "parameters": {"k": "w"},
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": true,
        }));
        new["metadata"]["annotations"] = json!({"a": "b"});
        assert_eq!(
            check_sc(&new, Some(&old)),
            vec![
                "parameters: Forbidden: updates to parameters are forbidden.",
                "provisioner: Forbidden: updates to provisioner are forbidden.",
                "reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden.",
                "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable",
            ]
        );
        // Annotations and allowVolumeExpansion may change.
        let mut new = old.clone();
        new["metadata"]["annotations"] =
            json!({"storageclass.kubernetes.io/is-default-class": "true"});
        new["allowVolumeExpansion"] = json!(true);
        assert!(check_sc(&new, Some(&old)).is_empty());
    }
}
