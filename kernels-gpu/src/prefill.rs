//! Single-request prefill attention on tensor cores (FlashAttention-2 style): `qo_len` query
//! tokens against `kv_len` contiguous K/V tokens, causal or not, with sliding window and
//! soft-cap. Host twin: `host/src/ops/single_prefill.rs`.
//!
//! CTA = (64 packed query rows, KV head), 4 warps; packed row `r` is query token `r / g`, head
//! `r % g` of the group (GQA packing, so a few query tokens still fill the tile). Each warp owns
//! 16 rows for the whole KV range: per 64-token tile, S = Q·Kᵀ (8 n-tiles, `ldmatrix` K),
//! masks, online softmax on the accumulator fragments, P re-packed as the A operand, O += P·V
//! (`ldmatrix.trans` V). K/V tiles come through the same swizzled 2-stage `cp.async` ring as
//! the tensor-core decode. Causal CTAs stop at the last key their last row may see; windowed
//! CTAs start at the first key their first row may see (tiles outside are never loaded).
use crate::abi::PrefillParams;
use crate::arch::{global, ldmatrix, pipeline, shared, thread, warp};
use crate::config::prefill as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fmax, log2, rcp, tanh};
use crate::math::frag::{ldmatrix_b_x4_trans_src, ldmatrix_bt_x4_src, mma_a};
use crate::math::softmax::clamp_ref;

const TILE: u32 = cfg::TILE;

/// Byte offset of 16-byte chunk `c` of row `r` in a swizzled `[rows][D]` tile.
#[inline(always)]
const fn swz<const D: u32>(r: u32, c: u32) -> u32 {
    r * D * 2 + ((c ^ (r % 8)) * 16)
}

/// Issues the copies of K/V tokens `[base, base + TILE)` (zero-filled past `end`) into stage `s`.
///
/// # Safety
/// As the kernel's contract.
#[inline(always)]
unsafe fn issue_tile<const D: u32>(
    p: &PrefillParams,
    kvh: u32,
    base: u32,
    end: u32,
    s: u32,
    tid: u32,
    smem: u32,
) {
    let chunks = D / 8;
    let k_base = smem + s * 2 * TILE * D * 2;
    let v_base = k_base + TILE * D * 2;
    for i in 0..(TILE * chunks / cfg::THREADS) {
        let idx = tid + i * cfg::THREADS;
        let r = idx / chunks;
        let c = idx % chunks;
        let t = base + r;
        let valid = t < end;
        let (mut ka, mut va) = (p.k, p.v);
        if valid {
            ka = p.k
                + ((t as u64) * (p.k_stride_n as u64) + (kvh * p.k_stride_h + c * 8) as u64) * 2;
            va = p.v
                + ((t as u64) * (p.v_stride_n as u64) + (kvh * p.v_stride_h + c * 8) as u64) * 2;
        }
        let n = if valid { 16 } else { 0 };
        // SAFETY: destinations inside the stage; sources valid rows or zero-byte copies.
        unsafe {
            pipeline::cp_async_cg_16(k_base + swz::<D>(r, c), ka, n);
            pipeline::cp_async_cg_16(v_base + swz::<D>(r, c), va, n);
        }
    }
    pipeline::commit_group();
}

/// The kernel body (`NT = D/8` output n-tiles, `KS = D/16` k-steps).
///
/// # Safety
/// Grid `(ceil(qo_len·g / 64), num_kv_heads)`, block `(128)`, dynamic smem
/// `config::prefill::smem_bytes(D)`; extents validated by the host (`qo_len ≤ kv_len` when
/// causal).
#[inline(always)]
unsafe fn prefill<E: Elem, const D: u32, const NT: usize, const KS: usize>(p: &PrefillParams) {
    let tid = thread::thread_idx_x();
    let lane = tid % 32;
    let w = tid / 32;
    let tile_idx = thread::block_idx_x();
    let kvh = thread::block_idx_y();
    let g = p.group.d;
    let rows_total = p.qo_len * g;
    let cta_row0 = tile_idx * cfg::ROWS;
    let row0 = cta_row0 + w * 16;
    let offset = p.kv_len - p.qo_len; // position of query token 0 (host: qo_len ≤ kv_len)
    let tf = p.logit;
    let causal = p.causal != 0;
    let window = p.window_left;

    // KV range this CTA needs: keys up to the last row's position (causal), from the first
    // row's window start.
    let last_row = if cta_row0 + cfg::ROWS < rows_total {
        cta_row0 + cfg::ROWS - 1
    } else {
        rows_total - 1
    };
    let t_min = p.group.div(cta_row0);
    let t_max = p.group.div(last_row);
    let kv_end = if causal {
        (offset + t_max + 1).min(p.kv_len)
    } else {
        p.kv_len
    };
    let kv_begin = if window != u32::MAX {
        (offset + t_min).saturating_sub(window)
    } else {
        0
    };
    let smem = shared::dyn_smem_base();
    let tiles = if kv_end > kv_begin {
        (kv_end - kv_begin).div_ceil(TILE)
    } else {
        0
    };
    if tiles > 0 {
        // SAFETY: see issue_tile.
        unsafe { issue_tile::<D>(p, kvh, kv_begin, kv_end, 0, tid, smem) };
    }

    // Q fragments and this lane's two rows (gq and gq + 8 of the warp's 16).
    let (gq, tq) = (lane / 4, lane % 4);
    let mut qa = [[0u32; 4]; KS];
    for (kk, a) in qa.iter_mut().enumerate() {
        for (reg, v) in a.iter_mut().enumerate() {
            let (row, col) = mma_a(lane, reg as u32, 0);
            let r = row0 + row;
            if r < rows_total {
                let (t, h) = p.group.divmod(r);
                let off = (t as u64) * (p.q_stride_n as u64)
                    + ((kvh * g + h) * p.q_stride_h + kk as u32 * 16 + col) as u64;
                // SAFETY: in-range q element pair, 4-byte aligned (col even).
                *v = unsafe { global::ld_u32(p.q + off * 2) };
            }
        }
    }
    // Query positions of the lane's two rows (rows past the end get a position that masks all).
    let mut pos = [0i64; 2];
    let mut live = [false; 2];
    for hh in 0..2 {
        let r = row0 + gq + 8 * hh as u32;
        live[hh] = r < rows_total;
        pos[hh] = (offset + p.group.div(r.min(rows_total.saturating_sub(1)))) as i64;
    }

    let mut o = [[0.0f32; 4]; NT];
    let mut m = [f32::NEG_INFINITY; 2];
    let mut d = [0.0f32; 2];
    let mut j = 0;
    while j < tiles {
        let base = kv_begin + j * TILE;
        if j + 1 < tiles {
            // SAFETY: see issue_tile; stage (j+1)%2 was released by the barrier ending j − 1.
            unsafe {
                issue_tile::<D>(
                    p,
                    kvh,
                    base + TILE,
                    kv_end,
                    (j + 1) % cfg::STAGES,
                    tid,
                    smem,
                )
            };
        } else {
            pipeline::commit_group();
        }
        pipeline::wait_group::<1>();
        thread::sync_threads();
        let k_base = smem + (j % cfg::STAGES) * 2 * TILE * D * 2;
        let v_base = k_base + TILE * D * 2;

        // S = Q·Kᵀ: 8 n-tiles of 8 tokens, two per ldmatrix.x4.
        let mut s = [[0.0f32; 4]; 8];
        let (bn, bk) = ldmatrix_bt_x4_src(lane);
        for (kk, a) in qa.iter().enumerate() {
            for np in 0..4 {
                let r = np as u32 * 16 + bn;
                // SAFETY: inside the stage; warp-convergent.
                let kb = unsafe {
                    ldmatrix::ldmatrix_x4(k_base + swz::<D>(r, (kk as u32 * 16 + bk) / 8))
                };
                s[2 * np] = E::mma(*a, [kb[0], kb[1]], s[2 * np]);
                s[2 * np + 1] = E::mma(*a, [kb[2], kb[3]], s[2 * np + 1]);
            }
        }
        // Transform and mask: element e of s[nt] is row gq + 8(e/2), key base + 8nt + 2tq + e%2.
        let mut mx = [f32::NEG_INFINITY; 2];
        for (nt, st) in s.iter_mut().enumerate() {
            for e in 0..4 {
                let hh = e / 2;
                let key = base + nt as u32 * 8 + 2 * tq + (e % 2) as u32;
                let kj = key as i64;
                let ok = live[hh]
                    && key < kv_end
                    && (!causal || kj <= pos[hh])
                    && (window == u32::MAX || kj >= pos[hh] - window as i64);
                let v = if tf.soft_cap != 0 {
                    tf.post * tanh(st[e] * tf.pre)
                } else {
                    st[e] * tf.pre
                };
                st[e] = if ok { v } else { f32::NEG_INFINITY };
                mx[hh] = fmax(mx[hh], st[e]);
            }
        }
        let mut r_scale = [1.0f32; 2];
        let mut mref = [0.0f32; 2];
        for hh in 0..2 {
            let mut v = mx[hh];
            v = fmax(v, warp::shfl_xor_f32(v, 1));
            v = fmax(v, warp::shfl_xor_f32(v, 2));
            let m_new = fmax(m[hh], v);
            mref[hh] = clamp_ref(m_new);
            r_scale[hh] = exp2(m[hh] - mref[hh]);
            m[hh] = m_new;
            d[hh] *= r_scale[hh];
        }
        for st in s.iter_mut() {
            for e in 0..4 {
                let hh = e / 2;
                st[e] = exp2(st[e] - mref[hh]);
                d[hh] += st[e];
            }
        }
        for ot in o.iter_mut() {
            ot[0] *= r_scale[0];
            ot[1] *= r_scale[0];
            ot[2] *= r_scale[1];
            ot[3] *= r_scale[1];
        }
        // O += P·V over 4 k-steps of 16 keys.
        let (vk, vn) = ldmatrix_b_x4_trans_src(lane);
        for ks in 0..4 {
            let (lo, hi) = (s[2 * ks], s[2 * ks + 1]);
            let pa = [
                E::pack2(lo[0], lo[1]),
                E::pack2(lo[2], lo[3]),
                E::pack2(hi[0], hi[1]),
                E::pack2(hi[2], hi[3]),
            ];
            let mut np = 0;
            while np < NT / 2 {
                let r = ks as u32 * 16 + vk;
                // SAFETY: inside the stage; warp-convergent.
                let vb = unsafe {
                    ldmatrix::ldmatrix_x4_trans(v_base + swz::<D>(r, (np as u32 * 16 + vn) / 8))
                };
                o[2 * np] = E::mma(pa, [vb[0], vb[1]], o[2 * np]);
                o[2 * np + 1] = E::mma(pa, [vb[2], vb[3]], o[2 * np + 1]);
                np += 1;
            }
        }
        thread::sync_threads();
        j += 1;
    }
    pipeline::wait_all();

    for dh in d.iter_mut() {
        *dh += warp::shfl_xor_f32(*dh, 1);
        *dh += warp::shfl_xor_f32(*dh, 2);
    }
    for hh in 0..2 {
        if !live[hh] {
            continue;
        }
        let r = row0 + gq + 8 * hh as u32;
        let (t, h) = p.group.divmod(r);
        let hq = kvh * g + h;
        let inv = if d[hh] > 0.0 { rcp(d[hh]) } else { 0.0 };
        let obase = (t as u64) * (p.o_stride_n as u64) + (hq * p.o_stride_h) as u64;
        for (nt, ot) in o.iter().enumerate() {
            let col = nt as u32 * 8 + 2 * tq;
            // SAFETY: host-validated o extent; 4-byte aligned (col even).
            unsafe {
                global::st_u32(
                    p.o + (obase + col as u64) * 2,
                    E::pack2(ot[2 * hh] * inv, ot[2 * hh + 1] * inv),
                )
            };
        }
        if tq == 0 && p.lse != 0 {
            let lse = if d[hh] > 0.0 {
                m[hh] + log2(d[hh])
            } else {
                f32::NEG_INFINITY
            };
            // SAFETY: lse [qo_len, Hq].
            unsafe { global::st_f32(p.lse + ((t * p.num_qo_heads + hq) as u64) * 4, lse) };
        }
    }
}

macro_rules! prefill_entries {
    ($($name:ident => $e:ty, $d:literal, $nt:literal, $ks:literal;)*) => {$(
        #[doc = concat!("Entry point: single prefill, ", stringify!($e), ", D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillParams) {
            // SAFETY: forwarded launch contract.
            unsafe { prefill::<$e, $d, $nt, $ks>(&p) }
        }
    )*};
}

prefill_entries! {
    prefill_f16_d64 => F16, 64, 8, 4;
    prefill_f16_d128 => F16, 128, 16, 8;
    prefill_bf16_d64 => Bf16, 64, 8, 4;
    prefill_bf16_d128 => Bf16, 128, 16, 8;
}
