//! Warp-level data exchange (`shfl.sync`) and votes (`vote.sync`), full-warp mask.
//!
//! All functions must be called by all 32 lanes of the warp (mask `0xffffffff`).
use core::arch::asm;

/// `shfl.sync.bfly.b32`: the value of lane `lane ^ mask`.
#[inline(always)]
pub fn shfl_xor_u32(v: u32, mask: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only; convergence is the caller's contract (module docs).
    unsafe {
        asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
             out(reg32) r, in(reg32) v, in(reg32) mask, options(nostack, nomem))
    };
    r
}

/// `shfl.sync.idx.b32`: the value of lane `src`.
#[inline(always)]
pub fn shfl_idx_u32(v: u32, src: u32) -> u32 {
    let r: u32;
    // SAFETY: as above.
    unsafe {
        asm!("shfl.sync.idx.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
             out(reg32) r, in(reg32) v, in(reg32) src, options(nostack, nomem))
    };
    r
}

/// [`shfl_idx_u32`] of a 64-bit value (two shuffles).
#[inline(always)]
pub fn shfl_idx_u64(v: u64, src: u32) -> u64 {
    let lo = shfl_idx_u32(v as u32, src) as u64;
    let hi = shfl_idx_u32((v >> 32) as u32, src) as u64;
    lo | (hi << 32)
}

/// `shfl.sync.down.b32`: the value of lane `lane + delta` (own value past lane 31).
#[inline(always)]
pub fn shfl_down_u32(v: u32, delta: u32) -> u32 {
    let r: u32;
    // SAFETY: as above.
    unsafe {
        asm!("shfl.sync.down.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
             out(reg32) r, in(reg32) v, in(reg32) delta, options(nostack, nomem))
    };
    r
}

/// [`shfl_xor_u32`] for f32.
#[inline(always)]
pub fn shfl_xor_f32(v: f32, mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(v.to_bits(), mask))
}

/// [`shfl_idx_u32`] for f32.
#[inline(always)]
pub fn shfl_idx_f32(v: f32, src: u32) -> f32 {
    f32::from_bits(shfl_idx_u32(v.to_bits(), src))
}

/// [`shfl_down_u32`] for f32.
#[inline(always)]
pub fn shfl_down_f32(v: f32, delta: u32) -> f32 {
    f32::from_bits(shfl_down_u32(v.to_bits(), delta))
}

/// `vote.sync.ballot.b32`: bit `i` set when lane `i`'s predicate is true.
#[inline(always)]
pub fn ballot(pred: bool) -> u32 {
    let r: u32;
    // SAFETY: register-only.
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {1}, 0; vote.sync.ballot.b32 {0}, p, 0xffffffff; }}",
             out(reg32) r, in(reg32) pred as u32, options(nostack, nomem))
    };
    r
}

/// `redux.sync.min.u32` over the full warp: for a value every lane already holds alike, the
/// same value, but one ptxas knows is warp-uniform (it lands in a uniform register). Loop
/// bounds loaded from memory are not uniform to ptxas, and a value carried out of a loop
/// whose exit it thinks divergent cannot live in a uniform register (sm_80+).
#[inline(always)]
pub fn uniform_u32(v: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only; every lane of the warp executes it (callers' contract of `sync`).
    unsafe {
        asm!("redux.sync.min.u32 {0}, {1}, 0xffffffff;",
             out(reg32) r, in(reg32) v, options(nostack, nomem))
    };
    r
}

/// `vote.sync.all.pred`: true when the predicate is true on every lane.
#[inline(always)]
pub fn all(pred: bool) -> bool {
    let r: u32;
    // SAFETY: register-only.
    unsafe {
        asm!("{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.all.pred q, p, 0xffffffff; selp.u32 {0}, 1, 0, q; }}",
             out(reg32) r, in(reg32) pred as u32, options(nostack, nomem))
    };
    r != 0
}

/// `vote.sync.any.pred`: true when the predicate is true on some lane.
#[inline(always)]
pub fn any(pred: bool) -> bool {
    let r: u32;
    // SAFETY: register-only.
    unsafe {
        asm!("{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.any.pred q, p, 0xffffffff; selp.u32 {0}, 1, 0, q; }}",
             out(reg32) r, in(reg32) pred as u32, options(nostack, nomem))
    };
    r != 0
}

/// Sum over groups of `width` consecutive lanes (`width` a power of two ≤ 32, a constant after
/// inlining) by butterfly shuffles; every lane of a group ends with the group's sum.
#[inline(always)]
pub fn group_sum_f32(mut v: f32, width: u32) -> f32 {
    let mut off = width / 2;
    while off > 0 {
        v += shfl_xor_f32(v, off);
        off /= 2;
    }
    v
}

/// Maximum over groups of `width` consecutive lanes (as [`group_sum_f32`]).
#[inline(always)]
pub fn group_max_f32(mut v: f32, width: u32) -> f32 {
    let mut off = width / 2;
    while off > 0 {
        let o = shfl_xor_f32(v, off);
        v = if o > v { o } else { v };
        off /= 2;
    }
    v
}
