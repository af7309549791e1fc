//! Kestrel's node agent: the kubelet.
//!
//! It joins the cluster with the node token, registers its Node and keeps
//! its Lease fresh, runs the pods bound to it through CRI on its own
//! containerd, wires them with `kestrel-cni`, and serves the node API
//! (logs, exec) to the API server on port 10250.
#![forbid(unsafe_code)]

pub mod nodeapi;
