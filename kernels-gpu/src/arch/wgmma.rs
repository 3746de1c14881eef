//! Warpgroup matrix multiply (`wgmma.mma_async`, sm_90a only) and its ordering instructions.
//!
//! A warpgroup (4 consecutive warps, the first warp index a multiple of 4) issues a batch of
//! asynchronous MMAs: [`fence`] before the first (the accumulator registers were touched by
//! ordinary instructions), the MMAs, [`commit_group`], then [`wait_group`] before any thread
//! reads or writes the accumulators again. B (and here A of the score product) come from
//! shared memory through 64-bit matrix descriptors; shared memory written by ordinary stores or
//! `cp.async` must be made visible to the tensor cores' (async) proxy with [`fence_proxy_async`]
//! in each writing thread before the barrier that precedes the MMAs.
//!
//! Accumulator layout (per warp `w` of the group, lane `l`, `g = l/4`, `t = l%4`): the warp
//! owns rows `16w .. 16w + 16`; register `4j + e` holds row `16w + g + 8·(e/2)`, column
//! `8j + 2t + e%2` (the `mma.m16n8k16` C layout repeated over the N/8 column blocks). A from
//! registers takes the `mma.m16n8k16` A fragment of the warp's 16 rows.
//!
//! Shared-memory layout of every operand here (`math::wgmma_layout` is its host twin): a tile
//! of `rows × cols` 16-bit values is stored as `cols/64` column blocks of `rows × 128` bytes;
//! 16-byte chunk `c` of row `r` of a block sits at `128·r + 16·(c ^ r%8)` (the 128-byte
//! swizzle), blocks `rows·128` bytes apart, every block 1024-byte aligned.
use core::arch::asm;

/// Descriptor bits 62–63: the 128-byte swizzle.
const SWIZZLE_128B: u64 = 1 << 62;

/// Descriptor of a K-major operand (rows along M or N, the reduction dimension contiguous) at
/// shared address `addr`: consecutive groups of 8 rows are 1024 bytes apart (stride byte
/// offset), the leading byte offset is unused with the 128-byte swizzle (1 by convention).
/// Advancing K by 16 elements inside a block adds 32 bytes to `addr`.
#[inline(always)]
pub fn desc_k_major(addr: u32) -> u64 {
    ((addr as u64 >> 4) & 0x3fff) | (1u64 << 16) | ((1024u64 >> 4) << 32) | SWIZZLE_128B
}

/// Descriptor of an N-major (transposed) B operand at `addr`: the reduction dimension runs
/// down the rows (8-row groups 1024 bytes apart: stride byte offset), N across a block's 64
/// columns, the next 64 columns `block_bytes` further on (leading byte offset).
#[inline(always)]
pub fn desc_mn_major(addr: u32, block_bytes: u32) -> u64 {
    ((addr as u64 >> 4) & 0x3fff)
        | (((block_bytes as u64 >> 4) & 0x3fff) << 16)
        | ((1024u64 >> 4) << 32)
        | SWIZZLE_128B
}

/// The descriptor of the operand `bytes` (a multiple of 16) further on: the start address is
/// the descriptor's low 14 bits in 16-byte units, so an in-range advance is one add (shared
/// addresses stay below 2^18 bytes, so the field cannot carry into the next one).
#[inline(always)]
pub const fn desc_advance(desc: u64, bytes: u32) -> u64 {
    desc + (bytes >> 4) as u64
}

/// `wgmma.fence.sync.aligned`: orders the warpgroup's earlier register and shared-memory
/// accesses before the MMAs that follow.
#[inline(always)]
pub fn fence() {
    // SAFETY: no operands.
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) };
}

/// `wgmma.commit_group.sync.aligned`: closes the MMAs issued since the last commit into a group.
#[inline(always)]
pub fn commit_group() {
    // SAFETY: no operands.
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) };
}

/// `wgmma.wait_group.sync.aligned N`: waits until at most `N` committed groups are pending.
#[inline(always)]
pub fn wait_group<const N: u32>() {
    // SAFETY: the immediate is a compile-time constant.
    unsafe { asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack)) };
}

/// Pins `regs` at this point of the program: an empty `asm` that reads and rewrites each value.
/// Call it after [`wait_group`] on the accumulators the finished MMAs wrote, so the compiler
/// cannot hoist their readers above the wait (to LLVM the MMA's outputs exist at its issue).
#[inline(always)]
pub fn fence_operands<const N: usize>(regs: &mut [f32; N]) {
    for r in regs.iter_mut() {
        // SAFETY: a PTX comment; the value is unchanged.
        unsafe { asm!("// pin {0}", inout(reg32) * r, options(nostack)) };
    }
}

/// `setmaxnreg.inc.sync.aligned.u32 N`: raises this warpgroup's per-thread register allocation
/// to `N` (waiting until the registers are free). Takes effect only in a kernel compiled with
/// a register cap at entry (`.maxntid`, added to the PTX by `host/build.rs`).
#[inline(always)]
pub fn setmaxnreg_inc<const N: u32>() {
    // SAFETY: an allocation hint; executed by whole warpgroups (the callers' branches).
    unsafe { asm!("setmaxnreg.inc.sync.aligned.u32 {n};", n = const N, options(nostack)) };
}

/// `setmaxnreg.dec.sync.aligned.u32 N`: releases this warpgroup's registers down to `N` per
/// thread, for other warpgroups' [`setmaxnreg_inc`].
#[inline(always)]
pub fn setmaxnreg_dec<const N: u32>() {
    // SAFETY: as above.
    unsafe { asm!("setmaxnreg.dec.sync.aligned.u32 {n};", n = const N, options(nostack)) };
}

/// `fence.proxy.async.shared::cta`: makes this thread's ordinary (generic-proxy) shared-memory
/// writes, `cp.async` included, visible to the async proxy that `wgmma` reads through.
#[inline(always)]
pub fn fence_proxy_async() {
    // SAFETY: no operands.
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) };
}

macro_rules! wgmma_ss_n128 {
    ($(#[$doc:meta])* $name:ident, $ty:literal) => {
        $(#[$doc])*
        /// D(64×128) = A·B (+ D when `accumulate`).
        ///
        /// # Safety
        /// Every thread of the warpgroup executes it convergently between [`fence`] and
        /// [`commit_group`]; both descriptors address operands inside the dynamic shared memory laid
        /// out as [`desc_k_major`] describes.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [f32; 64], a_desc: u64, b_desc: u64, accumulate: bool) {
            // SAFETY: per the caller's contract.
            unsafe {
                asm!(concat!("{{ .reg .pred p; setp.ne.b32 p, {66}, 0; wgmma.mma_async.sync.aligned.m64n128k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {64}, {65}, p, 1, 1, 0, 0; }}"),
                     inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
                     inout(reg32) d[4], inout(reg32) d[5], inout(reg32) d[6], inout(reg32) d[7],
                     inout(reg32) d[8], inout(reg32) d[9], inout(reg32) d[10], inout(reg32) d[11],
                     inout(reg32) d[12], inout(reg32) d[13], inout(reg32) d[14], inout(reg32) d[15],
                     inout(reg32) d[16], inout(reg32) d[17], inout(reg32) d[18], inout(reg32) d[19],
                     inout(reg32) d[20], inout(reg32) d[21], inout(reg32) d[22], inout(reg32) d[23],
                     inout(reg32) d[24], inout(reg32) d[25], inout(reg32) d[26], inout(reg32) d[27],
                     inout(reg32) d[28], inout(reg32) d[29], inout(reg32) d[30], inout(reg32) d[31],
                     inout(reg32) d[32], inout(reg32) d[33], inout(reg32) d[34], inout(reg32) d[35],
                     inout(reg32) d[36], inout(reg32) d[37], inout(reg32) d[38], inout(reg32) d[39],
                     inout(reg32) d[40], inout(reg32) d[41], inout(reg32) d[42], inout(reg32) d[43],
                     inout(reg32) d[44], inout(reg32) d[45], inout(reg32) d[46], inout(reg32) d[47],
                     inout(reg32) d[48], inout(reg32) d[49], inout(reg32) d[50], inout(reg32) d[51],
                     inout(reg32) d[52], inout(reg32) d[53], inout(reg32) d[54], inout(reg32) d[55],
                     inout(reg32) d[56], inout(reg32) d[57], inout(reg32) d[58], inout(reg32) d[59],
                     inout(reg32) d[60], inout(reg32) d[61], inout(reg32) d[62], inout(reg32) d[63],
                     in(reg64) a_desc, in(reg64) b_desc, in(reg32) accumulate as u32,
                     options(nostack))
            };
        }
    };
}

wgmma_ss_n128!(
    /// `wgmma.mma_async.m64n128k16.f32.f16.f16`, A and B (both K-major) from shared memory:
    mma_ss_n128_f16,
    "f16"
);

wgmma_ss_n128!(
    /// `wgmma.mma_async.m64n128k16.f32.bf16.bf16`, A and B (both K-major) from shared memory:
    mma_ss_n128_bf16,
    "bf16"
);

macro_rules! wgmma_rs_n128 {
    ($(#[$doc:meta])* $name:ident, $ty:literal) => {
        $(#[$doc])*
        /// fragment of the warp's 16 rows), B from shared memory N-major (transposed):
        /// D(64×128) = A·B (+ D when `accumulate`).
        ///
        /// # Safety
        /// Every thread of the warpgroup executes it convergently between [`fence`] and
        /// [`commit_group`]; `b_desc` addresses a B operand inside the dynamic shared memory laid out
        /// as [`desc_mn_major`] describes.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [f32; 64], a: [u32; 4], b_desc: u64, accumulate: bool) {
            // SAFETY: per the caller's contract.
            unsafe {
                asm!(concat!("{{ .reg .pred p; setp.ne.b32 p, {69}, 0; wgmma.mma_async.sync.aligned.m64n128k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}, {32}, {33}, {34}, {35}, {36}, {37}, {38}, {39}, {40}, {41}, {42}, {43}, {44}, {45}, {46}, {47}, {48}, {49}, {50}, {51}, {52}, {53}, {54}, {55}, {56}, {57}, {58}, {59}, {60}, {61}, {62}, {63}}}, {{{64}, {65}, {66}, {67}}}, {68}, p, 1, 1, 1; }}"),
                     inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
                     inout(reg32) d[4], inout(reg32) d[5], inout(reg32) d[6], inout(reg32) d[7],
                     inout(reg32) d[8], inout(reg32) d[9], inout(reg32) d[10], inout(reg32) d[11],
                     inout(reg32) d[12], inout(reg32) d[13], inout(reg32) d[14], inout(reg32) d[15],
                     inout(reg32) d[16], inout(reg32) d[17], inout(reg32) d[18], inout(reg32) d[19],
                     inout(reg32) d[20], inout(reg32) d[21], inout(reg32) d[22], inout(reg32) d[23],
                     inout(reg32) d[24], inout(reg32) d[25], inout(reg32) d[26], inout(reg32) d[27],
                     inout(reg32) d[28], inout(reg32) d[29], inout(reg32) d[30], inout(reg32) d[31],
                     inout(reg32) d[32], inout(reg32) d[33], inout(reg32) d[34], inout(reg32) d[35],
                     inout(reg32) d[36], inout(reg32) d[37], inout(reg32) d[38], inout(reg32) d[39],
                     inout(reg32) d[40], inout(reg32) d[41], inout(reg32) d[42], inout(reg32) d[43],
                     inout(reg32) d[44], inout(reg32) d[45], inout(reg32) d[46], inout(reg32) d[47],
                     inout(reg32) d[48], inout(reg32) d[49], inout(reg32) d[50], inout(reg32) d[51],
                     inout(reg32) d[52], inout(reg32) d[53], inout(reg32) d[54], inout(reg32) d[55],
                     inout(reg32) d[56], inout(reg32) d[57], inout(reg32) d[58], inout(reg32) d[59],
                     inout(reg32) d[60], inout(reg32) d[61], inout(reg32) d[62], inout(reg32) d[63],
                     in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                     in(reg64) b_desc, in(reg32) accumulate as u32,
                     options(nostack))
            };
        }
    };
}

wgmma_rs_n128!(
    /// `wgmma.mma_async.m64n128k16.f32.f16.f16`, A from registers (the `mma.m16n8k16` A
    mma_rs_n128_f16,
    "f16"
);

wgmma_rs_n128!(
    /// `wgmma.mma_async.m64n128k16.f32.bf16.bf16`, A from registers (the `mma.m16n8k16` A
    mma_rs_n128_bf16,
    "bf16"
);

macro_rules! wgmma_rs_n64 {
    ($(#[$doc:meta])* $name:ident, $ty:literal) => {
        $(#[$doc])*
        /// D(64×64) = A·B (+ D when `accumulate`).
        ///
        /// # Safety
        /// Every thread of the warpgroup executes it convergently between [`fence`] and
        /// [`commit_group`]; `b_desc` addresses a B operand inside the dynamic shared memory laid out
        /// as [`desc_mn_major`] describes.
        #[inline(always)]
        pub unsafe fn $name(d: &mut [f32; 32], a: [u32; 4], b_desc: u64, accumulate: bool) {
            // SAFETY: per the caller's contract.
            unsafe {
                asm!(concat!("{{ .reg .pred p; setp.ne.b32 p, {37}, 0; wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ty, ".", $ty, " {{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26}, {27}, {28}, {29}, {30}, {31}}}, {{{32}, {33}, {34}, {35}}}, {36}, p, 1, 1, 1; }}"),
                     inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
                     inout(reg32) d[4], inout(reg32) d[5], inout(reg32) d[6], inout(reg32) d[7],
                     inout(reg32) d[8], inout(reg32) d[9], inout(reg32) d[10], inout(reg32) d[11],
                     inout(reg32) d[12], inout(reg32) d[13], inout(reg32) d[14], inout(reg32) d[15],
                     inout(reg32) d[16], inout(reg32) d[17], inout(reg32) d[18], inout(reg32) d[19],
                     inout(reg32) d[20], inout(reg32) d[21], inout(reg32) d[22], inout(reg32) d[23],
                     inout(reg32) d[24], inout(reg32) d[25], inout(reg32) d[26], inout(reg32) d[27],
                     inout(reg32) d[28], inout(reg32) d[29], inout(reg32) d[30], inout(reg32) d[31],
                     in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                     in(reg64) b_desc, in(reg32) accumulate as u32,
                     options(nostack))
            };
        }
    };
}

wgmma_rs_n64!(
    /// `wgmma.mma_async.m64n64k16.f32.f16.f16`, A from registers, B from shared memory N-major:
    mma_rs_n64_f16,
    "f16"
);

wgmma_rs_n64!(
    /// `wgmma.mma_async.m64n64k16.f32.bf16.bf16`, A from registers, B from shared memory N-major:
    mma_rs_n64_bf16,
    "bf16"
);
