// mimalloc: the proxy, validation and mirror paths allocate many short-lived buffers, and the
// system allocator showed up as a fifth of the mirror's CPU time in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    huge_pages_where_advised();
    eventgate::cli::main()
}

/// Transparent huge pages only where eventgate asks for them (the mirror's backlog chunks, see
/// `mirror::backlog`), unless `MIMALLOC_ALLOW_THP` is set. mimalloc is built without them
/// (`no_thp`): it returns memory it has not used for a while and takes it back as traffic comes,
/// and with huge pages the kernel zeroed a whole 2 MiB page at each first touch, about half of
/// eventgate's kernel time with the mirror on (BENCHMARKS.md, "Huge pages"). Under the kernel's
/// `always` mode every large region would get them anyway: that is turned off for the process,
/// except for advised regions where the kernel can (Linux 6.18), else entirely.
fn huge_pages_where_advised() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        const EXCEPT_ADVISED: libc::c_ulong = 1 << 1;
        let always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| mode.contains("[always]"));
        if !always {
            return;
        }
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, EXCEPT_ADVISED, 0, 0) };
        if r != 0 {
            // SAFETY: as above.
            let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
            if r != 0 {
                eprintln!("eventgate: could not turn transparent huge pages off ({})", std::io::Error::last_os_error());
            }
        }
    }
}
