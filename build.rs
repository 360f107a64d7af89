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
    let ptx = out.join("specdec_kernels.ptx");
    // PTX for the lowest architecture we need (bf16 math: sm_80); the driver
    // compiles it for the GPU at hand when the module loads.
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .unwrap_or(80)
        .min(80);
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&ptx)
        .arg(SRC)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (needed by the `cuda` feature): {e}"));
    assert!(status.success(), "{nvcc} failed on {SRC}: {status}");
}
