//! Facts about the guest agent binary.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

const PT_INTERP: u32 = 3;

/// Whether an ELF64 file has no program interpreter (the dynamic loader): a sandbox's
/// root filesystem has no C library of the host's, so the agent must be static.
pub fn is_static(path: &Path) -> io::Result<bool> {
    let mut bytes = Vec::new();
    File::open(path)?.take(64 * 1024).read_to_end(&mut bytes)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an ELF64 executable");
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err(bad());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    for index in 0..count {
        let at = phoff + index * size;
        let header = bytes.get(at..at + 4).ok_or_else(bad)?;
        if u32::from_le_bytes(header.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dynamic_executable_is_not_static() {
        assert!(!super::is_static(std::path::Path::new("/bin/sh")).unwrap());
        assert!(super::is_static(std::path::Path::new("/etc/passwd")).is_err());
    }
}
