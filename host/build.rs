//! Builds the device crate (`kernels-gpu`) to PTX with rustc's nvptx64 backend, once per target
//! architecture (sm_80, sm_90, sm_90a), and embeds the results (`OUT_DIR/kernels_sm80.ptx`, ...).
//!
//! The nested cargo runs with its own target dir (the outer build holds `target/`'s lock),
//! `RUSTC_BOOTSTRAP=1` for itself only (the device crate needs `abi_ptx`, `asm_experimental_arch`
//! and `-Zbuild-std=core`), and without `CARGO_ENCODED_RUSTFLAGS` (inherited by build scripts; if
//! set, even empty, cargo ignores `RUSTFLAGS` and the PTX silently comes out as sm_30).
//!
//! When a project-local `ptxas` exists (scripts/install-ptxas.sh puts it in `.tools/`, or
//! `FERRINFER_PTXAS` names one), each PTX is also assembled to a cubin for its architecture and
//! embedded, so the runtime can skip the driver's JIT; without it only PTX is embedded.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrinfer_kernels::config::prefill_hopper;

/// sm_90a is sm_90 plus the architecture-specific `wgmma` kernels (`cfg(target_feature =
/// "sm_90a")` in the device crate); its PTX loads on compute capability 9.0 only.
const ARCHS: [&str; 3] = ["sm_80", "sm_90", "sm_90a"];

/// LLVM's default full-unroll threshold leaves the per-head register arrays of the larger
/// query groups in local memory; this makes every const-trip-count loop in the kernels unroll.
const UNROLL_THRESHOLD: u32 = 4000;

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ has a parent").to_path_buf();
    let kernels = root.join("kernels-gpu");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", kernels.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        kernels.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=FERRINFER_PTXAS");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target").join("device");
    let ptxas = find_ptxas(&root);
    if let Some(p) = &ptxas {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    for arch in ARCHS {
        let arch_dir = target_dir.join(arch);
        let output = Command::new(&cargo)
            .current_dir(&kernels)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTC_WRAPPER")
            .env("RUSTC_BOOTSTRAP", "1")
            .env(
                "RUSTFLAGS",
                format!("-C target-cpu={arch} -C llvm-args=-unroll-threshold={UNROLL_THRESHOLD}"),
            )
            .args([
                "rustc",
                "--profile",
                "device",
                "--target",
                "nvptx64-nvidia-cuda",
                "-Zbuild-std=core",
                "--crate-type",
                "cdylib",
                "--target-dir",
            ])
            .arg(&arch_dir)
            .output()
            .expect("failed to spawn cargo for the device build");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            for line in stderr.lines() {
                println!("cargo:warning={line}");
            }
            panic!("the device crate (kernels-gpu) failed to compile for {arch}:\n{stderr}");
        }
        let ptx = arch_dir.join("nvptx64-nvidia-cuda/device/ferrinfer_kernels.ptx");
        let dest = out.join(format!("kernels_{}.ptx", arch.replace('_', "")));
        let text = std::fs::read_to_string(&ptx)
            .unwrap_or_else(|e| panic!("device build produced no PTX at {}: {e}", ptx.display()));
        std::fs::write(&dest, add_launch_bounds(&text)).expect("write the PTX to OUT_DIR");

        let cubin = out.join(format!("kernels_{}.cubin", arch.replace('_', "")));
        let _ = std::fs::remove_file(&cubin);
        match &ptxas {
            Some(p) => assemble(p, arch, &dest, &cubin),
            None => std::fs::write(&cubin, b"").expect("write empty cubin marker"),
        }
    }
}

/// Adds `.maxntid` to the entries that need a register cap at entry (and aligns their tensor
/// maps, below): the Hopper prefill
/// kernels (suffixes `_h`, `_ht`, persistent `_hp`, `_hpt`) hand registers between warpgroups with `setmaxnreg`, which ptxas only
/// honours when the kernel declares its block size. Rust has no attribute for PTX launch
/// bounds, so the directive is written here, between an entry's parameter list and its body.
fn add_launch_bounds(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len() + 1024);
    let mut pending = false;
    for line in ptx.lines() {
        let t = line.trim_start();
        if let Some(rest) = t
            .strip_prefix(".visible .entry ")
            .or_else(|| t.strip_prefix(".entry "))
        {
            let name = rest.split('(').next().unwrap_or(rest).trim();
            pending = prefill_hopper::is_entry(name);
        }
        // The Hopper entries' tensor maps (`abi::KvTensorMaps`, parameter 1): TMA wants them
        // 64-byte aligned, as CUDA declares a `__grid_constant__ CUtensorMap`; rustc's nvptx
        // kernel ABI stops at 16 (a larger `align` makes it panic), so the PTX says it here.
        if pending && t.starts_with(".param .align 16 .b8 ") && t.contains("_param_1[") {
            out.push_str(&line.replacen(".align 16", ".align 64", 1));
            out.push('\n');
            continue;
        }
        if pending && line.trim() == "{" {
            out.push_str(&format!(".maxntid {}, 1, 1\n", prefill_hopper::THREADS));
            pending = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn find_ptxas(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("FERRINFER_PTXAS") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let p = root.join(".tools/cuda/nvidia/cu13/bin/ptxas");
    p.is_file().then_some(p)
}

/// Assembles one PTX to a cubin; a failure here is a hard error (the PTX is invalid).
fn assemble(ptxas: &Path, arch: &str, ptx: &Path, cubin: &Path) {
    let out = Command::new(ptxas)
        .args(["-arch", arch, "-O3"])
        .arg(ptx)
        .arg("-o")
        .arg(cubin)
        .output()
        .expect("failed to spawn ptxas");
    if !out.status.success() {
        panic!(
            "ptxas rejected the {arch} PTX:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
