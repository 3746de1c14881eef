//! Intrinsics self-test kernels: each exercises a group of `arch` functions so the host harness
//! can compare them with their CPU meaning (`host/src/selftest.rs` launches them and documents
//! the output layouts; `tests/intrinsics.rs` computes the expected values).
//!
//! All take [`SelfTestParams`]; `input`/`output` are device addresses (16-byte aligned), and the
//! meaning of `n`/`arg` is given per kernel. Kernels that need a fixed block shape return without
//! writing anything when launched with another one (the host poisons outputs, so that shows up
//! as a failure instead of undefined behaviour). No runtime division, no slice indexing: every
//! address is formed with u32/u64 arithmetic on raw device addresses.
use crate::abi::SelfTestParams;
use crate::arch::{convert, fast, global, ldmatrix, mma, pipeline, shared, thread, warp};
use crate::math::frag;

/// Global index of the calling thread in a 1-D launch.
#[inline(always)]
fn global_tid() -> u32 {
    thread::block_idx_x() * thread::block_dim_x() + thread::thread_idx_x()
}

/// Stores `v` as u32 number `idx` of `p.output`.
///
/// # Safety
/// `p.output` must hold more than `idx` u32.
#[inline(always)]
unsafe fn put(p: &SelfTestParams, idx: u64, v: u32) {
    // SAFETY: per the caller's contract.
    unsafe { global::st_u32(p.output + idx * 4, v) }
}

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

/// Fields written per thread by [`selftest_indices`].
const INDEX_FIELDS: u64 = 13;

/// Thread/block/grid indices. Any 3-D grid and block; `arg` = threads per block, `n` = threads
/// in the launch. Thread `i` (blocks in x-fastest order, threads x-fastest within the block)
/// writes 13 u32 at `output[13 i ..]`: `tid.x, tid.y, tid.z, ctaid.x, ctaid.y, ctaid.z,
/// ntid.x, ntid.y, nctaid.x, nctaid.y, laneid, warp_id() (= tid.x / 32), smid`.
///
/// # Safety
/// `output` holds `13 n` u32; `arg` and `n` match the launch.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_indices(p: SelfTestParams) {
    let block = (thread::block_idx_z() * thread::grid_dim_y() + thread::block_idx_y())
        * thread::grid_dim_x()
        + thread::block_idx_x();
    let tid = (thread::thread_idx_z() * thread::block_dim_y() + thread::thread_idx_y())
        * thread::block_dim_x()
        + thread::thread_idx_x();
    let i = block as u64 * p.arg as u64 + tid as u64;
    if i >= p.n as u64 {
        return;
    }
    let v = [
        thread::thread_idx_x(),
        thread::thread_idx_y(),
        thread::thread_idx_z(),
        thread::block_idx_x(),
        thread::block_idx_y(),
        thread::block_idx_z(),
        thread::block_dim_x(),
        thread::block_dim_y(),
        thread::grid_dim_x(),
        thread::grid_dim_y(),
        thread::lane_id(),
        thread::warp_id(),
        thread::sm_id(),
    ];
    for (f, &x) in v.iter().enumerate() {
        // SAFETY: i < n and f < 13.
        unsafe { put(&p, i * INDEX_FIELDS + f as u64, x) };
    }
}

/// Fields written per thread by [`selftest_shuffles`].
const SHUFFLE_FIELDS: u64 = 18;

/// Warp shuffles and votes. 1-D launch of whole warps, `n` threads (a multiple of 32, equal to
/// grid × block). Thread `i` reads `v = input[i]` (u32), `f = f32::from_bits(v)` and
/// `s = ((v >> 12) as i32 - 2^19) as f32`, with `lane = %laneid`, `m = arg & 31`, and writes 18
/// u32 at `output[18 i ..]`:
/// 0 `shfl_xor(v, 1)`, 1 `shfl_xor(v, 16)`, 2 `shfl_xor(v, m)`, 3 `shfl_idx(v, (7 lane + 3) & 31)`,
/// 4 `shfl_idx(v, m)`, 5 `shfl_down(v, 1)`, 6 `shfl_down(v, 5)`, 7 `shfl_xor_f32(f, 3)`,
/// 8 `shfl_idx_f32(f, 31 - lane)`, 9 `shfl_down_f32(f, 16)`, 10 `ballot(v odd)`,
/// 11 `ballot(lane == m)`, 12 `all(v odd)`, 13 `any(v even)`,
/// 14 `all(lane < 32) | any(lane >= 32) << 1`, 15 `group_sum_f32(s, 8)`,
/// 16 `group_max_f32(s, 32)`, 17 `group_max_f32(s, 4)` (f32 results as bits, bools as 0/1).
///
/// # Safety
/// `input` holds `n` u32, `output` `18 n` u32.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_shuffles(p: SelfTestParams) {
    let i = global_tid();
    // Whole warps are in or out (n and the block size are multiples of 32).
    if i >= p.n {
        return;
    }
    // SAFETY: i < n.
    let v = unsafe { global::ld_u32(p.input + i as u64 * 4) };
    let lane = thread::lane_id();
    let m = p.arg & 31;
    let f = f32::from_bits(v);
    let s = ((v >> 12) as i32 - (1 << 19)) as f32;
    let odd = v & 1 != 0;
    let r = [
        warp::shfl_xor_u32(v, 1),
        warp::shfl_xor_u32(v, 16),
        warp::shfl_xor_u32(v, m),
        warp::shfl_idx_u32(v, (lane * 7 + 3) & 31),
        warp::shfl_idx_u32(v, m),
        warp::shfl_down_u32(v, 1),
        warp::shfl_down_u32(v, 5),
        warp::shfl_xor_f32(f, 3).to_bits(),
        warp::shfl_idx_f32(f, 31 - lane).to_bits(),
        warp::shfl_down_f32(f, 16).to_bits(),
        warp::ballot(odd),
        warp::ballot(lane == m),
        warp::all(odd) as u32,
        warp::any(!odd) as u32,
        warp::all(lane < 32) as u32 | (warp::any(lane >= 32) as u32) << 1,
        warp::group_sum_f32(s, 8).to_bits(),
        warp::group_max_f32(s, 32).to_bits(),
        warp::group_max_f32(s, 4).to_bits(),
    ];
    for (k, &x) in r.iter().enumerate() {
        // SAFETY: i < n and k < 18.
        unsafe { put(&p, i as u64 * SHUFFLE_FIELDS + k as u64, x) };
    }
}

/// Fields written per thread by [`selftest_shared`].
const SHARED_FIELDS: u64 = 13;

/// Dynamic shared memory and `ld/st.shared` of 32, 64 and 128 bits, `bar.sync 0` and the named
/// barrier `bar.sync 1, n`. One block of `n` threads (`n` a power of two, 32..=1024), dynamic
/// shared memory `16 n` bytes; `input` = `4 n` u32 words `W`. With `T = n`, thread `t`:
/// 1. stores `W[4t..4t+4]` at byte `16 t` (`st.shared.v4`); barrier 0;
/// 2. reads word `(5t + 1) & (4T - 1)` (`ld.shared.b32`), the 8-byte pair `(3t + 7) & (2T - 1)`
///    (`ld.shared.v2`), the 16 bytes of row `T - 1 - t` (`ld.shared.v4`); named barrier 1;
/// 3. writes row `t` as `[W0 ^ 0xA5A5A5A5, W1 + t]` (`st.shared.v2`), `W2.rotate_left(7)`
///    (`st.shared.b32`), `(W3 >> 8) as f32` (`st_f32`); barrier 0;
/// 4. reads row `r = (t + 1) & (T - 1)` (`ld.shared.v4`) and its last word again (`ld_f32`).
///
/// Output, 13 u32 per thread at `output[13 t ..]`: step 2's 1 + 2 + 4 words, step 4's 4 + 1
/// words, then `dyn_smem_base() & 15` (must be 0).
///
/// # Safety
/// `input` holds `4 n` u32 and `output` `13 n` u32; launched as one block of `n` threads with
/// `16 n` bytes of dynamic shared memory.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_shared(p: SelfTestParams) {
    let n = p.n;
    if n < 32 || n & (n - 1) != 0 || thread::block_dim_x() != n || thread::block_idx_x() != 0 {
        return;
    }
    let t = thread::thread_idx_x();
    let base = shared::dyn_smem_base();
    let row = |k: u32| base + 16 * k;
    // SAFETY (whole block): every shared address below is below 16 n (masks keep word indices
    // < 4n, pair indices < 2n, rows < n) and aligned to its access width; input row t < n.
    unsafe {
        let w = global::ld_nc_u32x4(p.input + t as u64 * 16);
        shared::st_u32x4(row(t), w);
        thread::sync_threads();
        let a = shared::ld_u32(base + 4 * ((5 * t + 1) & (4 * n - 1)));
        let b = shared::ld_u32x2(base + 8 * ((3 * t + 7) & (2 * n - 1)));
        let c = shared::ld_u32x4(row(n - 1 - t));
        thread::named_barrier_sync(1, n);
        shared::st_u32x2(row(t), [w[0] ^ 0xA5A5_A5A5, w[1].wrapping_add(t)]);
        shared::st_u32(row(t) + 8, w[2].rotate_left(7));
        shared::st_f32(row(t) + 12, (w[3] >> 8) as f32);
        thread::sync_threads();
        let r = (t + 1) & (n - 1);
        let d = shared::ld_u32x4(row(r));
        let e = shared::ld_f32(row(r) + 12);
        let out = [
            a,
            b[0],
            b[1],
            c[0],
            c[1],
            c[2],
            c[3],
            d[0],
            d[1],
            d[2],
            d[3],
            e.to_bits(),
            base & 15,
        ];
        for (k, &x) in out.iter().enumerate() {
            put(&p, t as u64 * SHARED_FIELDS + k as u64, x);
        }
    }
}

/// Global 16-byte vector loads/stores and the scalar accessors. 1-D launch, `n` rows of 16 bytes
/// in `input` (words `W[i][0..4]`); thread `i < n` writes 48 bytes (12 u32) at `output[12 i ..]`:
/// `ld_nc_u32x4(row i)` (4 words, `st_u32x4`), `ld_u32x4(row n-1-i)` reversed (4 words,
/// `st_u32x4`), `ld_u32(W[i][1])` (`st_u32`), `ld_nc_f32(W[i][2])` bits (`st_f32`), one word
/// made of two `st_u16`: low half `W[i][3] & 0xffff`, high half `W[i][0] >> 16`, and `i`.
///
/// # Safety
/// `input` holds `4 n` u32 and `output` `12 n` u32, both 16-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_global(p: SelfTestParams) {
    let i = global_tid();
    if i >= p.n {
        return;
    }
    let src = p.input + i as u64 * 16;
    let dst = p.output + i as u64 * 48;
    // SAFETY: rows i and n-1-i are inside input; the 48 bytes at dst are inside output.
    unsafe {
        let a = global::ld_nc_u32x4(src);
        let b = global::ld_u32x4(p.input + (p.n - 1 - i) as u64 * 16);
        global::st_u32x4(dst, a);
        global::st_u32x4(dst + 16, [b[3], b[2], b[1], b[0]]);
        global::st_u32(dst + 32, global::ld_u32(src + 4));
        global::st_f32(dst + 36, global::ld_nc_f32(src + 8));
        global::st_u16(dst + 40, a[3] as u16);
        global::st_u16(dst + 42, (a[0] >> 16) as u16);
        global::st_u32(dst + 44, i);
    }
}

/// Fields written per thread by [`selftest_cp_async`].
const CP_ASYNC_FIELDS: u64 = 16;

/// `cp.async.cg` 16-byte copies with full, zero and partial source sizes, commit/wait groups.
/// One block of `n` threads (1..=1024), dynamic shared memory `48 n` bytes (3 slots of 16 bytes
/// per thread), `input` = `n` rows of 16 bytes, `arg` = the partial source size (0..=16, a
/// multiple of 4). Thread `t` fills its 3 slots with `0xDEADBEEF` (barrier), then copies row
/// `t` into slot 0 with `src_size = 16` (commit), into slot 1 with `src_size = 0` (commit),
/// `wait_group::<1>()`, reads its own slot 0, copies row `t` into slot 2 with `src_size = arg`
/// (commit), `wait_group::<0>()`, `wait_all()`, barrier, and reads the 3 slots of thread
/// `(t + 1) % n`.
///
/// Output, 16 u32 per thread at `output[16 t ..]`: the neighbour's slots 0, 1, 2 (expected: its
/// row; zeros; its row's first `arg` bytes then zeros), then the own slot 0 read after
/// `wait_group::<1>` (expected: own row).
///
/// # Safety
/// `input` holds `4 n` u32, `output` `16 n` u32; launched as one block of `n` threads with `48 n`
/// bytes of dynamic shared memory; `arg <= 16`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_cp_async(p: SelfTestParams) {
    let n = thread::block_dim_x();
    if n != p.n || thread::block_idx_x() != 0 || p.arg > 16 {
        return;
    }
    let t = thread::thread_idx_x();
    let base = shared::dyn_smem_base();
    let slot = |k: u32, s: u32| base + 48 * k + 16 * s;
    let src = p.input + t as u64 * 16;
    // SAFETY (whole block): slots of threads < n are inside the 48 n bytes and 16-byte aligned;
    // row t is inside input; arg <= 16.
    unsafe {
        for s in 0..3 {
            shared::st_u32x4(slot(t, s), [0xDEAD_BEEF; 4]);
        }
        thread::sync_threads();
        pipeline::cp_async_cg_16(slot(t, 0), src, 16);
        pipeline::commit_group();
        pipeline::cp_async_cg_16(slot(t, 1), src, 0);
        pipeline::commit_group();
        pipeline::wait_group::<1>();
        let own = shared::ld_u32x4(slot(t, 0));
        pipeline::cp_async_cg_16(slot(t, 2), src, p.arg);
        pipeline::commit_group();
        pipeline::wait_group::<0>();
        pipeline::wait_all();
        thread::sync_threads();
        let k = if t + 1 == n { 0 } else { t + 1 };
        let out0 = t as u64 * CP_ASYNC_FIELDS;
        for s in 0..3u32 {
            let v = shared::ld_u32x4(slot(k, s));
            for (j, &x) in v.iter().enumerate() {
                put(&p, out0 + 4 * s as u64 + j as u64, x);
            }
        }
        for (j, &x) in own.iter().enumerate() {
            put(&p, out0 + 12 + j as u64, x);
        }
    }
}

/// `ldmatrix` x1/x2/x4, with and without `.trans`. One warp (block of 32 threads), dynamic
/// shared memory 512 bytes; `input` = 32 rows of 8 u16 (512 bytes), stored to shared memory in
/// order (row `j` at byte `16 j`). Lane `l` supplies the address of shared row
/// `(l * arg + n) & 31` (`arg` odd makes it a permutation). Output: 14 registers per lane,
/// `output[32 k + l]` for register `k` of lane `l`, in the order x1 (1), x2 (2), x4 (4),
/// x1.trans (1), x2.trans (2), x4.trans (4).
///
/// # Safety
/// `input` holds 128 u32, `output` 448 u32; launched as one block of 32 threads with 512 bytes
/// of dynamic shared memory.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_ldmatrix(p: SelfTestParams) {
    if thread::block_dim_x() != 32 || thread::block_idx_x() != 0 {
        return;
    }
    let lane = thread::thread_idx_x();
    let base = shared::dyn_smem_base();
    // SAFETY (whole warp): input row `lane` < 32 exists; shared rows < 32 are inside the 512
    // bytes and 16-byte aligned; all 32 lanes execute the ldmatrix calls together.
    unsafe {
        let row = global::ld_nc_u32x4(p.input + lane as u64 * 16);
        shared::st_u32x4(base + 16 * lane, row);
        thread::sync_threads();
        let addr = base + 16 * (lane.wrapping_mul(p.arg).wrapping_add(p.n) & 31);
        let x1 = ldmatrix::ldmatrix_x1(addr);
        let x2 = ldmatrix::ldmatrix_x2(addr);
        let x4 = ldmatrix::ldmatrix_x4(addr);
        let t1 = ldmatrix::ldmatrix_x1_trans(addr);
        let t2 = ldmatrix::ldmatrix_x2_trans(addr);
        let t4 = ldmatrix::ldmatrix_x4_trans(addr);
        let regs = [
            x1, x2[0], x2[1], x4[0], x4[1], x4[2], x4[3], t1, t2[0], t2[1], t4[0], t4[1], t4[2],
            t4[3],
        ];
        for (k, &x) in regs.iter().enumerate() {
            put(&p, 32 * k as u64 + lane as u64, x);
        }
    }
}

/// Byte offset of Bᵀ in the mma self-test input.
const MMA_BT_OFF: u64 = 512;
/// Byte offset of C in the mma self-test input.
const MMA_C_OFF: u64 = 768;

/// One `mma.m16n8k16` with fragments loaded either per the `math::frag` maps from global memory
/// (`arg == 0`) or with `ldmatrix` from shared memory (`arg == 1`: A by `.x4` at
/// `frag::ldmatrix_a_x4_src`, B by `.x2` at `frag::ldmatrix_bt_x2_src`). One warp, 768 bytes
/// of dynamic shared memory. `input` (1280 bytes): A 16×16 row-major 16-bit (bytes 0..512),
/// Bᵀ = B n-major `[n][k]` 8×16 16-bit (bytes 512..768), C 16×8 row-major f32 (768..1280).
/// Output: D per lane, `output[4 l + i]` = f32 register `i` of lane `l`.
///
/// # Safety
/// `input` holds 320 u32, `output` 128 u32; launched as one block of 32 threads with 768 bytes
/// of dynamic shared memory.
#[inline(always)]
unsafe fn mma_selftest<const BF16: bool>(p: &SelfTestParams) {
    if thread::block_dim_x() != 32 || thread::block_idx_x() != 0 {
        return;
    }
    let lane = thread::thread_idx_x();
    let mut a = [0u32; 4];
    let mut b = [0u32; 2];
    let mut c = [0f32; 4];
    // SAFETY (whole warp): every address is inside the 1280-byte input (row < 16, col < 16,
    // n < 8, k < 16) or the 768 bytes of shared memory, aligned to its access width (columns
    // and k of half 0 are even); `p.arg` is uniform, so all 32 lanes take the same branch and
    // execute ldmatrix/mma together.
    unsafe {
        for (i, ci) in c.iter_mut().enumerate() {
            let (row, col) = frag::mma_c(lane, i as u32);
            *ci = global::ld_nc_f32(p.input + MMA_C_OFF + (row * 8 + col) as u64 * 4);
        }
        if p.arg == 0 {
            for (reg, ar) in a.iter_mut().enumerate() {
                let (row, col) = frag::mma_a(lane, reg as u32, 0);
                *ar = global::ld_u32(p.input + (row * 16 + col) as u64 * 2);
            }
            for (reg, br) in b.iter_mut().enumerate() {
                let (k, n) = frag::mma_b(lane, reg as u32, 0);
                *br = global::ld_u32(p.input + MMA_BT_OFF + (n * 16 + k) as u64 * 2);
            }
        } else {
            let base = shared::dyn_smem_base();
            // 48 rows of 16 bytes (A then Bᵀ), in order.
            let r0 = global::ld_nc_u32x4(p.input + lane as u64 * 16);
            shared::st_u32x4(base + 16 * lane, r0);
            if lane < 16 {
                let r1 = global::ld_nc_u32x4(p.input + (lane + 32) as u64 * 16);
                shared::st_u32x4(base + 16 * (lane + 32), r1);
            }
            thread::sync_threads();
            let (row, col) = frag::ldmatrix_a_x4_src(lane);
            a = ldmatrix::ldmatrix_x4(base + row * 32 + col * 2);
            let (n, k) = frag::ldmatrix_bt_x2_src(lane);
            b = ldmatrix::ldmatrix_x2(base + MMA_BT_OFF as u32 + n * 32 + k * 2);
        }
        let d = if BF16 {
            mma::mma_m16n8k16_bf16(a, b, c)
        } else {
            mma::mma_m16n8k16_f16(a, b, c)
        };
        for (i, &x) in d.iter().enumerate() {
            global::st_f32(p.output + (4 * lane as u64 + i as u64) * 4, x);
        }
    }
}

/// `mma.m16n8k16` f16 × f16 + f32; see [`mma_selftest`] for the contract and layouts.
///
/// # Safety
/// As `mma_selftest`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_mma_f16(p: SelfTestParams) {
    // SAFETY: forwarded contract.
    unsafe { mma_selftest::<false>(&p) }
}

/// `mma.m16n8k16` bf16 × bf16 + f32; see [`mma_selftest`] for the contract and layouts.
///
/// # Safety
/// As `mma_selftest`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_mma_bf16(p: SelfTestParams) {
    // SAFETY: forwarded contract.
    unsafe { mma_selftest::<true>(&p) }
}

/// Special functions and FMA. 1-D launch; `input` = `n` f32 `x`; thread `i < n` writes 7 f32 at
/// `output[7 i ..]`: `ex2_approx(x)`, `lg2_approx(|x|)`, `rcp_approx(x)`, `tanh_approx(x)`,
/// `fma(x, x, f32::from_bits(arg))`, then `sincos_fast(x)` (sine, cosine).
///
/// # Safety
/// `input` holds `n` f32, `output` `5 n` f32.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_fast(p: SelfTestParams) {
    let i = global_tid();
    if i >= p.n {
        return;
    }
    // SAFETY: i < n.
    let x = unsafe { global::ld_nc_f32(p.input + i as u64 * 4) };
    let abs = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let (sin, cos) = crate::math::trig::sincos_fast(x);
    let r = [
        fast::ex2_approx(x),
        fast::lg2_approx(abs),
        fast::rcp_approx(x),
        fast::tanh_approx(x),
        fast::fma(x, x, f32::from_bits(p.arg)),
        sin,
        cos,
    ];
    for (k, &y) in r.iter().enumerate() {
        // SAFETY: i < n, k < 7.
        unsafe { put(&p, i as u64 * 7 + k as u64, y.to_bits()) };
    }
}

/// f32 ↔ f16/bf16 packing. 1-D launch; `input` = `n` records of 4 u32 `[lo, hi, raw, raw2]`
/// (`lo`/`hi` f32 bits); thread `i < n` writes 12 u32 at `output[12 i ..]`:
/// 0 `f32x2_to_f16x2(lo, hi)`, 1 `f32x2_to_bf16x2(lo, hi)`, 2-3 `f16x2_to_f32x2(word 0)`,
/// 4-5 `bf16x2_to_f32x2(word 1)`, 6-7 `f16x2_to_f32x2(raw)`, 8-9 `bf16x2_to_f32x2(raw2)`,
/// 10 `f16_to_f32(raw2 & 0xffff)`, 11 `f16_to_f32(raw2 >> 16)` (f32 results as bits).
///
/// # Safety
/// `input` holds `4 n` u32, `output` `12 n` u32, both 16-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn selftest_convert(p: SelfTestParams) {
    let i = global_tid();
    if i >= p.n {
        return;
    }
    // SAFETY: record i < n.
    let w = unsafe { global::ld_nc_u32x4(p.input + i as u64 * 16) };
    let (lo, hi) = (f32::from_bits(w[0]), f32::from_bits(w[1]));
    let h = convert::f32x2_to_f16x2(lo, hi);
    let b = convert::f32x2_to_bf16x2(lo, hi);
    let hu = convert::f16x2_to_f32x2(h);
    let bu = convert::bf16x2_to_f32x2(b);
    let ru = convert::f16x2_to_f32x2(w[2]);
    let bu2 = convert::bf16x2_to_f32x2(w[3]);
    let s0 = convert::f16_to_f32(w[3] as u16);
    let s1 = convert::f16_to_f32((w[3] >> 16) as u16);
    let dst = p.output + i as u64 * 48;
    // SAFETY: the 48 bytes at dst are inside output (16-byte aligned).
    unsafe {
        global::st_u32x4(dst, [h, b, hu.0.to_bits(), hu.1.to_bits()]);
        global::st_u32x4(
            dst + 16,
            [
                bu.0.to_bits(),
                bu.1.to_bits(),
                ru.0.to_bits(),
                ru.1.to_bits(),
            ],
        );
        global::st_u32x4(
            dst + 32,
            [bu2.0.to_bits(), bu2.1.to_bits(), s0.to_bits(), s1.to_bits()],
        );
    }
}
