//! The `pgkeep` command line: parses flags, loads configuration, starts
//! tracing and maps errors to exit codes. Everything else is in the library.

fn main() {}
