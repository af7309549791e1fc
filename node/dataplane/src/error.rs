//! The dataplane's error type.

/// Errors from loading, attaching and reading eBPF programs and maps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary was built with `AYA_BUILD_SKIP=1` and embeds no eBPF object.
    #[error(
        "this binary was built without eBPF programs (AYA_BUILD_SKIP=1); rebuild after \
         `cargo xtask setup`"
    )]
    ObjectNotBuilt,
    /// The kernel or aya refused the object.
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    /// The object has no program of that name.
    #[error("the eBPF object has no program named {0:?}")]
    MissingProgram(&'static str),
    /// The object has no map of that name.
    #[error("the eBPF object has no map named {0:?}")]
    MissingMap(&'static str),
    /// Loading or attaching a program failed.
    #[error("{what} program {name:?}")]
    Program {
        /// What we were doing: "loading", "attaching to <iface>", ...
        what: String,
        /// Program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("{what} map {name:?}")]
    Map {
        /// What we were doing.
        what: &'static str,
        /// Map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A service map is not pinned where it should be.
    #[error(
        "no pinned {name} map in {dir}: the dataplane object was not loaded with this bpffs \
         directory"
    )]
    NotPinned {
        /// The pin directory.
        dir: std::path::PathBuf,
        /// The missing map.
        name: &'static str,
    },
    /// A pinned map could not be opened.
    #[error("opening the pinned map {path}")]
    OpenPinned {
        /// Its path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Every id of a kind is in use.
    #[error("out of {what} ids: all {max} are in use")]
    IdsExhausted {
        /// Which ids: "backend", "reverse-NAT".
        what: &'static str,
        /// How many there are.
        max: u32,
    },
    /// The aya-log ring buffer could not be opened.
    #[error("opening the eBPF log ring buffer")]
    Log(#[source] aya_log::Error),
    /// Attaching there could touch the host's own uplink.
    #[error("refusing to attach to {iface}: it carries the default route")]
    AttachRefused {
        /// The interface.
        iface: String,
    },
    /// No interface of that name in the calling thread's namespace.
    #[error("interface {name:?}")]
    Interface {
        /// The interface name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A pinned link could not be opened or is not a TCX link.
    #[error("the link pinned at {}", path.display())]
    Link {
        /// The pin.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A link could not be pinned.
    #[error("pinning a link at {}", path.display())]
    LinkPin {
        /// The pin.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: aya::pin::PinError,
    },
    /// An I/O error on a kernel file descriptor.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An I/O or `bpf(2)` call on a path (a cgroup, a pin) failed.
    #[error("{what} {}", path.display())]
    PathIo {
        /// What we were doing.
        what: &'static str,
        /// The path concerned.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Cgroup hooks are never attached to the root of a cgroup hierarchy:
    /// they would rewrite the sockets of every process on the machine.
    #[error(
        "refusing to attach socket load balancing to {}: it is the root of the cgroup2 \
         hierarchy; use the node's own cgroup",
        .0.display()
    )]
    RootCgroup(std::path::PathBuf),
    /// The directory is not on a cgroup2 file system.
    #[error("{} is not a cgroup v2 directory", .0.display())]
    NotCgroup2(std::path::PathBuf),
    /// A pin path that should hold one of our links holds something else.
    #[error("unexpected pin {}: {why}", path.display())]
    UnexpectedPin {
        /// The pin path.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// An attachment could not be turned into a pinnable bpf link.
    #[error("the attachment of program {name:?} is not a bpf link (kernel older than 5.7?)")]
    NotALink {
        /// Program name.
        name: &'static str,
        /// The cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
}

/// The dataplane's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
