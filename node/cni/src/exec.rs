//! The plugin executable's entry point.

use std::{io::Read as _, process::ExitCode};

use crate::{
    Error,
    spec::{ErrorDoc, Invocation},
};

/// A configuration larger than this is refused rather than read.
const MAX_STDIN: u64 = 1 << 20;

/// Run as the plugin executable: read the CNI environment and stdin, print
/// the result (or a CNI error document with exit status 1). The `kestrel`
/// binary calls this when it is invoked as `kestrel-cni`.
pub fn main() -> ExitCode {
    match run() {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let doc = ErrorDoc::from_error(&error);
            match serde_json::to_string(&doc) {
                Ok(json) => println!("{json}"),
                Err(_) => {
                    println!(r#"{{"cniVersion":"1.0.0","code":999,"msg":"unprintable error"}}"#)
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, Error> {
    let invocation = Invocation::from_env(|k| std::env::var(k).ok())?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| Error::Io {
            what: "reading",
            path: "stdin".into(),
            source: e,
        })?;
    if stdin.len() as u64 > MAX_STDIN {
        return Err(Error::InvalidConfig(format!(
            "network configuration larger than {MAX_STDIN} bytes"
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            what: "starting the runtime",
            path: "tokio".into(),
            source: e,
        })?;
    runtime.block_on(crate::run(&invocation, &stdin))
}
