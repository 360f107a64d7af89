//! With the `cuda` feature, compiles `src/backend/candle/cuda/kernels.cu` to
//! PTX with nvcc (as candle-kernels does for candle's own kernels); the
//! crate embeds it and loads it at run time. Without the feature, nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    const SRC: &str = "src/backend/candle/cuda/kernels.cu";
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // PTX for the lowest architecture we need (bf16 math: sm_80), and for
    // sm_90, where the kernels also use programmatic dependent launch
    // (griddepcontrol); the crate picks one by the GPU's compute capability
    // and the driver compiles it for the GPU at hand when the module loads.
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .unwrap_or(80)
        .min(80);
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for (arch, name) in [
        (cap, "specdec_kernels.ptx"),
        (90, "specdec_kernels_sm90.ptx"),
    ] {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{arch}"))
            .arg("-o")
            .arg(out.join(name))
            .arg(SRC)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} (needed by the `cuda` feature): {e}"));
        assert!(
            status.success(),
            "{nvcc} failed on {SRC} for compute_{arch}: {status}"
        );
    }
}
