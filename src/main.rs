//! The `baton` command: the library's runtime and tools behind one CLI, plus
//! the embedded demo and `baton bench`, which only the binary carries.

mod bench;
mod cli;
mod demo;

fn main() -> std::process::ExitCode {
    cli::main()
}
