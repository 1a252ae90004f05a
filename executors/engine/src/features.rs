//! Which SIMD features the linked ggml CPU backend was compiled with, and whether this CPU has
//! more to offer.
//!
//! llama.cpp reports this through `llama_print_system_info`, which llama-cpp-2 0.1.160 does not
//! wrap safely (and this workspace forbids `unsafe`). The report is therefore derived from the
//! rules llama-cpp-sys-2's build script follows: without `-C target-cpu=...` ggml is built with
//! its x86 defaults (SSE4.2, AVX, AVX2, BMI2, FMA, F16C); with `-C target-cpu=native` it is built
//! with `GGML_NATIVE` (`-march=native`), and with any other `target-cpu` with `-march=` that
//! CPU — which in both cases is exactly the set `cfg!(target_feature)` sees in this crate.
//! The line has the shape of ggml's own (`CPU : AVX2 = 1 | ...`).

/// ggml's CPU feature line as `llama_print_system_info` prints it (trailing space trimmed),
/// e.g. `CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 |
/// LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |` for the default x86-64 build.
#[must_use]
pub fn cpu_features() -> String {
    imp::cpu_features()
}

/// SIMD features this CPU has that the linked ggml was not built to use; a build with
/// `RUSTFLAGS="-C target-cpu=native"` would use them.
#[must_use]
pub fn unused_cpu_features() -> Vec<&'static str> {
    imp::unused_cpu_features()
}

#[cfg(target_arch = "x86_64")]
mod imp {
    struct Feature {
        ggml: &'static str,
        compiled: bool,
        present: bool,
    }

    macro_rules! feature {
        ($ggml:literal, $rust:tt, $default:expr) => {
            Feature {
                ggml: $ggml,
                compiled: $default || cfg!(target_feature = $rust),
                present: std::arch::is_x86_feature_detected!($rust),
            }
        };
    }

    /// In ggml's order (`ggml_backend_cpu_get_features`).
    fn features() -> [Feature; 12] {
        [
            feature!("SSE3", "sse3", true),
            feature!("SSSE3", "ssse3", true),
            feature!("AVX", "avx", true),
            feature!("AVX_VNNI", "avxvnni", false),
            feature!("AVX2", "avx2", true),
            feature!("F16C", "f16c", true),
            feature!("FMA", "fma", true),
            feature!("BMI2", "bmi2", true),
            feature!("AVX512", "avx512f", false),
            feature!("AVX512_VBMI", "avx512vbmi", false),
            feature!("AVX512_VNNI", "avx512vnni", false),
            feature!("AVX512_BF16", "avx512bf16", false),
        ]
    }

    pub(super) fn cpu_features() -> String {
        let mut line = String::from("CPU : ");
        let compiled = features()
            .into_iter()
            .filter(|f| f.compiled)
            .map(|f| f.ggml);
        // GGML_LLAMAFILE, GGML_OPENMP and GGML_CPU_REPACK are on in llama-cpp-2's default
        // build on Linux.
        for name in compiled.chain(["LLAMAFILE", "OPENMP", "REPACK"]) {
            line.push_str(name);
            line.push_str(" = 1 | ");
        }
        line.trim_end().to_owned()
    }

    pub(super) fn unused_cpu_features() -> Vec<&'static str> {
        features()
            .into_iter()
            .filter(|f| !f.compiled && f.present)
            .map(|f| f.ggml)
            .collect()
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    pub(super) fn cpu_features() -> String {
        format!(
            "CPU : {} (feature report not implemented)",
            std::env::consts::ARCH
        )
    }

    pub(super) fn unused_cpu_features() -> Vec<&'static str> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn default_build_matches_ggmls_line() {
        // What llama_print_system_info() printed for this build (checked with a C++ program
        // linked against the same static libraries).
        if !cfg!(target_feature = "avx512f") && !cfg!(target_feature = "avxvnni") {
            assert_eq!(
                super::cpu_features(),
                "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
            );
        }
    }
}
