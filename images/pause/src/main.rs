//! The pause process: PID 1 of every pod sandbox. It keeps the pod's
//! namespaces alive, reaps orphans re-parented to it, and exits cleanly on
//! SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use nix::{
    sys::{
        signal::{SigSet, Signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

fn main() -> ExitCode {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        signals.add(signal);
    }
    // Blocked signals queue up for sigwait instead of running handlers, so
    // no unsafe signal handler is needed.
    if let Err(error) = signals.thread_block() {
        eprintln!("pause: blocking signals: {error}");
        return ExitCode::FAILURE;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => return ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pause: waiting for signals: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Collects every exited child; one SIGCHLD may stand for several.
fn reap() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
