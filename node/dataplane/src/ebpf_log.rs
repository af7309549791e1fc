//! Carries aya-log records from the kernel into the process's `tracing` output.

use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

use crate::{Error, Result};

/// How much the eBPF programs log. The level is written into the object's
/// `AYA_LOG_LEVEL` global before load, so disabled records cost one load and
/// a branch in the kernel and never reach the ring buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum EbpfLogLevel {
    /// Nothing.
    Off = 0,
    /// Errors only.
    Error = 1,
    /// Warnings and errors.
    Warn = 2,
    /// Informational records (the default).
    #[default]
    Info = 3,
    /// Per-packet detail; costly, for debugging only.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl EbpfLogLevel {
    /// The value the kernel side compares against (aya-log-common's `Level`).
    pub const fn as_global(self) -> u8 {
        self as u8
    }
}

/// Forwards `log` records from aya-log to `tracing`, so kernel records show up
/// in the agent's normal output with the `ebpf` target.
#[derive(Debug, Clone, Copy)]
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let args = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "ebpf", "{args}"),
            log::Level::Warn => tracing::warn!(target: "ebpf", "{args}"),
            log::Level::Info => tracing::info!(target: "ebpf", "{args}"),
            log::Level::Debug => tracing::debug!(target: "ebpf", "{args}"),
            log::Level::Trace => tracing::trace!(target: "ebpf", "{args}"),
        }
    }

    fn flush(&self) {}
}

/// Takes the aya-log ring buffer out of `ebpf` and drains it on a tokio task
/// whenever the kernel signals it is readable. Must run inside a runtime.
pub fn spawn_log_pump(ebpf: &mut aya::Ebpf) -> Result<JoinHandle<()>> {
    let logger = EbpfLogger::init_with_logger(ebpf, TracingLog).map_err(Error::Log)?;
    #[expect(unsafe_code, reason = "tokio's fd registration is an unsafe API")]
    // SAFETY: the ring buffer's fd is owned by `logger`, which the AsyncFd
    // owns in turn, so the fd stays open for as long as it is registered.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut fd = registered.map_err(|e| Error::Io {
        what: "registering the eBPF log ring buffer with tokio",
        source: e.into(),
    })?;
    Ok(tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(error) => {
                    tracing::warn!(%error, "eBPF log ring buffer failed; kernel log records are lost");
                    return;
                }
            }
        }
    }))
}
