//! The epilogue of a query tile: each lane's two rows normalised (`o / d`) and written with
//! their lse, either as the final output (`o` in the element type, `lse` when requested) or,
//! for a split-KV work item, as the chunk's normalised partial state in f32 (`part_o`,
//! `part_lse`), which `merge_f32_*` folds later.
use crate::abi::{PrefillItem, PrefillParams, PrefillRequest};
use crate::arch::global;
use crate::attn::state::RowState;
use crate::dtype::Elem;

/// Where a lane's rows of a finished prefill tile go: the tile's rows `row + 8·hh` (`row` =
/// the lane's first row, packed row `r` = token `r / g`, head `r % g` of KV head `kvh`'s
/// group), column pairs `8·nt + 2·tq` of `n_tiles` n-tiles of 8.
pub(crate) struct TileOut<'a> {
    pub(crate) p: &'a PrefillParams,
    pub(crate) req: &'a PrefillRequest,
    pub(crate) item: &'a PrefillItem,
    /// First query token of the tile (relative to the request), packed rows, group size.
    pub(crate) t0: u32,
    pub(crate) rows_total: u32,
    pub(crate) g: u32,
    pub(crate) kvh: u32,
    pub(crate) row: u32,
    pub(crate) tq: u32,
}

impl TileOut<'_> {
    /// Writes the lane's live rows: `o(nt, e)` is element `e` of n-tile `nt` (the mma C
    /// layout, unnormalised), `st` the rows' reduced softmax state.
    ///
    /// # Safety
    /// Host-validated output extents (and partial slots for split items).
    #[inline(always)]
    pub(crate) unsafe fn store<E: Elem, const D: u32>(
        &self,
        st: &RowState,
        n_tiles: usize,
        o: impl Fn(usize, usize) -> f32,
    ) {
        let tq = self.tq;
        // SAFETY: forwarded contract.
        unsafe {
            self.store_pairs::<E, D>(st, 1.0, n_tiles, |nt, hh| {
                (8 * nt as u32 + 2 * tq, o(nt, 2 * hh), o(nt, 2 * hh + 1))
            })
        }
    }

    /// [`TileOut::store`] for any column order: `pair(i, hh)` is the lane's pair `i`
    /// (0..`pairs`) of row half `hh`, `(first column, value, value of the next column)`,
    /// unnormalised; every output is also multiplied by `v_scale` (fp8 V's scale: o = v_scale ·
    /// Σ p·v / Σ p; 1 for 16-bit V, folded away).
    ///
    /// # Safety
    /// As [`TileOut::store`].
    #[inline(always)]
    pub(crate) unsafe fn store_pairs<E: Elem, const D: u32>(
        &self,
        st: &RowState,
        v_scale: f32,
        pairs: usize,
        pair: impl Fn(usize, usize) -> (u32, f32, f32),
    ) {
        let (p, item, tq) = (self.p, self.item, self.tq);
        for hh in 0..2 {
            let r = self.row + 8 * hh as u32;
            if r >= self.rows_total {
                continue;
            }
            let (t, h) = p.group.divmod(r);
            let hq = self.kvh * self.g + h;
            let row = st.row(hh);
            let inv = row.inv_denominator() * v_scale;
            let lse = row.lse();
            if item.part != u32::MAX {
                // Split-KV: normalised partial state of this chunk, merged by `merge_f32_*`.
                let slot = item.part + t * item.nchunks + item.chunk;
                let obase = ((slot * p.num_qo_heads + hq) as u64) * D as u64;
                for i in 0..pairs {
                    let (col, x, y) = pair(i, hh);
                    let col = col as u64;
                    // SAFETY: slot < the plan's slot count (host contract).
                    unsafe {
                        global::st_f32(p.part_o + (obase + col) * 4, x * inv);
                        global::st_f32(p.part_o + (obase + col + 1) * 4, y * inv);
                    }
                }
                if tq == 0 {
                    // SAFETY: as above.
                    unsafe {
                        global::st_f32(p.part_lse + ((slot * p.num_qo_heads + hq) as u64) * 4, lse)
                    };
                }
                continue;
            }
            let tok = (self.req.qo_begin + self.t0 + t) as u64;
            let obase = tok * (p.o_stride_n as u64) + (hq * p.o_stride_h) as u64;
            for i in 0..pairs {
                let (col, x, y) = pair(i, hh);
                // SAFETY: host-validated o extent; 4-byte aligned (col even).
                unsafe {
                    global::st_u32(p.o + (obase + col as u64) * 2, E::pack2(x * inv, y * inv))
                };
            }
            if tq == 0 && p.lse != 0 {
                // SAFETY: lse [tokens, Hq].
                unsafe {
                    global::st_f32(p.lse + (tok * p.num_qo_heads as u64 + hq as u64) * 4, lse)
                };
            }
        }
    }
}
