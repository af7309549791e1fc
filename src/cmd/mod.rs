//! One module per subcommand; each is a thin shell over a library crate.

pub mod agent;
pub mod bpf;
pub mod controller_manager;
pub mod observe;
pub mod scheduler;
pub mod server;
pub mod sim;
pub mod up;
