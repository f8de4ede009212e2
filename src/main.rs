//! The `orgkeeper` binary: see `orgkeeper --help`.

fn main() -> std::process::ExitCode {
    orgkeeper::cli::main()
}
