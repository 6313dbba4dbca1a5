//! The `baton` command: the library's runtime and tools behind one CLI, plus
//! the embedded demo and `baton bench`, which only the binary carries.

mod bench;
mod cli;
mod demo;

/// mimalloc: baton allocates many small, short-lived values per event
/// (variables, ids, records) and holds a million idle snapshots; glibc's
/// allocator spent a large share of the CPU consolidating them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
