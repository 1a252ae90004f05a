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

impl Host {
    /// Whether the CPU advertises vmx/svm and KVM runs the probe's guest near native speed.
    pub fn kvm_at_speed(&self) -> bool {
        self.cpu_virtualisation
            && matches!(
                self.kvm,
                Kvm::Measured {
                    near_native: true,
                    ..
                }
            )
    }
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
    /// For `microvm`: whether it runs under QEMU's software emulation (TCG) rather than KVM.
    pub emulated: bool,
    /// Why, as a phrase for `status`, e.g. `auto: there is no /dev/kvm (…)`.
    pub reason: String,
}

/// The choice for `isolation:`. `auto` picks the microVM only where the CPU advertises
/// vmx/svm, the guest timing probe runs near native speed (DESIGN §7) and the microVM's
/// files are there (`microvm_missing` says which is not), else the namespace, and says what
/// it found. `microvm` runs under KVM where `auto` would pick it, else under TCG.
pub fn choose(requested: &str, host: &Host, microvm_missing: Option<&str>) -> Choice {
    let namespace = |reason: String| Choice {
        backend: "namespace",
        emulated: false,
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
    let no_kvm = match &host.kvm {
        Kvm::Absent => Some(format!("there is no /dev/kvm ({flags})")),
        Kvm::Failed(why) => Some(format!("KVM cannot run a guest here: {why}")),
        Kvm::Measured {
            ratio,
            near_native: false,
        } => Some(format!(
            "a KVM guest runs {ratio:.0}x slower than the host ({flags})"
        )),
        Kvm::Measured { .. } if !host.cpu_virtualisation => Some(flags.to_owned()),
        Kvm::Measured { .. } => None,
    };
    let kvm = |ratio: &Kvm| match ratio {
        Kvm::Measured { ratio, .. } => format!("KVM runs guests near native speed ({ratio:.1}x)"),
        _ => String::new(),
    };
    if requested == "microvm" {
        return match no_kvm {
            Some(why) => Choice {
                backend: "microvm",
                emulated: true,
                reason: format!(
                    "asked for with `isolation: microvm`; under TCG, QEMU's software emulation, because {why}"
                ),
            },
            None => Choice {
                backend: "microvm",
                emulated: false,
                reason: format!("asked for with `isolation: microvm`; {}", kvm(&host.kvm)),
            },
        };
    }
    match (no_kvm, microvm_missing) {
        (Some(why), _) => namespace(format!("auto: {why}")),
        (None, Some(missing)) => namespace(format!(
            "auto: {}, but the microVM backend lacks {missing}",
            kvm(&host.kvm)
        )),
        (None, None) => Choice {
            backend: "microvm",
            emulated: false,
            reason: format!("auto: {}", kvm(&host.kvm)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(cpu_virtualisation: bool, kvm: Kvm) -> String {
        let host = Host {
            cpu_virtualisation,
            kvm,
        };
        let choice = choose("auto", &host, Some("a guest kernel"));
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
        assert_eq!(
            reason(true, measured(1.1, true)),
            "auto: KVM runs guests near native speed (1.1x), but the microVM backend lacks a guest kernel"
        );
        let asked = choose(
            "namespace",
            &Host {
                cpu_virtualisation: true,
                kvm: Kvm::Absent,
            },
            None,
        );
        assert_eq!(asked.reason, "asked for with `isolation: namespace`");
    }

    #[test]
    fn auto_picks_the_microvm_only_where_kvm_runs_it_at_speed() {
        let fast = Host {
            cpu_virtualisation: true,
            kvm: Kvm::Measured {
                ratio: 1.1,
                near_native: true,
            },
        };
        let auto = choose("auto", &fast, None);
        assert_eq!((auto.backend, auto.emulated), ("microvm", false));
        assert_eq!(
            auto.reason,
            "auto: KVM runs guests near native speed (1.1x)"
        );
        // Nested PVM: `auto` keeps the namespace, an explicit `microvm` runs under TCG.
        let pvm = Host {
            cpu_virtualisation: false,
            kvm: Kvm::Measured {
                ratio: 4190.2,
                near_native: false,
            },
        };
        assert_eq!(choose("auto", &pvm, None).backend, "namespace");
        let asked = choose("microvm", &pvm, None);
        assert_eq!((asked.backend, asked.emulated), ("microvm", true));
        assert_eq!(
            asked.reason,
            "asked for with `isolation: microvm`; under TCG, QEMU's software emulation, because a KVM guest runs 4190x slower than the host (the CPU advertises neither vmx nor svm)"
        );
        let asked = choose("microvm", &fast, None);
        assert_eq!((asked.backend, asked.emulated), ("microvm", false));
    }
}
