//! The Tensor Memory Accelerator (sm_90): tiles copied from global to shared memory by one
//! instruction, described by a tensor map the host encoded (`cuTensorMapEncodeTiled`) and
//! passed as a kernel parameter. The copy lands in the swizzled layout the map names and
//! completes on an `mbarrier` as transaction bytes (`mbarrier::arrive_expect_tx`); rows outside
//! the tensor's extent are filled with zeros.
//!
//! A tensor map must stay in the kernel's parameter space (CUDA's `__grid_constant__`): the
//! copy takes its generic address. Rust cannot mark a parameter that way, and taking the
//! address of a by-value parameter makes LLVM copy it to local memory, which TMA cannot read.
//! So the entry point names its parameter in PTX (`<entry>_param_<i>`, LLVM's naming) and
//! converts it with `cvta.param`: [`param_addr!`].
use core::arch::asm;

/// The generic address of parameter `$index` of kernel `$entry` (an identifier: the entry's
/// unmangled name), via `mov` of its PTX symbol and `cvta.param.u64`. Use in the entry's body
/// only; the parameter itself must not be touched by Rust code (that would copy it).
macro_rules! param_addr {
    ($entry:ident, $index:literal) => {{
        let addr: u64;
        // SAFETY: reads the address of a parameter of the enclosing kernel (no memory access).
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::asm!(
                concat!("mov.b64 {a}, ", stringify!($entry), "_param_", $index, ";\n\t",
                        "cvta.param.u64 {a}, {a};"),
                a = out(reg64) addr,
                options(nostack, nomem, pure)
            )
        };
        addr
    }};
}
pub(crate) use param_addr;

/// `prefetch.tensormap [map]`: brings a tensor map's 128 bytes into the descriptor cache
/// ahead of its first copy.
///
/// # Safety
/// `map` the generic address of a tensor map in parameter, constant or global memory.
#[inline(always)]
pub unsafe fn prefetch_map(map: u64) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("prefetch.tensormap [{0}];", in(reg64) map, options(nostack)) };
}

/// `cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes`: copies
/// the box at coordinates `(c0, c1, c2)` (innermost first, in elements) of the tensor `map`
/// describes to shared memory at `dst`; its bytes complete on the barrier `bar`.
///
/// # Safety
/// `map` as in [`prefetch_map`], a 3-D tiled map; `dst` inside the dynamic shared memory, the
/// box's size, aligned as the map's swizzle requires (1024 bytes for 128-byte swizzle);
/// `bar` an initialised mbarrier whose current phase expects these bytes.
#[inline(always)]
pub unsafe fn load_3d(dst: u32, map: u64, c0: u32, c1: u32, c2: u32, bar: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes \
              [{0}], [{1}, {{{2}, {3}, {4}}}], [{5}];",
             in(reg32) dst, in(reg64) map, in(reg32) c0, in(reg32) c1, in(reg32) c2,
             in(reg32) bar, options(nostack))
    };
}
