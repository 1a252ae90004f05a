//! The guest timing probe: does KVM here run a guest at near native speed?
//!
//! Every KVM call can succeed where guests still crawl: under nested PVM, for one, a
//! guest's instructions take thousands of times as long as the host's. So the probe runs
//! a real guest, a real-mode loop that exits to the host every [`CHUNK`] iterations, and
//! compares its fastest chunk with the same loop on the host. It stops after
//! [`CHUNKS`] chunks or once [`BUDGET`] has passed, whichever is first.

use std::time::{Duration, Instant};

use crate::sys::{self, GuestMemory};

/// Iterations of `dec ecx; jnz` between two exits: long enough that an exit's own cost
/// is small beside it on a real KVM host, short enough that a crawling guest still
/// reports within a fraction of a second.
pub const CHUNK: u32 = 100_000;
/// How many chunks a fast guest runs.
pub const CHUNKS: u32 = 50;
/// How long the probe runs at most, plus one chunk.
pub const BUDGET: Duration = Duration::from_millis(50);
/// The slowest a guest may be, as a multiple of the host's time, and still count as
/// near native.
pub const NEAR_NATIVE: f64 = 2.0;

/// Where the guest's code starts, in its physical memory.
const ENTRY: u64 = 0x1000;
/// The I/O port the guest writes to after each chunk.
const PORT: u16 = 0x10;
const MEMORY: usize = 0x10000;

/// What the probe measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// The guest's fastest chunk over the host's fastest run of the same loop.
    pub ratio: f64,
    /// How many chunks the guest finished.
    pub chunks: u32,
}

impl Speed {
    /// Whether the guest takes at most [`NEAR_NATIVE`] times the host's time: fast enough for a
    /// microVM backend.
    pub fn near_native(&self) -> bool {
        self.ratio <= NEAR_NATIVE
    }
}

/// Why the probe could not measure a guest.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `/dev/kvm` could not be opened (absent, or not permitted).
    #[error("cannot open `/dev/kvm`: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// A KVM call failed while the guest was set up or run.
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        /// What KVM was asked to do, as the message words it: `create a VM`, `run the guest`, …
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest's memory could not be mapped.
    #[error("cannot map the guest's memory: {0}")]
    Memory(#[source] std::io::Error),
    /// The guest did not run its loop as written: it exited other than by its port write, or its
    /// counter was not zero at the end. The text names the exit or the register.
    #[error("the guest stopped with {0} instead of finishing its loop")]
    Guest(String),
    /// This is not x86_64, the only architecture the probe's guest code runs on.
    #[error("the probe runs only on x86_64")]
    Architecture,
}

/// Runs the probe.
#[cfg(target_arch = "x86_64")]
pub fn run() -> Result<Speed, ProbeError> {
    let mut guest = Guest::new()?;
    let host = host_chunk();
    let started = Instant::now();
    let mut last = started;
    let mut fastest = Duration::MAX;
    let mut chunks = 0;
    while chunks < CHUNKS && started.elapsed() < BUDGET {
        match guest.vcpu.run() {
            Ok(kvm_ioctls::VcpuExit::IoOut(PORT, _)) => {}
            Ok(other) => return Err(ProbeError::Guest(format!("{other:?}"))),
            Err(source) => return Err(kvm("run the guest", source)),
        }
        let now = Instant::now();
        fastest = fastest.min(now - last);
        last = now;
        chunks += 1;
    }
    // The guest really ran its loop to the end: its counter is 0 at the exit.
    let regs = (guest.vcpu.get_regs()).map_err(|e| kvm("read the guest's registers", e))?;
    if regs.rcx & 0xffff_ffff != 0 {
        return Err(ProbeError::Guest(format!("ecx {:#x}", regs.rcx)));
    }
    Ok(Speed {
        ratio: fastest.as_secs_f64() / host.as_secs_f64(),
        chunks,
    })
}

/// Runs the probe; on this architecture it cannot ([`ProbeError::Architecture`]).
#[cfg(not(target_arch = "x86_64"))]
pub fn run() -> Result<Speed, ProbeError> {
    Err(ProbeError::Architecture)
}

fn kvm(what: &'static str, source: kvm_ioctls::Error) -> ProbeError {
    ProbeError::Kvm { what, source }
}

/// The host's fastest of a few runs of one chunk.
#[cfg(target_arch = "x86_64")]
fn host_chunk() -> Duration {
    (0..20)
        .map(|_| {
            let start = Instant::now();
            sys::host_loop(CHUNK);
            start.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_nanos(1))
        .max(Duration::from_nanos(1))
}

/// The guest's code, in 16-bit real mode at [`ENTRY`]:
///
/// ```text
/// 0x1000  mov ecx, CHUNK
/// 0x1006  dec ecx
/// 0x1008  jnz 0x1006
/// 0x100a  out 0x10, al
/// 0x100c  jmp 0x1000
/// ```
fn code() -> Vec<u8> {
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&CHUNK.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xe6, PORT as u8, 0xeb, 0xf2]);
    code
}

/// A VM with one vCPU about to run [`code`]. Fields drop in order: the vCPU and the VM
/// go before the memory they use.
#[cfg(target_arch = "x86_64")]
struct Guest {
    vcpu: kvm_ioctls::VcpuFd,
    _vm: kvm_ioctls::VmFd,
    _memory: GuestMemory,
}

#[cfg(target_arch = "x86_64")]
impl Guest {
    fn new() -> Result<Guest, ProbeError> {
        let kvm_fd = kvm_ioctls::Kvm::new().map_err(ProbeError::Open)?;
        let vm = kvm_fd.create_vm().map_err(|e| kvm("create a VM", e))?;
        // Where Intel's real-mode emulation keeps its TSS, outside the guest's memory
        // (as Firecracker places it).
        vm.set_tss_address(0xfffb_d000)
            .map_err(|e| kvm("place the TSS", e))?;
        let mut memory = GuestMemory::new(MEMORY).map_err(ProbeError::Memory)?;
        memory.write(ENTRY as usize, &code());
        memory
            .register(&vm)
            .map_err(|e| kvm("add the guest's memory", e))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| kvm("create a vCPU", e))?;
        let mut sregs = vcpu.get_sregs().map_err(|e| kvm("read the vCPU", e))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(|e| kvm("set the vCPU", e))?;
        let mut regs = vcpu.get_regs().map_err(|e| kvm("read the vCPU", e))?;
        regs.rip = ENTRY;
        // Bit 1 of RFLAGS is reserved and always set.
        regs.rflags = 0x2;
        vcpu.set_regs(&regs).map_err(|e| kvm("set the vCPU", e))?;
        Ok(Guest {
            vcpu,
            _vm: vm,
            _memory: memory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_code_jumps_where_its_listing_says() {
        let code = code();
        // jnz at 0x1008 (2 bytes) back to dec at 0x1006; jmp at 0x100c back to 0x1000.
        assert_eq!(code.len(), 0xe);
        assert_eq!((0x100a_i64 + i64::from(code[9] as i8)), 0x1006);
        assert_eq!((0x100e_i64 + i64::from(code[13] as i8)), 0x1000);
    }
}
