//! The `kestrel-cni` executable: reads the CNI environment and the network
//! configuration, runs the operation, and prints the result or a CNI error
//! document (exit status 1).

fn main() -> std::process::ExitCode {
    kestrel_cni::exec::main()
}
