//! `aistack-guest check DIR`: tries, from inside a sandbox, what the sandbox must refuse,
//! and prints one line per try: `NAME: refused (ERROR)` or `NAME: allowed`. DIR is a
//! writable directory (the workspace) for the set-uid tries, which leave nothing behind.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aistack_sandbox::sys::{self, Probe};

/// Runs every try and prints its outcome; fails only when DIR cannot be written at all.
pub fn run(dir: &Path) -> io::Result<()> {
    for (name, probe) in [
        ("x32", Probe::X32),
        ("vsock", Probe::Vsock),
        ("io_uring", Probe::IoUring),
        ("pidfd_getfd", Probe::PidfdGetfd),
        ("process_madvise", Probe::ProcessMadvise),
        ("kcmp", Probe::Kcmp),
        ("personality", Probe::Personality),
    ] {
        report(name, sys::probe(probe));
    }
    let file = dir.join(".aistack-check");
    let _ = fs::remove_file(&file);
    fs::write(&file, b"")?;
    report(
        "chmod-setuid",
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4755)),
    );
    report(
        "chmod-setgid",
        fs::set_permissions(&file, fs::Permissions::from_mode(0o2755)),
    );
    fs::remove_file(&file)?;
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o4755)
        .open(&file);
    report("create-setuid", created.map(drop));
    let _ = fs::remove_file(&file);
    Ok(())
}

fn report(name: &str, outcome: io::Result<()>) {
    match outcome {
        Ok(()) => println!("{name}: allowed"),
        Err(e) => println!("{name}: refused ({e})"),
    }
}
