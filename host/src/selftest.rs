//! Safe wrappers of the intrinsics self-test kernels (`kernels-gpu/src/selftest.rs`).
//!
//! Each function validates its arguments, uploads the input, fills the output buffer with the
//! caller's `poison` word (so a word the kernel never writes reads back as `poison`), launches
//! one kernel and downloads the raw output, whose layout it documents. The expected values are
//! computed on the CPU by `tests/intrinsics.rs`; the fragment layouts of `ldmatrix`/`mma` are
//! modelled by [`frag`] (re-exported from the device crate).
use ferrinfer_kernels::abi::SelfTestParams;

/// Host model of the `ldmatrix`/`mma` fragment layouts (`ferrinfer_kernels::math::frag`).
pub use ferrinfer_kernels::math::frag;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, Gpu, LaunchDims};

const OP: &str = "selftest";

/// Largest element count the 1-D self tests accept (keeps every index in u32).
pub const MAX_ELEMS: usize = 1 << 20;

/// u32 written per thread by [`indices`].
pub const INDEX_FIELDS: usize = 13;
/// u32 written per thread by [`shuffles`].
pub const SHUFFLE_FIELDS: usize = 18;
/// u32 written per thread by [`shared`].
pub const SHARED_FIELDS: usize = 13;
/// u32 written per row by [`global`].
pub const GLOBAL_FIELDS: usize = 12;
/// u32 written per thread by [`cp_async`].
pub const CP_ASYNC_FIELDS: usize = 16;
/// Registers per lane written by [`ldmatrix`] (x1 + x2 + x4, plain then `.trans`).
pub const LDMATRIX_REGS: usize = 14;
/// f32 written per input by [`fast`].
pub const FAST_FIELDS: usize = 7;
/// u32 written per record by [`convert`].
pub const CONVERT_FIELDS: usize = 12;

fn dims_1d(n: usize, block: u32, smem_bytes: u32) -> LaunchDims {
    LaunchDims {
        grid: ((n as u32).div_ceil(block), 1, 1),
        block: (block, 1, 1),
        smem_bytes,
    }
}

fn check_len(what: &'static str, len: usize, lo: usize, hi: usize) -> Result<()> {
    if len < lo || len > hi {
        return Err(Error::shape(OP, what, format!("{lo}..={hi}"), len));
    }
    Ok(())
}

/// Uploads `input` (if any) and a poisoned output of `out_len` words, launches `name` with
/// `SelfTestParams { input, output, n, arg }` and downloads the output.
///
/// # Safety
/// `name` must be a self-test kernel whose documented contract is met by `dims`, `n`, `arg`,
/// `input.len()` and `out_len`.
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    gpu: &Gpu,
    name: &str,
    dims: LaunchDims,
    input: &[u32],
    out_len: usize,
    n: u32,
    arg: u32,
    poison: u32,
) -> Result<Vec<u32>> {
    // An empty upload would give a null pointer; every kernel with an input reads it.
    let input_buf: Option<DeviceBuffer<u32>> = if input.is_empty() {
        None
    } else {
        Some(gpu.upload(input)?)
    };
    let output = gpu.upload(&vec![poison; out_len])?;
    let p = SelfTestParams {
        input: input_buf.as_ref().map_or(0, |b| b.addr()),
        output: output.addr(),
        n,
        arg,
    };
    // SAFETY: per this function's contract (the caller validated the sizes against the
    // kernel's documented launch contract; buffers are 256-byte aligned allocations).
    unsafe { gpu.launch(name, dims, p)? };
    gpu.download(&output)
}

/// `selftest_add_one`: `output[i] = input[i] + 1` (wrapping).
pub fn add_one(gpu: &Gpu, input: &[u32], poison: u32) -> Result<Vec<u32>> {
    check_len("input elements", input.len(), 1, MAX_ELEMS)?;
    let n = input.len();
    // SAFETY: input and output hold n u32; the grid covers n threads.
    unsafe {
        run(
            gpu,
            "selftest_add_one",
            dims_1d(n, 128, 0),
            input,
            n,
            n as u32,
            0,
            poison,
        )
    }
}

/// `selftest_indices`: launches `grid` × `block` threads. Thread `i` (blocks x-fastest, then
/// threads x-fastest within the block) writes [`INDEX_FIELDS`] words at `[13 i ..]`:
/// `tid.{x,y,z}, ctaid.{x,y,z}, ntid.{x,y}, nctaid.{x,y}, laneid, warp_id() (= tid.x / 32),
/// smid`.
pub fn indices(
    gpu: &Gpu,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    poison: u32,
) -> Result<Vec<u32>> {
    let per_block = block.0 as u64 * block.1 as u64 * block.2 as u64;
    if per_block == 0 || per_block > 1024 || block.2 > 64 {
        return Err(Error::invalid(
            OP,
            "block",
            format!("{block:?}: 1..=1024 threads, z <= 64"),
        ));
    }
    let blocks = grid.0 as u64 * grid.1 as u64 * grid.2 as u64;
    if blocks == 0 || grid.1 > 65535 || grid.2 > 65535 {
        return Err(Error::invalid(OP, "grid", format!("{grid:?}")));
    }
    let total = blocks * per_block;
    if total > MAX_ELEMS as u64 {
        return Err(Error::invalid(
            OP,
            "grid",
            format!("{total} threads exceed {MAX_ELEMS}"),
        ));
    }
    let dims = LaunchDims {
        grid,
        block,
        smem_bytes: 0,
    };
    // SAFETY: output holds 13 words per launched thread; n and arg match the launch.
    unsafe {
        run(
            gpu,
            "selftest_indices",
            dims,
            &[],
            total as usize * INDEX_FIELDS,
            total as u32,
            per_block as u32,
            poison,
        )
    }
}

/// `selftest_shuffles`: `input.len()` (a positive multiple of 32) threads in whole warps
/// (blocks of 128 when the length allows, else 32). With `v = input[i]`, `f = f32::from_bits(v)`,
/// `s = ((v >> 12) as i32 - 2^19) as f32`, `lane = i % 32`, `m = arg & 31`, thread `i` writes
/// [`SHUFFLE_FIELDS`] words at `[18 i ..]`: 0 `shfl_xor(v, 1)`, 1 `shfl_xor(v, 16)`,
/// 2 `shfl_xor(v, m)`, 3 `shfl_idx(v, (7 lane + 3) & 31)`, 4 `shfl_idx(v, m)`,
/// 5 `shfl_down(v, 1)`, 6 `shfl_down(v, 5)`, 7 `shfl_xor_f32(f, 3)`, 8 `shfl_idx_f32(f, 31 - lane)`,
/// 9 `shfl_down_f32(f, 16)`, 10 `ballot(v odd)`, 11 `ballot(lane == m)`, 12 `all(v odd)`,
/// 13 `any(v even)`, 14 `all(lane < 32) | any(lane >= 32) << 1`, 15 `group_sum_f32(s, 8)`,
/// 16 `group_max_f32(s, 32)`, 17 `group_max_f32(s, 4)` (f32 as bits, bools as 0/1).
pub fn shuffles(gpu: &Gpu, input: &[u32], arg: u32, poison: u32) -> Result<Vec<u32>> {
    check_len("input elements", input.len(), 32, MAX_ELEMS)?;
    let n = input.len();
    if !n.is_multiple_of(32) {
        return Err(Error::shape(OP, "input elements", "a multiple of 32", n));
    }
    let block = if n.is_multiple_of(128) { 128 } else { 32 };
    // SAFETY: input holds n words, output 18 n; the grid is exactly n threads in whole warps.
    unsafe {
        run(
            gpu,
            "selftest_shuffles",
            dims_1d(n, block, 0),
            input,
            n * SHUFFLE_FIELDS,
            n as u32,
            arg,
            poison,
        )
    }
}

/// `selftest_shared`: one block of `T = input.len() / 4` threads (`T` a power of two,
/// 32..=1024) and `16 T` bytes of dynamic shared memory; `input` = words `W`, row `t` =
/// `W[4t..4t+4]`. Thread `t` writes [`SHARED_FIELDS`] words at `[13 t ..]`:
/// `W[(5t+1) & (4T-1)]`; `W[2s], W[2s+1]` with `s = (3t+7) & (2T-1)`; row `T-1-t`; then, after
/// every thread rewrote its row `j` as `[W0 ^ 0xA5A5A5A5, W1 + j, W2.rotate_left(7),
/// ((W3 >> 8) as f32).to_bits()]`, row `(t+1) & (T-1)` and its last word again (via `ld_f32`);
/// finally `dyn_smem_base() & 15` (0).
pub fn shared(gpu: &Gpu, input: &[u32], poison: u32) -> Result<Vec<u32>> {
    let t = input.len() / 4;
    if !input.len().is_multiple_of(4) || !(32..=1024).contains(&t) || !t.is_power_of_two() {
        return Err(Error::shape(
            OP,
            "input words",
            "4 T with T a power of two in 32..=1024",
            input.len(),
        ));
    }
    let dims = LaunchDims {
        grid: (1, 1, 1),
        block: (t as u32, 1, 1),
        smem_bytes: 16 * t as u32,
    };
    // SAFETY: one block of T threads, 16 T bytes of shared memory, 4 T input and 13 T output
    // words, as the kernel requires.
    unsafe {
        run(
            gpu,
            "selftest_shared",
            dims,
            input,
            t * SHARED_FIELDS,
            t as u32,
            0,
            poison,
        )
    }
}

/// `selftest_global`: `R = input.len() / 4` rows of 16 bytes (`W[i][0..4]`). Row `i` yields
/// [`GLOBAL_FIELDS`] words at `[12 i ..]`: `W[i][0..4]` (`ld_nc_u32x4` → `st_u32x4`),
/// `W[R-1-i][3], W[R-1-i][2], W[R-1-i][1], W[R-1-i][0]` (`ld_u32x4` → `st_u32x4`), `W[i][1]`
/// (`ld_u32` → `st_u32`), `W[i][2]` (`ld_nc_f32` → `st_f32`), `(W[i][3] & 0xffff) |
/// (W[i][0] & 0xffff0000)` (two `st_u16`), `i`.
pub fn global(gpu: &Gpu, input: &[u32], poison: u32) -> Result<Vec<u32>> {
    let rows = input.len() / 4;
    if !input.len().is_multiple_of(4) {
        return Err(Error::shape(
            OP,
            "input words",
            "a multiple of 4",
            input.len(),
        ));
    }
    check_len("input rows", rows, 1, MAX_ELEMS)?;
    // SAFETY: input holds 4 R words and output 12 R; the grid covers R threads.
    unsafe {
        run(
            gpu,
            "selftest_global",
            dims_1d(rows, 128, 0),
            input,
            rows * GLOBAL_FIELDS,
            rows as u32,
            0,
            poison,
        )
    }
}

/// `selftest_cp_async`: one block of `T = input.len() / 4` threads (1..=1024), `48 T` bytes of
/// dynamic shared memory, rows `row_t = input[4t..4t+4]`, `src_size` (0..=16, a multiple of 4)
/// the partial copy size. Thread `t` writes [`CP_ASYNC_FIELDS`] words at `[16 t ..]`: the three
/// slots of thread `k = (t+1) % T` (`row_k`; zeros; the first `src_size / 4` words of `row_k`
/// then zeros), then its own slot 0 read right after `wait_group::<1>` (`row_t`).
pub fn cp_async(gpu: &Gpu, input: &[u32], src_size: u32, poison: u32) -> Result<Vec<u32>> {
    let t = input.len() / 4;
    if !input.len().is_multiple_of(4) || !(1..=1024).contains(&t) {
        return Err(Error::shape(
            OP,
            "input words",
            "4 T with T in 1..=1024",
            input.len(),
        ));
    }
    if src_size > 16 || !src_size.is_multiple_of(4) {
        return Err(Error::invalid(
            OP,
            "src_size",
            format!("{src_size}: must be 0, 4, 8, 12 or 16"),
        ));
    }
    let dims = LaunchDims {
        grid: (1, 1, 1),
        block: (t as u32, 1, 1),
        smem_bytes: 48 * t as u32,
    };
    // SAFETY: one block of T threads with 48 T bytes of shared memory, 4 T input and 16 T
    // output words, src_size <= 16.
    unsafe {
        run(
            gpu,
            "selftest_cp_async",
            dims,
            input,
            t * CP_ASYNC_FIELDS,
            t as u32,
            src_size,
            poison,
        )
    }
}

/// `selftest_ldmatrix`: `rows` = 32 rows of 8 16-bit elements (256 values), stored to shared
/// memory in order; lane `l` supplies the address of row `(l * mul + add) & 31` (`mul` odd).
/// Returns `[LDMATRIX_REGS * 32]` words: register `k` of lane `l` at `[32 k + l]`, registers in
/// the order x1 (1), x2 (2), x4 (4), x1.trans (1), x2.trans (2), x4.trans (4). Expected:
/// [`frag::ldmatrix_emulate`] of the rows each lane addresses.
pub fn ldmatrix(gpu: &Gpu, rows: &[u16], mul: u32, add: u32, poison: u32) -> Result<Vec<u32>> {
    if rows.len() != 256 {
        return Err(Error::shape(OP, "ldmatrix elements", 256, rows.len()));
    }
    if mul.is_multiple_of(2) {
        return Err(Error::invalid(
            OP,
            "mul",
            format!("{mul}: must be odd (a permutation of the rows)"),
        ));
    }
    let words = pack_u16(rows);
    let dims = LaunchDims {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        smem_bytes: 512,
    };
    // SAFETY: one warp, 512 bytes of shared memory, 128 input and 448 output words.
    unsafe {
        run(
            gpu,
            "selftest_ldmatrix",
            dims,
            &words,
            LDMATRIX_REGS * 32,
            add,
            mul,
            poison,
        )
    }
}

/// Packs 16-bit elements two per word, the first in the low half (memory order).
fn pack_u16(v: &[u16]) -> Vec<u32> {
    v.chunks(2)
        .map(|p| {
            p.iter()
                .enumerate()
                .fold(0u32, |w, (j, &h)| w | u32::from(h) << (16 * j))
        })
        .collect()
}

/// `selftest_mma_{f16,bf16}`: one `mma.m16n8k16` (`D = A·B + C`) by one warp. `a` is 16×16
/// row-major, `bt` is B n-major (`bt[n * 16 + k] = B[k][n]`, 8×16), both as bit patterns of
/// `dtype`; `c` is 16×8 row-major f32. `via_ldmatrix` loads A and B with `ldmatrix` from shared
/// memory instead of per the [`frag`] maps from global memory. Returns D per lane: f32 register
/// `i` of lane `l` at `[4 l + i]`, element `frag::mma_c(l, i)` of D. `poison` is the bit
/// pattern the output is filled with before the launch.
pub fn mma(
    gpu: &Gpu,
    dtype: DType,
    a: &[u16],
    bt: &[u16],
    c: &[f32],
    via_ldmatrix: bool,
    poison: u32,
) -> Result<Vec<f32>> {
    if a.len() != 256 {
        return Err(Error::shape(OP, "A elements", 256, a.len()));
    }
    if bt.len() != 128 {
        return Err(Error::shape(OP, "Bt elements", 128, bt.len()));
    }
    if c.len() != 128 {
        return Err(Error::shape(OP, "C elements", 128, c.len()));
    }
    let mut words = pack_u16(a);
    words.extend(pack_u16(bt));
    words.extend(c.iter().map(|x| x.to_bits()));
    let name = match dtype {
        DType::F16 => "selftest_mma_f16",
        DType::Bf16 => "selftest_mma_bf16",
    };
    let dims = LaunchDims {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        smem_bytes: 768,
    };
    // SAFETY: one warp, 768 bytes of shared memory, 320 input and 128 output words.
    let out = unsafe {
        run(
            gpu,
            name,
            dims,
            &words,
            128,
            0,
            u32::from(via_ldmatrix),
            poison,
        )
    }?;
    Ok(out.into_iter().map(f32::from_bits).collect())
}

/// `selftest_fast`: for each `x` in `input`, [`FAST_FIELDS`] f32 at `[7 i ..]`:
/// `ex2.approx.ftz(x)`, `lg2.approx.ftz(|x|)`, `rcp.approx.ftz(x)`, `tanh.approx(x)`,
/// `fma.rn(x, x, fma_c)`, and the sine and cosine of `math::trig::sincos_fast(x)`. `poison` is the bit pattern the output is filled with.
pub fn fast(gpu: &Gpu, input: &[f32], fma_c: f32, poison: u32) -> Result<Vec<f32>> {
    check_len("input elements", input.len(), 1, MAX_ELEMS)?;
    let n = input.len();
    let words: Vec<u32> = input.iter().map(|x| x.to_bits()).collect();
    // SAFETY: input holds n words, output 7 n; the grid covers n threads.
    let out = unsafe {
        run(
            gpu,
            "selftest_fast",
            dims_1d(n, 128, 0),
            &words,
            n * FAST_FIELDS,
            n as u32,
            fma_c.to_bits(),
            poison,
        )
    }?;
    Ok(out.into_iter().map(f32::from_bits).collect())
}

/// `selftest_convert`: `input` = records `[lo, hi, raw, raw2]` (`lo`, `hi` f32 bits). Record `i`
/// yields [`CONVERT_FIELDS`] words at `[12 i ..]`: 0 `f32x2_to_f16x2(lo, hi)`,
/// 1 `f32x2_to_bf16x2(lo, hi)`, 2-3 `f16x2_to_f32x2(word 0)`, 4-5 `bf16x2_to_f32x2(word 1)`,
/// 6-7 `f16x2_to_f32x2(raw)`, 8-9 `bf16x2_to_f32x2(raw2)`, 10 `f16_to_f32(raw2 & 0xffff)`,
/// 11 `f16_to_f32(raw2 >> 16)` (f32 results as bits; pairs low element first).
pub fn convert(gpu: &Gpu, input: &[[u32; 4]], poison: u32) -> Result<Vec<u32>> {
    check_len("records", input.len(), 1, MAX_ELEMS)?;
    let n = input.len();
    let words: Vec<u32> = input.iter().flatten().copied().collect();
    // SAFETY: input holds 4 n words, output 12 n; the grid covers n threads.
    unsafe {
        run(
            gpu,
            "selftest_convert",
            dims_1d(n, 128, 0),
            &words,
            n * CONVERT_FIELDS,
            n as u32,
            0,
            poison,
        )
    }
}
