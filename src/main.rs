// mimalloc: the proxy, validation and mirror paths allocate many short-lived buffers, and the
// system allocator showed up as a fifth of the mirror's CPU time in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_huge_pages();
    eventgate::cli::main()
}

/// Turns transparent huge pages off for the process (Linux), unless `MIMALLOC_ALLOW_THP` says
/// otherwise. mimalloc asks for huge pages, returns memory it has not used for a while, and takes
/// it back as traffic comes: each time, the kernel zeroes a whole 2 MiB page on the first touch.
/// With the mirror on, that zeroing was about half of eventgate's kernel time, and less CPU and
/// more throughput without it (BENCHMARKS.md, "Huge pages").
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            eprintln!("eventgate: could not turn transparent huge pages off ({})", std::io::Error::last_os_error());
        }
    }
}
