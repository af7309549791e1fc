//! The resource registry: one declarative entry per served resource. Adding a
//! kind is adding one `ResourceDef` literal to [`RESOURCES`]; discovery,
//! routing, field selectors, storage paths and Table output all read it.

use k8s_openapi::api as k8s;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::printers;
use crate::validation::NameRule;

/// Decode `v` as the typed k8s-openapi object `T` and encode it again: the
/// schema check and normaliser behind [`ResourceDef::schema`].
pub fn typed<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// What the server does with a kind's typed k8s-openapi struct, as plain
/// function pointers so the registry stays a static table.
#[derive(Debug, Clone, Copy)]
pub struct TypeOps {
    /// Decode and re-encode through the type: refuses wrong field types and
    /// drops unknown fields, as upstream's decoder does.
    pub normalize: fn(Value) -> Result<Value, String>,
    /// Add the type's OpenAPI schema (and everything it references) to the
    /// generator and return a reference to it.
    pub json_schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl TypeOps {
    /// The operations for `T`.
    pub const fn of<T: DeserializeOwned + Serialize + schemars::JsonSchema>() -> Self {
        Self {
            normalize: typed::<T>,
            json_schema: schema_ref::<T>,
        }
    }
}

/// How the server reads and checks a kind's objects: through its typed
/// k8s-openapi struct (built-in kinds) or through the structural schema of
/// the CustomResourceDefinition that defines it.
#[derive(Debug, Clone, Copy)]
pub enum Types {
    /// A built-in kind.
    Typed(TypeOps),
    /// A custom resource, served from an established CRD.
    Custom(&'static Custom),
}

/// What a CustomResourceDefinition says about one served version beyond the
/// common [`ResourceDef`] fields.
#[derive(Debug)]
pub struct Custom {
    /// The version's structural schema: pruning, defaulting, validation
    /// (with CEL rules) and OpenAPI publication.
    pub schema: crate::schema::Structural,
    /// The version objects are stored in; reads through other versions
    /// rewrite `apiVersion` (conversion strategy None).
    pub storage_version: &'static str,
    /// The `Warning` header sent on requests to a deprecated version.
    pub deprecation_warning: Option<String>,
    /// The scale subresource's JSON paths, when the CRD has one.
    pub scale: Option<ScalePaths>,
    /// The CRD's name (`<plural>.<group>`) and uid, which identify it.
    pub crd: (&'static str, &'static str),
    /// How its lists merge (from the schema's list types).
    pub lists: crate::lists::ListTree,
}

/// A CRD's `subresources.scale`: where replicas and the selector live.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    /// `specReplicasPath`, e.g. `.spec.replicas`.
    pub spec_replicas: String,
    /// `statusReplicasPath`, e.g. `.status.replicas`.
    pub status_replicas: String,
    /// `labelSelectorPath`, e.g. `.status.selector`.
    pub label_selector: Option<String>,
}

impl Types {
    /// Decode an object as the server stores it: through the typed struct
    /// (refusing wrong field types, dropping unknown fields, as upstream's
    /// decoder), or for a custom resource by pruning unknown fields and
    /// applying the schema's defaults (its validation runs after admission).
    pub fn normalize(&self, v: Value) -> Result<Value, String> {
        match self {
            Self::Typed(ops) => (ops.normalize)(v),
            Self::Custom(c) => {
                let mut v = v;
                c.schema.prune(&mut v);
                c.schema.apply_defaults(&mut v);
                Ok(v)
            }
        }
    }

    /// The custom resource's definition, if this is one.
    pub fn custom(&self) -> Option<&'static Custom> {
        match self {
            Self::Custom(c) => Some(c),
            Self::Typed(_) => None,
        }
    }
}

fn schema_ref<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// The verbs of a fully writable resource, in upstream's discovery order.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A subresource served under `/<resource>/<name>/<sub>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `status`: get/update/patch of `.status` only.
    Status,
    /// `scale`: an `autoscaling/v1` Scale view of `.spec.replicas`.
    Scale,
    /// `binding`: pods only, sets `spec.nodeName`.
    Binding,
    /// `eviction`: pods only, a policy/v1 Eviction deletes the pod.
    Eviction,
    /// `log`: proxied to the node agent.
    Log,
    /// `exec`: proxied to the node agent.
    Exec,
    /// `attach`: proxied to the node agent.
    Attach,
    /// `finalize`: namespaces only, updates `spec.finalizers`.
    Finalize,
    /// `token`: serviceaccounts only, an authentication.k8s.io/v1
    /// TokenRequest creates a token for the ServiceAccount.
    Token,
    /// `portforward`: pods only, tunnelled to the node agent.
    PortForward,
    /// `proxy`: pods, services and nodes, HTTP proxied to them.
    Proxy,
    /// `ephemeralcontainers`: pods only, get/update/patch of
    /// `spec.ephemeralContainers`.
    EphemeralContainers,
}

impl Subresource {
    /// Path segment.
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Binding => "binding",
            Self::Eviction => "eviction",
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::Finalize => "finalize",
            Self::Token => "token",
            Self::PortForward => "portforward",
            Self::Proxy => "proxy",
            Self::EphemeralContainers => "ephemeralcontainers",
        }
    }

    /// Verbs as upstream advertises them in discovery.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Self::Status | Self::Scale | Self::EphemeralContainers => &["get", "patch", "update"],
            Self::Binding | Self::Eviction | Self::Token => &["create"],
            Self::Log => &["get"],
            Self::Exec | Self::Attach | Self::PortForward => &["create", "get"],
            Self::Proxy => &["create", "delete", "get", "patch", "update"],
            Self::Finalize => &["update"],
        }
    }

    /// (group, version, kind) of the subresource's body.
    pub fn kind(self, parent: &ResourceDef) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Status | Self::Finalize | Self::EphemeralContainers => {
                (parent.group, parent.version, parent.kind)
            }
            Self::Scale => ("autoscaling", "v1", "Scale"),
            Self::Binding => ("", "v1", "Binding"),
            Self::Eviction => ("policy", "v1", "Eviction"),
            Self::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
            Self::Log | Self::Exec | Self::Attach => ("", "v1", "Pod"),
            Self::PortForward => ("", "v1", "PodPortForwardOptions"),
            Self::Proxy => match parent.kind {
                "Service" => ("", "v1", "ServiceProxyOptions"),
                "Node" => ("", "v1", "NodeProxyOptions"),
                _ => ("", "v1", "PodProxyOptions"),
            },
        }
    }
}

/// How a Table cell is computed from the object.
#[derive(Debug, Clone, Copy)]
pub enum Cell {
    /// `metadata.name`.
    Name,
    /// Age since `metadata.creationTimestamp`, human-readable (`5m`, `2d3h`).
    Age,
    /// `metadata.creationTimestamp` verbatim.
    CreatedAt,
    /// A dotted path; missing renders as `<none>` for strings, 0 for integers.
    Path(&'static str),
    /// A CRD printer column's JSONPath (`.status.conditions[?(@.type=="Ready")].status`);
    /// missing renders as an empty cell.
    JsonPath(&'static str),
    /// A computed cell.
    Func(fn(&Value) -> Value),
}

/// One printer column: the server-side Table column kubectl shows.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header, as kubectl shows it (upper-cased by kubectl).
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `date`...
    pub type_: &'static str,
    /// OpenAPI format, e.g. `name`.
    pub format: &'static str,
    /// Column description.
    pub description: &'static str,
    /// 0 = default output, 1 = `-o wide` only.
    pub priority: i32,
    /// How to compute the cell.
    pub cell: Cell,
}

const fn col(name: &'static str, type_: &'static str, priority: i32, cell: Cell) -> Column {
    Column {
        name,
        type_,
        format: "",
        description: "",
        priority,
        cell,
    }
}

/// The Name column every kind's Table starts with.
pub const NAME: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: Cell::Name,
};
/// The Age column.
pub const AGE: Column = Column {
    name: "Age",
    type_: "string",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: Cell::Age,
};
const CREATED_AT: Column = col("Created At", "date", 0, Cell::CreatedAt);

/// When `metadata.generation` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// For kinds whose status is a subresource, as upstream's strategies.
    WithStatus,
    /// Always (custom resources).
    Always,
    /// Never (Namespace, Node).
    Never,
}

/// Behaviour of a kind that needs the API server's own state, carried out
/// by the hook the API server keeps for it (`control/apiserver/src/kinds/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hooks {
    /// Only the generic path.
    None,
    /// ClusterIP and NodePort allocation and release.
    Service,
    /// Graceful deletion of bound pods, finished by the node agent.
    Pod,
    /// Deletion through the namespace lifecycle (Terminating, finalize).
    Namespace,
    /// Not stored: read as the control plane's health, on each request
    /// (the deprecated ComponentStatus).
    ComponentStatus,
}

/// How the generic write path treats a kind: upstream's per-kind strategy
/// as data on the resource definition.
#[derive(Debug, Clone, Copy)]
pub struct Strategy {
    /// When `metadata.generation` is kept.
    pub generation: Generation,
    /// Creators may set `status` (otherwise a create drops it).
    pub creator_sets_status: bool,
    /// `spec.finalizers` is the kind's own (Namespace): kept on updates,
    /// changed through `finalize`, and holding deletion like metadata's.
    pub spec_finalizers: bool,
    /// Objects expire this long after they are written (Events, upstream's
    /// `--event-ttl`).
    pub ttl_secs: Option<u64>,
    /// The API server's hook for the kind.
    pub hooks: Hooks,
}

impl Strategy {
    /// What most kinds do.
    pub const DEFAULT: Self = Self {
        generation: Generation::WithStatus,
        creator_sets_status: false,
        spec_finalizers: false,
        ttl_secs: None,
        hooks: Hooks::None,
    };
}

/// Everything the server needs to know about one resource.
#[derive(Debug, Clone, Copy)]
pub struct ResourceDef {
    /// API group, empty for core.
    pub group: &'static str,
    /// Served (and storage) version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Kind of the list, e.g. `PodList`.
    pub list_kind: &'static str,
    /// Plural resource name, the URL segment.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Verbs on the main resource.
    pub verbs: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Subresource],
    /// Categories (`all` is what `kubectl get all` expands).
    pub categories: &'static [&'static str],
    /// Table columns, in order.
    pub columns: &'static [Column],
    /// Field selector paths beyond `metadata.name`/`metadata.namespace`.
    pub field_selectors: &'static [&'static str],
    /// Name validation rule.
    pub name_rule: NameRule,
    /// The kind's type: its k8s-openapi struct or its CRD schema.
    pub types: Types,
    /// How the generic write path treats the kind (upstream's strategy).
    pub strategy: Strategy,
}

impl ResourceDef {
    /// `apiVersion` string, e.g. `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `.status` is a separate subresource, so the main resource
    /// ignores status changes and `/status` ignores everything else.
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&Subresource::Status)
    }

    /// Whether this resource serves `sub`.
    pub fn has_subresource(&self, sub: &str) -> Option<Subresource> {
        self.subresources.iter().copied().find(|s| s.name() == sub)
    }

    /// Whether objects keep `metadata.generation`.
    pub fn tracks_generation(&self) -> bool {
        match self.strategy.generation {
            Generation::Always => true,
            Generation::WithStatus => self.has_status(),
            Generation::Never => false,
        }
    }

    /// Whether the verb is allowed on the main resource.
    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The storage key prefix for this resource, e.g. `/registry/apps/deployments/`.
    /// Core resources use `core` as their group segment so prefixes never nest.
    pub fn key_prefix(&self) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{g}/{}/", self.plural)
    }

    /// Storage key prefix for one namespace (or all, for cluster-scoped).
    pub fn key_prefix_ns(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// Storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }
}

const CORE_ALL: &[&str] = &["all"];

/// Every resource the server serves.
pub static RESOURCES: &[ResourceDef] = &[
    // ---- core/v1
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Namespace",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Namespace>()),
        list_kind: "NamespaceList",
        plural: "namespaces",
        singular: "namespace",
        short_names: &["ns"],
        namespaced: false,
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        subresources: &[Subresource::Status, Subresource::Finalize],
        categories: &[],
        columns: &[
            NAME,
            col("Status", "string", 0, Cell::Path("status.phase")),
            AGE,
        ],
        field_selectors: &["status.phase"],
        strategy: Strategy {
            generation: Generation::Never,
            creator_sets_status: true,
            spec_finalizers: true,
            hooks: Hooks::Namespace,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Label,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Node",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Node>()),
        list_kind: "NodeList",
        plural: "nodes",
        singular: "node",
        short_names: &["no"],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status, Subresource::Proxy],
        categories: &[],
        columns: &[
            NAME,
            col("Status", "string", 0, Cell::Func(printers::node_status)),
            col("Roles", "string", 0, Cell::Func(printers::node_roles)),
            AGE,
            col(
                "Version",
                "string",
                0,
                Cell::Path("status.nodeInfo.kubeletVersion"),
            ),
            col(
                "Internal-IP",
                "string",
                1,
                Cell::Func(printers::node_internal_ip),
            ),
            col(
                "External-IP",
                "string",
                1,
                Cell::Func(printers::node_external_ip),
            ),
            col(
                "OS-Image",
                "string",
                1,
                Cell::Path("status.nodeInfo.osImage"),
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                Cell::Path("status.nodeInfo.kernelVersion"),
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                Cell::Path("status.nodeInfo.containerRuntimeVersion"),
            ),
        ],
        field_selectors: &["spec.unschedulable"],
        strategy: Strategy {
            generation: Generation::Never,
            creator_sets_status: true,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Pod",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Pod>()),
        list_kind: "PodList",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[
            Subresource::Status,
            Subresource::Binding,
            Subresource::Eviction,
            Subresource::Attach,
            Subresource::Exec,
            Subresource::Log,
            Subresource::PortForward,
            Subresource::Proxy,
            Subresource::EphemeralContainers,
        ],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col("Ready", "string", 0, Cell::Func(printers::pod_ready)),
            col("Status", "string", 0, Cell::Func(printers::pod_status)),
            col("Restarts", "string", 0, Cell::Func(printers::pod_restarts)),
            AGE,
            col("IP", "string", 1, Cell::Path("status.podIP")),
            col("Node", "string", 1, Cell::Path("spec.nodeName")),
            col(
                "Nominated Node",
                "string",
                1,
                Cell::Path("status.nominatedNodeName"),
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                Cell::Func(printers::pod_readiness_gates),
            ),
        ],
        field_selectors: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        strategy: Strategy {
            hooks: Hooks::Pod,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Service",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Service>()),
        list_kind: "ServiceList",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        namespaced: true,
        verbs: &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
        subresources: &[Subresource::Status, Subresource::Proxy],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col("Type", "string", 0, Cell::Path("spec.type")),
            col("Cluster-IP", "string", 0, Cell::Path("spec.clusterIP")),
            col(
                "External-IP",
                "string",
                0,
                Cell::Func(printers::service_external_ip),
            ),
            col("Port(s)", "string", 0, Cell::Func(printers::service_ports)),
            AGE,
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::service_selector),
            ),
        ],
        field_selectors: &["spec.clusterIP", "spec.type"],
        strategy: Strategy {
            hooks: Hooks::Service,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Label,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Endpoints",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Endpoints>()),
        list_kind: "EndpointsList",
        plural: "endpoints",
        singular: "endpoints",
        short_names: &["ep"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Endpoints", "string", 0, Cell::Func(printers::endpoints)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ReplicationController",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::ReplicationController>()),
        list_kind: "ReplicationControllerList",
        plural: "replicationcontrollers",
        singular: "replicationcontroller",
        short_names: &["rc"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status, Subresource::Scale],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col("Desired", "integer", 0, Cell::Path("spec.replicas")),
            col("Current", "integer", 0, Cell::Path("status.replicas")),
            col("Ready", "integer", 0, Cell::Path("status.readyReplicas")),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::template_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::template_images)),
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::map_workload_selector),
            ),
        ],
        field_selectors: &["status.replicas"],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "PodTemplate",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::PodTemplate>()),
        list_kind: "PodTemplateList",
        plural: "podtemplates",
        singular: "podtemplate",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Containers", "string", 0, Cell::Func(printers::podtemplate_containers)),
            col("Images", "string", 0, Cell::Func(printers::podtemplate_images)),
            col("Pod Labels", "string", 0, Cell::Func(printers::template_labels)),
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::ConfigMap>()),
        list_kind: "ConfigMapList",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Data", "integer", 0, Cell::Func(printers::data_count)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Secret",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Secret>()),
        list_kind: "SecretList",
        plural: "secrets",
        singular: "secret",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Type", "string", 0, Cell::Path("type")),
            col("Data", "integer", 0, Cell::Func(printers::data_count)),
            AGE,
        ],
        field_selectors: &["type"],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::ServiceAccount>()),
        list_kind: "ServiceAccountList",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        short_names: &["sa"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Token],
        categories: &[],
        columns: &[NAME, AGE],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "LimitRange",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::LimitRange>()),
        list_kind: "LimitRangeList",
        plural: "limitranges",
        singular: "limitrange",
        short_names: &["limits"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[NAME, CREATED_AT],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ResourceQuota",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::ResourceQuota>()),
        list_kind: "ResourceQuotaList",
        plural: "resourcequotas",
        singular: "resourcequota",
        short_names: &["quota"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &[],
        columns: &[NAME, AGE],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // Persistent storage: volumes (cluster-scoped) and the claims pods
    // name; the PersistentVolume controller binds one to the other.
    ResourceDef {
        group: "",
        version: "v1",
        kind: "PersistentVolume",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::PersistentVolume>()),
        list_kind: "PersistentVolumeList",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        short_names: &["pv"],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &[],
        columns: &[
            NAME,
            col("Capacity", "string", 0, Cell::Func(printers::pv_capacity)),
            col("Access Modes", "string", 0, Cell::Func(printers::pv_access_modes)),
            col("Reclaim Policy", "string", 0, Cell::Func(printers::pv_reclaim_policy)),
            col("Status", "string", 0, Cell::Func(printers::volume_status)),
            col("Claim", "string", 0, Cell::Func(printers::pv_claim)),
            col("StorageClass", "string", 0, Cell::Func(printers::storage_class_name)),
            col("VolumeAttributesClass", "string", 0, Cell::Func(printers::volume_attributes_class)),
            col("Reason", "string", 0, Cell::Func(printers::pv_reason)),
            AGE,
            col("VolumeMode", "string", 1, Cell::Func(printers::volume_mode)),
        ],
        field_selectors: &[],
        strategy: Strategy {
            generation: Generation::Never,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::PersistentVolumeClaim>()),
        list_kind: "PersistentVolumeClaimList",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        short_names: &["pvc"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &[],
        columns: &[
            NAME,
            col("Status", "string", 0, Cell::Func(printers::volume_status)),
            col("Volume", "string", 0, Cell::Func(printers::pvc_volume)),
            col("Capacity", "string", 0, Cell::Func(printers::pvc_capacity)),
            col("Access Modes", "string", 0, Cell::Func(printers::pvc_access_modes)),
            col("StorageClass", "string", 0, Cell::Func(printers::storage_class_name)),
            col("VolumeAttributesClass", "string", 0, Cell::Func(printers::volume_attributes_class)),
            AGE,
            col("VolumeMode", "string", 1, Cell::Func(printers::volume_mode)),
        ],
        field_selectors: &[],
        strategy: Strategy {
            generation: Generation::Never,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Subdomain,
    },
    // The deprecated ComponentStatus, computed on each read: the
    // scheduler's and controller manager's Leases and the store's health.
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ComponentStatus",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::ComponentStatus>()),
        list_kind: "ComponentStatusList",
        plural: "componentstatuses",
        singular: "componentstatus",
        short_names: &["cs"],
        namespaced: false,
        verbs: &["get", "list"],
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Status", "string", 0, Cell::Func(printers::component_health)),
            col("Message", "string", 0, Cell::JsonPath(r#".conditions[?(@.type=="Healthy")].message"#)),
            col("Error", "string", 0, Cell::JsonPath(r#".conditions[?(@.type=="Healthy")].error"#)),
        ],
        field_selectors: &[],
        strategy: Strategy {
            hooks: Hooks::ComponentStatus,
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Event",
        types: Types::Typed(TypeOps::of::<k8s::core::v1::Event>()),
        list_kind: "EventList",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            col(
                "Last Seen",
                "string",
                0,
                Cell::Func(printers::event_last_seen),
            ),
            col("Type", "string", 0, Cell::Path("type")),
            col("Reason", "string", 0, Cell::Path("reason")),
            col("Object", "string", 0, Cell::Func(printers::event_object)),
            col("Message", "string", 0, Cell::Path("message")),
        ],
        field_selectors: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        strategy: Strategy {
            ttl_secs: Some(3600),
            ..Strategy::DEFAULT
        },
        name_rule: NameRule::Subdomain,
    },
    // ---- apps/v1
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        types: Types::Typed(TypeOps::of::<k8s::apps::v1::ControllerRevision>()),
        list_kind: "ControllerRevisionList",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Controller", "string", 0, Cell::Func(printers::revision_controller)),
            col("Revision", "integer", 0, Cell::Path("revision")),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        types: Types::Typed(TypeOps::of::<k8s::apps::v1::Deployment>()),
        list_kind: "DeploymentList",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status, Subresource::Scale],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col(
                "Ready",
                "string",
                0,
                Cell::Func(printers::ready_of_replicas),
            ),
            col(
                "Up-to-date",
                "integer",
                0,
                Cell::Path("status.updatedReplicas"),
            ),
            col(
                "Available",
                "integer",
                0,
                Cell::Path("status.availableReplicas"),
            ),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::template_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::template_images)),
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::workload_selector),
            ),
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        types: Types::Typed(TypeOps::of::<k8s::apps::v1::ReplicaSet>()),
        list_kind: "ReplicaSetList",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status, Subresource::Scale],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col("Desired", "integer", 0, Cell::Path("spec.replicas")),
            col("Current", "integer", 0, Cell::Path("status.replicas")),
            col("Ready", "integer", 0, Cell::Path("status.readyReplicas")),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::template_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::template_images)),
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::workload_selector),
            ),
        ],
        field_selectors: &["status.replicas"],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        types: Types::Typed(TypeOps::of::<k8s::apps::v1::StatefulSet>()),
        list_kind: "StatefulSetList",
        plural: "statefulsets",
        singular: "statefulset",
        short_names: &["sts"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status, Subresource::Scale],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col(
                "Ready",
                "string",
                0,
                Cell::Func(printers::ready_of_replicas),
            ),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::template_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::template_images)),
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        types: Types::Typed(TypeOps::of::<k8s::apps::v1::DaemonSet>()),
        list_kind: "DaemonSetList",
        plural: "daemonsets",
        singular: "daemonset",
        short_names: &["ds"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col(
                "Desired",
                "integer",
                0,
                Cell::Path("status.desiredNumberScheduled"),
            ),
            col(
                "Current",
                "integer",
                0,
                Cell::Path("status.currentNumberScheduled"),
            ),
            col("Ready", "integer", 0, Cell::Path("status.numberReady")),
            col(
                "Up-to-date",
                "integer",
                0,
                Cell::Path("status.updatedNumberScheduled"),
            ),
            col(
                "Available",
                "integer",
                0,
                Cell::Path("status.numberAvailable"),
            ),
            col(
                "Node Selector",
                "string",
                0,
                Cell::Func(printers::node_selector),
            ),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::template_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::template_images)),
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::workload_selector),
            ),
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- batch/v1
    ResourceDef {
        group: "batch",
        version: "v1",
        kind: "Job",
        types: Types::Typed(TypeOps::of::<k8s::batch::v1::Job>()),
        list_kind: "JobList",
        plural: "jobs",
        singular: "job",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col("Status", "string", 0, Cell::Func(printers::job_status)),
            col(
                "Completions",
                "string",
                0,
                Cell::Func(printers::job_completions),
            ),
            col("Duration", "string", 0, Cell::Func(printers::job_duration)),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::template_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::template_images)),
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::workload_selector),
            ),
        ],
        field_selectors: &["status.successful"],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        types: Types::Typed(TypeOps::of::<k8s::batch::v1::CronJob>()),
        list_kind: "CronJobList",
        plural: "cronjobs",
        singular: "cronjob",
        short_names: &["cj"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: CORE_ALL,
        columns: &[
            NAME,
            col("Schedule", "string", 0, Cell::Path("spec.schedule")),
            col(
                "Timezone",
                "string",
                0,
                Cell::Func(printers::cronjob_time_zone),
            ),
            col("Suspend", "boolean", 0, Cell::Func(printers::cronjob_suspend)),
            col("Active", "integer", 0, Cell::Func(printers::cronjob_active)),
            col(
                "Last Schedule",
                "date",
                0,
                Cell::Func(printers::cronjob_last_schedule),
            ),
            AGE,
            col(
                "Containers",
                "string",
                1,
                Cell::Func(printers::cronjob_containers),
            ),
            col("Images", "string", 1, Cell::Func(printers::cronjob_images)),
            col(
                "Selector",
                "string",
                1,
                Cell::Func(printers::cronjob_selector),
            ),
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- discovery.k8s.io/v1
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        types: Types::Typed(TypeOps::of::<k8s::discovery::v1::EndpointSlice>()),
        list_kind: "EndpointSliceList",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("AddressType", "string", 0, Cell::Path("addressType")),
            col("Ports", "string", 0, Cell::Func(printers::slice_ports)),
            col(
                "Endpoints",
                "string",
                0,
                Cell::Func(printers::slice_endpoints),
            ),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- networking.k8s.io/v1
    // ---- node.k8s.io/v1: container runtime handlers pods may ask for
    ResourceDef {
        group: "node.k8s.io",
        version: "v1",
        kind: "RuntimeClass",
        types: Types::Typed(TypeOps::of::<k8s::node::v1::RuntimeClass>()),
        list_kind: "RuntimeClassList",
        plural: "runtimeclasses",
        singular: "runtimeclass",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[NAME, col("Handler", "string", 0, Cell::Path("handler")), AGE],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- scheduling.k8s.io/v1: pod priority (the Priority admission plugin)
    ResourceDef {
        group: "scheduling.k8s.io",
        version: "v1",
        kind: "PriorityClass",
        types: Types::Typed(TypeOps::of::<k8s::scheduling::v1::PriorityClass>()),
        list_kind: "PriorityClassList",
        plural: "priorityclasses",
        singular: "priorityclass",
        short_names: &["pc"],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Value", "integer", 0, Cell::Path("value")),
            col("Global-Default", "boolean", 0, Cell::Func(printers::global_default)),
            AGE,
            col("PreemptionPolicy", "string", 0, Cell::Path("preemptionPolicy")),
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- storage.k8s.io/v1: classes of dynamically provisioned volumes
    ResourceDef {
        group: "storage.k8s.io",
        version: "v1",
        kind: "StorageClass",
        types: Types::Typed(TypeOps::of::<k8s::storage::v1::StorageClass>()),
        list_kind: "StorageClassList",
        plural: "storageclasses",
        singular: "storageclass",
        short_names: &["sc"],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            Column {
                cell: Cell::Func(printers::storage_class_display_name),
                ..NAME
            },
            col("Provisioner", "string", 0, Cell::Path("provisioner")),
            col("ReclaimPolicy", "string", 0, Cell::Func(printers::sc_reclaim_policy)),
            col("VolumeBindingMode", "string", 0, Cell::Func(printers::sc_binding_mode)),
            col("AllowVolumeExpansion", "boolean", 0, Cell::Func(printers::sc_allow_expansion)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- policy/v1: disruption budgets, honoured by pod eviction
    ResourceDef {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        types: Types::Typed(TypeOps::of::<k8s::policy::v1::PodDisruptionBudget>()),
        list_kind: "PodDisruptionBudgetList",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        short_names: &["pdb"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &[],
        columns: &[
            NAME,
            col("Min Available", "string", 0, Cell::Func(printers::pdb_min_available)),
            col("Max Unavailable", "string", 0, Cell::Func(printers::pdb_max_unavailable)),
            col("Allowed Disruptions", "integer", 0, Cell::Path("status.disruptionsAllowed")),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        types: Types::Typed(TypeOps::of::<k8s::networking::v1::Ingress>()),
        list_kind: "IngressList",
        plural: "ingresses",
        singular: "ingress",
        short_names: &["ing"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &[],
        columns: &[
            NAME,
            col("Class", "string", 0, Cell::Func(printers::ingress_class)),
            col("Hosts", "string", 0, Cell::Func(printers::ingress_hosts)),
            col("Address", "string", 0, Cell::Func(printers::ingress_address)),
            col("Ports", "string", 0, Cell::Func(printers::ingress_ports)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IngressClass",
        types: Types::Typed(TypeOps::of::<k8s::networking::v1::IngressClass>()),
        list_kind: "IngressClassList",
        plural: "ingressclasses",
        singular: "ingressclass",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Controller", "string", 0, Cell::Path("spec.controller")),
            col("Parameters", "string", 0, Cell::Func(printers::ingress_class_parameters)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        types: Types::Typed(TypeOps::of::<k8s::networking::v1::NetworkPolicy>()),
        list_kind: "NetworkPolicyList",
        plural: "networkpolicies",
        singular: "networkpolicy",
        short_names: &["netpol"],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col(
                "Pod-Selector",
                "string",
                0,
                Cell::Func(printers::netpol_pod_selector),
            ),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- coordination.k8s.io/v1
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        types: Types::Typed(TypeOps::of::<k8s::coordination::v1::Lease>()),
        list_kind: "LeaseList",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Holder", "string", 0, Cell::Path("spec.holderIdentity")),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- certificates.k8s.io/v1 (node join: agents request client certs)
    ResourceDef {
        group: "certificates.k8s.io",
        version: "v1",
        kind: "CertificateSigningRequest",
        types: Types::Typed(TypeOps::of::<k8s::certificates::v1::CertificateSigningRequest>()),
        list_kind: "CertificateSigningRequestList",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        short_names: &["csr"],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &[],
        columns: &[
            NAME,
            AGE,
            col("SignerName", "string", 0, Cell::Path("spec.signerName")),
            col("Requestor", "string", 0, Cell::Path("spec.username")),
            col(
                "Condition",
                "string",
                0,
                Cell::Func(printers::csr_condition),
            ),
        ],
        field_selectors: &["spec.signerName"],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- rbac.authorization.k8s.io/v1 (enforced by the apiserver's authz)
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        types: Types::Typed(TypeOps::of::<k8s::rbac::v1::Role>()),
        list_kind: "RoleList",
        plural: "roles",
        singular: "role",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[NAME, CREATED_AT],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        types: Types::Typed(TypeOps::of::<k8s::rbac::v1::RoleBinding>()),
        list_kind: "RoleBindingList",
        plural: "rolebindings",
        singular: "rolebinding",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Role", "string", 0, Cell::Func(printers::binding_role)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        types: Types::Typed(TypeOps::of::<k8s::rbac::v1::ClusterRole>()),
        list_kind: "ClusterRoleList",
        plural: "clusterroles",
        singular: "clusterrole",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[NAME, CREATED_AT],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        types: Types::Typed(TypeOps::of::<k8s::rbac::v1::ClusterRoleBinding>()),
        list_kind: "ClusterRoleBindingList",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &[],
        columns: &[
            NAME,
            col("Role", "string", 0, Cell::Func(printers::binding_role)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    // ---- authorization.k8s.io/v1 and authentication.k8s.io/v1 reviews:
    // created and answered, never stored (served by the apiserver's authz).
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        types: Types::Typed(TypeOps::of::<k8s::authorization::v1::SelfSubjectAccessReview>()),
        list_kind: "SelfSubjectAccessReviewList",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        short_names: &[],
        namespaced: false,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
        columns: &[NAME],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectRulesReview",
        types: Types::Typed(TypeOps::of::<k8s::authorization::v1::SelfSubjectRulesReview>()),
        list_kind: "SelfSubjectRulesReviewList",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        short_names: &[],
        namespaced: false,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
        columns: &[NAME],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        types: Types::Typed(TypeOps::of::<k8s::authorization::v1::SubjectAccessReview>()),
        list_kind: "SubjectAccessReviewList",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        short_names: &[],
        namespaced: false,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
        columns: &[NAME],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "LocalSubjectAccessReview",
        types: Types::Typed(TypeOps::of::<k8s::authorization::v1::LocalSubjectAccessReview>()),
        list_kind: "LocalSubjectAccessReviewList",
        plural: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        short_names: &[],
        namespaced: true,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
        columns: &[NAME],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "SelfSubjectReview",
        types: Types::Typed(TypeOps::of::<k8s::authentication::v1::SelfSubjectReview>()),
        list_kind: "SelfSubjectReviewList",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        short_names: &[],
        namespaced: false,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
        columns: &[NAME],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    ResourceDef {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "TokenReview",
        types: Types::Typed(TypeOps::of::<k8s::authentication::v1::TokenReview>()),
        list_kind: "TokenReviewList",
        plural: "tokenreviews",
        singular: "tokenreview",
        short_names: &[],
        namespaced: false,
        verbs: CREATE_ONLY,
        subresources: &[],
        categories: &[],
        columns: &[NAME],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    // ---- admissionregistration.k8s.io/v1: the webhooks the admission
    // chain calls (control/apiserver/src/admission/webhook.rs).
    ResourceDef {
        group: "admissionregistration.k8s.io",
        version: "v1",
        kind: "MutatingWebhookConfiguration",
        types: Types::Typed(TypeOps::of::<k8s::admissionregistration::v1::MutatingWebhookConfiguration>()),
        list_kind: "MutatingWebhookConfigurationList",
        plural: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &["api-extensions"],
        columns: &[NAME, WEBHOOKS, AGE],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    ResourceDef {
        group: "admissionregistration.k8s.io",
        version: "v1",
        kind: "ValidatingWebhookConfiguration",
        types: Types::Typed(TypeOps::of::<k8s::admissionregistration::v1::ValidatingWebhookConfiguration>()),
        list_kind: "ValidatingWebhookConfigurationList",
        plural: "validatingwebhookconfigurations",
        singular: "validatingwebhookconfiguration",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[],
        categories: &["api-extensions"],
        columns: &[NAME, WEBHOOKS, AGE],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
    // ---- apiregistration.k8s.io/v1
    ResourceDef {
        group: "apiregistration.k8s.io",
        version: "v1",
        kind: "APIService",
        types: Types::Typed(TypeOps::of::<
            k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
        >()),
        list_kind: "APIServiceList",
        plural: "apiservices",
        singular: "apiservice",
        short_names: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &["api-extensions"],
        columns: &[
            NAME,
            col("Service", "string", 0, Cell::Func(printers::apiservice_service)),
            col("Available", "string", 0, Cell::Func(printers::apiservice_available)),
            AGE,
        ],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::PathSegment,
    },
    // ---- apiextensions.k8s.io/v1
    ResourceDef {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        types: Types::Typed(TypeOps::of::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >()),
        list_kind: "CustomResourceDefinitionList",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        short_names: &["crd", "crds"],
        namespaced: false,
        verbs: ALL_VERBS,
        subresources: &[Subresource::Status],
        categories: &["api-extensions"],
        columns: &[NAME, CREATED_AT],
        field_selectors: &[],
        strategy: Strategy::DEFAULT,
        name_rule: NameRule::Subdomain,
    },
];

/// Webhook configurations: how many webhooks they hold.
const WEBHOOKS: Column = col(
    "Webhooks",
    "integer",
    0,
    Cell::Func(|v| {
        serde_json::json!(
            v.get("webhooks")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        )
    }),
);

/// Verbs of the review kinds, which are only ever created.
const CREATE_ONLY: &[&str] = &["create"];

/// Find a resource by group, version and plural.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Find a resource by group, version and kind.
pub fn lookup_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Split an `apiVersion` into (group, version).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// The served groups, each with its versions, in registry order (core first,
/// as `""`).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) => {
                if !vs.contains(&r.version) {
                    vs.push(r.version);
                }
            }
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// The resources of one group/version.
pub fn resources_in(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceDef> {
    let (g, v) = (group.to_owned(), version.to_owned());
    RESOURCES
        .iter()
        .filter(move |r| r.group == g && r.version == v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_unique_and_consistent() {
        for (i, a) in RESOURCES.iter().enumerate() {
            assert_eq!(a.list_kind, format!("{}List", a.kind));
            assert!(
                a.columns.iter().any(|c| c.format == "name") || a.kind == "Event",
                "{}",
                a.kind
            );
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !(a.group == b.group && a.plural == b.plural),
                    "duplicate {}",
                    a.plural
                );
                for s in a.short_names {
                    assert!(!b.short_names.contains(s), "short name {s} twice");
                }
            }
        }
    }

    #[test]
    fn lookups() {
        let d = lookup("apps", "v1", "deployments").expect("deployments");
        assert_eq!(d.kind, "Deployment");
        assert_eq!(d.api_version(), "apps/v1");
        assert!(d.has_subresource("scale").is_some());
        assert!(lookup_kind("", "v1", "Pod").expect("pod").namespaced);
        assert!(!lookup("", "v1", "namespaces").expect("ns").namespaced);
        assert!(lookup("", "v1", "widgets").is_none());
        assert_eq!(split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(split_api_version("v1"), ("", "v1"));
    }

    #[test]
    fn storage_keys_do_not_nest() {
        let pods = lookup("", "v1", "pods").expect("pods");
        assert_eq!(
            pods.key(Some("default"), "p"),
            "/registry/core/pods/default/p"
        );
        assert_eq!(
            pods.key_prefix_ns(Some("default")),
            "/registry/core/pods/default/"
        );
        let ns = lookup("", "v1", "namespaces").expect("ns");
        assert_eq!(ns.key(None, "default"), "/registry/core/namespaces/default");
        // `services` must not be a prefix of another resource's keys.
        for a in RESOURCES {
            for b in RESOURCES {
                if !std::ptr::eq(a, b) {
                    assert!(!b.key_prefix().starts_with(&a.key_prefix()));
                }
            }
        }
    }

    #[test]
    fn groups_core_first() {
        let g = groups();
        assert_eq!(g[0], ("", vec!["v1"]));
        assert!(g.iter().any(|(n, _)| *n == "apps"));
        assert_eq!(resources_in("batch", "v1").count(), 2);
    }
}
