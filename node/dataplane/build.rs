//! Builds `ebpf/programs` for the BPF target with aya-build and leaves the
//! object in `OUT_DIR`, where `src/object.rs` embeds it.
//!
//! `AYA_BUILD_SKIP=1` opts out for machines without the eBPF toolchain
//! (nightly + rust-src + bpf-linker): an empty object is embedded instead and
//! every attempt to load it fails with `Error::ObjectNotBuilt`. CI never sets it.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "kestrel-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(EBPF_PACKAGE);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let root_dir = manifest_dir
        .join("../../ebpf/programs")
        .canonicalize()
        .context("locating ebpf/programs")?;
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {root_dir:?}"))?;
    // aya-build relays the nested cargo's progress lines as build warnings;
    // keep only real diagnostics.
    // SAFETY: build scripts are single-threaded here; nothing reads the
    // environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install nightly rust-src \
         and bpf-linker, or set AYA_BUILD_SKIP=1 to build without them",
    )
}
