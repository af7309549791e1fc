//! One module per subcommand; each is a thin shell over a library crate.

pub mod agent;
pub mod bpf;
pub mod server;
pub mod up;
