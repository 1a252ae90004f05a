//! Which backend a sandbox runs on, and why (pure; the facts come from the caller).

/// The facts about this host that decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_virtualisation: bool,
    /// `/dev/kvm` exists.
    pub kvm: bool,
}

impl Host {
    /// Reads the facts of this machine.
    pub fn probe() -> Host {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo.lines().filter(|l| l.starts_with("flags"));
        let cpu_virtualisation = flags
            .flat_map(str::split_whitespace)
            .any(|flag| flag == "vmx" || flag == "svm");
        Host {
            cpu_virtualisation,
            kvm: std::path::Path::new("/dev/kvm").exists(),
        }
    }
}

/// The backend chosen for a sandbox and the reason, for `status` and `sandbox ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: &'static str,
    pub reason: String,
}

/// The choice for `isolation: auto | namespace` (`microvm` is refused before this: its
/// backend does not exist yet). `auto` would pick the microVM only where the CPU
/// advertises vmx/svm and a guest timing probe runs near native speed (DESIGN §7).
pub fn choose(requested: &str, host: Host) -> Choice {
    let namespace = |reason: &str| Choice {
        backend: "namespace",
        reason: reason.to_owned(),
    };
    match requested {
        "namespace" => namespace("asked for with `isolation: namespace`"),
        _ if !host.cpu_virtualisation => namespace(
            "auto: the CPU advertises neither vmx nor svm, so KVM cannot run guests at speed",
        ),
        _ if !host.kvm => namespace("auto: the CPU can virtualise but /dev/kvm is absent"),
        _ => namespace("auto: the microVM backend is not built yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_says_why_it_is_the_namespace_backend() {
        let bare = Host {
            cpu_virtualisation: false,
            kvm: true,
        };
        assert!(choose("auto", bare).reason.contains("neither vmx nor svm"));
        let no_kvm = Host {
            cpu_virtualisation: true,
            kvm: false,
        };
        assert!(choose("auto", no_kvm).reason.contains("/dev/kvm"));
        let asked = choose("namespace", bare);
        assert_eq!(
            (asked.backend, asked.reason.contains("asked")),
            ("namespace", true)
        );
    }
}
