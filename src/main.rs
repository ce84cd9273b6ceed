// mimalloc: the proxy, validation and mirror paths allocate many short-lived buffers, and the
// system allocator showed up as a fifth of the mirror's CPU time in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    eventgate::cli::main()
}
