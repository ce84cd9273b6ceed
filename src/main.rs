fn main() -> std::process::ExitCode {
    eventgate::cli::main()
}
