//! Generates the CRI v1 client (and server, for tests and the CNI/agent
//! socket patterns) from the vendored `proto/api.proto`.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/api.proto"], &["proto"])
        .context("compiling proto/api.proto (is protoc installed? run `cargo xtask setup`)")
}
