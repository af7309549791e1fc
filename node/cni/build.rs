//! Generates the plugin-to-agent notification service.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/podnetwork.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/podnetwork.proto"], &["proto"])
        .context("compiling proto/podnetwork.proto (is protoc installed? run `cargo xtask setup`)")
}
