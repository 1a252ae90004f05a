//! The crate's only `unsafe`: guest memory, and the host's side of the timing probe.

#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

/// Anonymous host memory that a VM sees as its physical memory from address 0.
#[derive(Debug)]
pub struct GuestMemory {
    start: NonNull<u8>,
    size: usize,
}

impl GuestMemory {
    /// Maps `size` bytes (a multiple of the page size) of zeroed, private memory.
    pub fn new(size: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address the kernel picks aliases no
        // memory of this process; the result is checked before use.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = NonNull::new(start.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(GuestMemory { start, size })
    }

    /// Copies `bytes` to guest physical address `at`.
    pub fn write(&mut self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.size, "guest write out of bounds");
        // SAFETY: the range was just checked to lie inside the mapping, which this value
        // owns and which nothing else borrows while `&mut self` is held.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.start.as_ptr().add(at), bytes.len())
        };
    }

    /// Gives the memory to `vm` as slot 0 at guest physical address 0. The caller keeps
    /// the memory alive as long as the VM (`probe::Guest` drops the VM first).
    pub fn register(&self, vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.start.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of this process of exactly `size` bytes,
        // and it outlives the VM (the caller's contract above).
        unsafe { vm.set_user_memory_region(region) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with this size and is unmapped once.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.size) };
    }
}

/// Runs the guest's loop (`dec ecx; jnz`) on the host, `iterations` times.
#[cfg(target_arch = "x86_64")]
pub fn host_loop(iterations: u32) {
    // SAFETY: the loop touches only the register it is given and the flags.
    unsafe {
        std::arch::asm!("2:", "dec {0:e}", "jnz 2b", inout(reg) iterations => _, options(nomem, nostack))
    };
}
