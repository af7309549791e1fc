//! Kestrel's eBPF programs, built for `bpfel-unknown-none` by the dataplane
//! crate's build script and embedded in the `kestrel` binary.
#![no_std]
#![no_main]

mod maps;
mod proto_counter;
mod sock_lb;
mod tc;

/// The kernel reads this to decide whether the object may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never executed; it only satisfies `no_std`.
    loop {}
}
