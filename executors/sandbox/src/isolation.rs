//! Which backend a sandbox runs on, and why. The choice is pure; [`Host::this_machine`]
//! gathers the facts (with the `host` feature).

/// The facts about this host that decide.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_virtualisation: bool,
    /// Whether KVM can run a guest here, and how fast.
    pub kvm: Kvm,
}

/// What KVM does here.
#[derive(Debug, Clone, PartialEq)]
pub enum Kvm {
    /// There is no `/dev/kvm`.
    Absent,
    /// The guest timing probe could not run a guest; why.
    Failed(String),
    /// The probe ran a guest: its time over the host's for the same loop, and whether
    /// that is near native speed.
    Measured {
        /// The guest's time over the host's for the same loop: 1.0 is native speed.
        ratio: f64,
        /// Whether that is close enough to native speed for the microVM backend.
        near_native: bool,
    },
}

#[cfg(feature = "host")]
impl Host {
    /// The facts of this machine, gathered once per process: the probe runs a guest for
    /// up to a tenth of a second, and none of it changes while the daemon runs.
    pub fn this_machine() -> &'static Host {
        static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
        HOST.get_or_init(|| {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let flags = cpuinfo.lines().filter(|l| l.starts_with("flags"));
            let cpu_virtualisation = flags
                .flat_map(str::split_whitespace)
                .any(|flag| flag == "vmx" || flag == "svm");
            let kvm = if !std::path::Path::new("/dev/kvm").exists() {
                Kvm::Absent
            } else {
                match aistack_vmm::probe::run() {
                    Ok(speed) => Kvm::Measured {
                        ratio: speed.ratio,
                        near_native: speed.near_native(),
                    },
                    Err(e) => Kvm::Failed(e.to_string()),
                }
            };
            Host {
                cpu_virtualisation,
                kvm,
            }
        })
    }
}

/// The backend chosen for a sandbox and the reason, for `status` and `sandbox ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The backend's name, as `isolation:` spells it.
    pub backend: &'static str,
    /// Why, as a phrase for `status`, e.g. `auto: there is no /dev/kvm (…)`.
    pub reason: String,
}

/// The choice for `isolation: auto | namespace` (`microvm` is refused before this: its
/// backend does not exist yet). `auto` picks the microVM only where the CPU advertises
/// vmx/svm and the guest timing probe runs near native speed (DESIGN §7); until that
/// backend exists, it says what it found and picks the namespace.
pub fn choose(requested: &str, host: &Host) -> Choice {
    let namespace = |reason: String| Choice {
        backend: "namespace",
        reason,
    };
    let flags = if host.cpu_virtualisation {
        "the CPU advertises vmx/svm"
    } else {
        "the CPU advertises neither vmx nor svm"
    };
    if requested == "namespace" {
        return namespace("asked for with `isolation: namespace`".to_owned());
    }
    namespace(match &host.kvm {
        Kvm::Absent => format!("auto: there is no /dev/kvm ({flags})"),
        Kvm::Failed(why) => format!("auto: KVM cannot run a guest here: {why}"),
        Kvm::Measured {
            ratio,
            near_native: false,
        } => format!("auto: a KVM guest runs {ratio:.0}x slower than the host ({flags})"),
        Kvm::Measured { .. } if !host.cpu_virtualisation => format!("auto: {flags}"),
        Kvm::Measured { ratio, .. } => format!(
            "auto: KVM runs guests near native speed ({ratio:.1}x), but this build has no microVM backend"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(cpu_virtualisation: bool, kvm: Kvm) -> String {
        let host = Host {
            cpu_virtualisation,
            kvm,
        };
        let choice = choose("auto", &host);
        assert_eq!(choice.backend, "namespace");
        choice.reason
    }

    #[test]
    fn auto_says_what_it_found() {
        let measured = |ratio, near_native| Kvm::Measured { ratio, near_native };
        assert_eq!(
            reason(false, Kvm::Absent),
            "auto: there is no /dev/kvm (the CPU advertises neither vmx nor svm)"
        );
        assert_eq!(
            reason(true, Kvm::Failed("cannot open `/dev/kvm`: EACCES".into())),
            "auto: KVM cannot run a guest here: cannot open `/dev/kvm`: EACCES"
        );
        // What nested PVM looks like: every KVM call works, the guest crawls.
        assert_eq!(
            reason(false, measured(4190.2, false)),
            "auto: a KVM guest runs 4190x slower than the host (the CPU advertises neither vmx nor svm)"
        );
        assert_eq!(
            reason(false, measured(1.1, true)),
            "auto: the CPU advertises neither vmx nor svm"
        );
        assert!(reason(true, measured(1.1, true)).contains("near native speed (1.1x)"));
        let asked = choose(
            "namespace",
            &Host {
                cpu_virtualisation: true,
                kvm: Kvm::Absent,
            },
        );
        assert_eq!(asked.reason, "asked for with `isolation: namespace`");
    }
}
