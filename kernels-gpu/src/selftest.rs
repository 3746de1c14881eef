//! Intrinsics self-test kernels: each exercises one `arch` function so the host harness can
//! compare it with its CPU meaning (tests/intrinsics.rs).
use crate::abi::SelfTestParams;
use crate::arch::{global, thread};

/// `output[i] = input[i] + 1` for i < n: the smallest end-to-end launch check.
///
/// # Safety
/// `input`/`output` hold `n` u32; grid × block ≥ n.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_add_one(p: SelfTestParams) {
    let i = thread::block_idx_x() * thread::block_dim_x() + thread::thread_idx_x();
    if i < p.n {
        // SAFETY: i < n.
        unsafe {
            global::st_u32(
                p.output + (i as u64) * 4,
                global::ld_u32(p.input + (i as u64) * 4) + 1,
            )
        };
    }
}
