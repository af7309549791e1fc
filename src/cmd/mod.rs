//! One module per subcommand; each is a thin shell over a library crate.

pub mod bpf;
pub mod controller_manager;
pub mod server;
