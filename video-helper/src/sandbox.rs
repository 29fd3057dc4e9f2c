//! The helper's own confinement, entered before it reads a byte of the video: no sockets (so no
//! network, whatever a demuxer tries), no new programs, no debugging of other processes. A
//! refused call fails with EPERM, which FFmpeg reports as an ordinary error.
//!
//! The worker sets the resource limits (address space, CPU time, open files, file size) before
//! it starts this process, so they hold even if this code never runs. The filter holds on Linux
//! on x86-64 and aarch64; elsewhere the helper runs with the limits alone and says so.

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn enter() -> Result<(), String> {
    use std::collections::BTreeMap;

    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

    let refused = [
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
    ];
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = refused.iter().map(|&call| (call, Vec::new())).collect();
    let arch = std::env::consts::ARCH.try_into().map_err(|e| format!("{e:?}"))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| e.to_string())?;
    let program: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    // Sets no_new_privs too. Before any thread exists, so every decoder thread inherits it.
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
pub fn enter() -> Result<(), String> {
    eprintln!("perisai-video: no seccomp filter on this platform: resource limits only");
    Ok(())
}
