//! The eBPF object embedded at build time.

use crate::{Error, Result};

/// The object's bytes, aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kestrel-ebpf"));

/// Whether this binary embeds real eBPF programs (false under `AYA_BUILD_SKIP=1`).
pub fn object_is_built() -> bool {
    !OBJECT.is_empty()
}

/// The embedded eBPF object, or [`Error::ObjectNotBuilt`].
pub fn ebpf_object() -> Result<&'static [u8]> {
    if object_is_built() {
        Ok(OBJECT)
    } else {
        Err(Error::ObjectNotBuilt)
    }
}
