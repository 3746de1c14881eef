//! The intrinsics layer (`kernels-gpu/src/arch`) on the GPU against its CPU meaning: one test
//! per self-test kernel (`ferrinfer::selftest`), each comparing every output word with a value
//! computed here. Fragment layouts of `ldmatrix`/`mma` come from the host model
//! `ferrinfer::selftest::frag` (unit-tested against the PTX ISA formulas in the device crate).
//!
//! Every kernel runs twice, with the output buffer pre-filled with two different poison words
//! (one a NaN pattern, one a finite f32): a word the kernel fails to write reads back as the
//! poison, which cannot match the expected value in both runs. Inputs are random (seeded), never
//! all zeros.
//!
//! Tolerances of the approximate instructions (CUDA Programming Guide / PTX ISA bounds, plus a
//! margin because the references here are the correctly rounded f32 results of f64 functions):
//! `ex2.approx` 3 ulp (documented 2), `lg2.approx` |err| ≤ 2^-21 for x in [0.5, 2] (documented
//! 2^-22) and 3 ulp elsewhere (documented 2), `rcp.approx` 2 ulp (documented 1), `tanh.approx`
//! relative 2^-10.5 (documented about 2^-11). Everything else is exact.
use ferrinfer::selftest::{self, frag};
use ferrinfer::DType;
use ferrinfer_harness::{gpu_or_skip, rng};
use half::{bf16, f16};
use rand::Rng;

mod fragments;
mod memory;
mod numerics;
mod threads;

/// The two poison words: a NaN pattern and a finite f32 (about 6.2e18).
const POISONS: [u32; 2] = [0xFFFF_FFFF, 0x5EAD_BEEF];

/// Runs `f` once per poison word.
fn with_poisons<T>(mut f: impl FnMut(u32) -> ferrinfer::Result<Vec<T>>) -> Vec<Vec<T>> {
    POISONS
        .iter()
        .map(|&p| f(p).unwrap_or_else(|e| panic!("launch failed (poison {p:#x}): {e}")))
        .collect()
}

/// Asserts `got == want` word for word, naming the first mismatches by `describe(index)`.
fn assert_words(test: &str, got: &[u32], want: &[u32], describe: impl Fn(usize) -> String) {
    assert_eq!(got.len(), want.len(), "{test}: output length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if !bad.is_empty() {
        let lines: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "  [{i}] {}: got {:#010x}, want {:#010x}",
                    describe(i),
                    got[i],
                    want[i]
                )
            })
            .collect();
        panic!(
            "{test}: {} of {} words differ:\n{}",
            bad.len(),
            got.len(),
            lines.join("\n")
        );
    }
}

fn random_words(seed: u64, n: usize) -> Vec<u32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random::<u32>()).collect()
}

/// Distance in units in the last place between two finite f32 of the same sign (or zeros).
fn ulp_dist(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}
