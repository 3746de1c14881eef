//! Which keys a query may see: the visible key range of a query tile and the per-element mask
//! predicate, as a variant type with hooks ([`Mask`]).
//!
//! Positions: query token `t` of a request with `qo_len` queries and `kv_len` keys sits at
//! position `kv_len − qo_len + t` (the queries are the last `qo_len` keys). Causal: key `k` is
//! visible to position `q` when `k ≤ q`. Sliding window of `w` keys to the left: when
//! `k + w ≥ q`. A kernel loads only the tiles of the tile's visible range and tests elements
//! only in tiles that some row sees partly ([`Mask::tile_masked`]). A new mask (a custom bit
//! mask) is a new type implementing [`Mask`], not a new kernel.
use crate::abi::{PrefillItem, PrefillParams, PrefillRequest};
use crate::attn::tile::RegTile;
use crate::math::fastdiv::FastDiv;

/// A mask variant: built once per CTA from the launch parameters, then asked for the key range
/// of a query tile, whether a key tile needs the per-element test, and that test.
pub(crate) trait Mask: Copy {
    /// The mask of a launch.
    fn new(p: &PrefillParams) -> Self;

    /// Keys `[begin, end)` some query in positions `pos_first ..= pos_last` may see, of a
    /// request with `kv_len` keys.
    fn visible(&self, pos_first: u32, pos_last: u32, kv_len: u32) -> (u32, u32);

    /// The first key every query of the tile sees (keys before it need the mask); `pos_last`
    /// is the tile's last query position.
    fn all_from(&self, pos_last: u32) -> u32;

    /// Whether some key of the key tile `[base, base + tile)` is invisible to some query of
    /// the tile (CTA-uniform: interior tiles skip [`Mask::keep`]). `kv_end` is the tile's key
    /// end, `all_from` [`Mask::all_from`].
    fn tile_masked(&self, base: u32, tile: u32, kv_end: u32, pos_first: u32, all_from: u32)
        -> bool;

    /// Whether query position `pos` sees key `key` (keys at or past `kv_end` never).
    fn keep(&self, key: u32, pos: u32, kv_end: u32) -> bool;

    /// The mask bound to request `req` of work item `item` (a mask with per-request state,
    /// `attn::custom_mask`); position-only masks are already complete.
    #[inline(always)]
    fn bind(self, _p: &PrefillParams, _req: &PrefillRequest, _item: &PrefillItem) -> Self {
        self
    }
}

/// The causal mask (a runtime flag, nonzero: on) and the sliding window (`u32::MAX`: none), as
/// the launch parameters give them.
#[derive(Clone, Copy)]
pub(crate) struct CausalWindow {
    pub(crate) causal: u32,
    pub(crate) window: u32,
}

impl CausalWindow {
    #[inline(always)]
    fn causal(&self) -> bool {
        self.causal != 0
    }
}

impl Mask for CausalWindow {
    #[inline(always)]
    fn new(p: &PrefillParams) -> Self {
        Self {
            causal: p.causal,
            window: p.window_left,
        }
    }

    #[inline(always)]
    fn visible(&self, pos_first: u32, pos_last: u32, kv_len: u32) -> (u32, u32) {
        // Causal: up to the last query's position; window: from the first query's window start.
        let end = if self.causal() {
            (pos_last + 1).min(kv_len)
        } else {
            kv_len
        };
        let begin = if self.window != u32::MAX {
            pos_first.saturating_sub(self.window)
        } else {
            0
        };
        (begin, end)
    }

    #[inline(always)]
    fn all_from(&self, pos_last: u32) -> u32 {
        // The most restrictive window start: the last query's.
        if self.window != u32::MAX {
            pos_last.saturating_sub(self.window)
        } else {
            0
        }
    }

    #[inline(always)]
    fn tile_masked(
        &self,
        base: u32,
        tile: u32,
        kv_end: u32,
        pos_first: u32,
        all_from: u32,
    ) -> bool {
        // The tile crosses the key end, the first query's causal limit or the last query's
        // window start.
        base + tile > kv_end || (self.causal() && base + tile - 1 > pos_first) || base < all_from
    }

    #[inline(always)]
    fn keep(&self, key: u32, pos: u32, kv_end: u32) -> bool {
        // Non-short-circuit `&`/`|`: predicate logic, no branches.
        (key < kv_end)
            & (!self.causal() | (key <= pos))
            & ((self.window == u32::MAX) | (key as u64 + self.window as u64 >= pos as u64))
    }
}

/// A query tile of a prefill work item under a mask: its first token (relative to the
/// request) and token count, first and last query positions, and the keys
/// `[kv_begin, kv_end)` it reads (the mask's visible range intersected with the item's key
/// chunk).
#[derive(Clone, Copy)]
pub(crate) struct QueryTile<M: Mask> {
    pub(crate) mask: M,
    pub(crate) t0: u32,
    pub(crate) tokens: u32,
    pub(crate) pos_first: u32,
    pub(crate) pos_last: u32,
    pub(crate) kv_begin: u32,
    pub(crate) kv_end: u32,
}

impl<M: Mask> QueryTile<M> {
    /// The tile of `item` (at most `p.tile_tokens` query tokens) of request `req`, under the
    /// launch's mask.
    #[inline(always)]
    pub(crate) fn new(p: &PrefillParams, req: &PrefillRequest, item: &PrefillItem) -> Self {
        let t0 = item.t0;
        let tokens = p.tile_tokens.min(req.qo_len - t0);
        let offset = req.kv_len - req.qo_len; // position of query token 0 (host: qo_len ≤ kv_len)
        let mask = M::new(p);
        let pos_first = offset + t0;
        let pos_last = offset + t0 + tokens - 1;
        let (nat_begin, nat_end) = mask.visible(pos_first, pos_last, req.kv_len);
        let kv_begin = nat_begin.max(item.kv_begin);
        let kv_end = nat_end.min(item.kv_end);
        Self {
            mask,
            t0,
            tokens,
            pos_first,
            pos_last,
            kv_begin,
            kv_end,
        }
    }

    /// Key tiles of `tile` keys covering `[kv_begin, kv_end)` (0 when empty).
    #[inline(always)]
    pub(crate) fn tiles(&self, tile: u32) -> u32 {
        if self.kv_end > self.kv_begin {
            (self.kv_end - self.kv_begin).div_ceil(tile)
        } else {
            0
        }
    }

    /// Whether key tile `[base, base + tile)` needs the per-element mask (see
    /// [`Mask::tile_masked`]); `all_from` is [`QueryTile::all_from`].
    #[inline(always)]
    pub(crate) fn tile_masked(&self, base: u32, tile: u32, all_from: u32) -> bool {
        self.mask
            .tile_masked(base, tile, self.kv_end, self.pos_first, all_from)
    }

    /// The first key every query of the tile sees ([`Mask::all_from`]).
    #[inline(always)]
    pub(crate) fn all_from(&self) -> u32 {
        self.mask.all_from(self.pos_last)
    }
}

/// Query positions of a lane's two rows (`row0 + gq` and `+ 8`) of a packed tile whose row `r`
/// is token `r / group` (rows past the end take the last row's).
#[inline(always)]
pub(crate) fn row_positions(
    row0: u32,
    gq: u32,
    rows_total: u32,
    pos_first: u32,
    group: FastDiv,
) -> [u32; 2] {
    let mut pos = [0u32; 2];
    for (hh, ph) in pos.iter_mut().enumerate() {
        let r = (row0 + gq + 8 * hh as u32).min(rows_total - 1);
        *ph = pos_first + group.div(r);
    }
    pos
}

/// Sets the scores of `s` (key tile at `base`, mma C layout, lane column `tq`) that `mask`
/// hides from the lane's rows at positions `pos` to `−inf`.
#[inline(always)]
pub(crate) fn apply<M: Mask, const N: usize>(
    mask: &M,
    s: &mut RegTile<f32, N>,
    base: u32,
    kv_end: u32,
    pos: [u32; 2],
    tq: u32,
) {
    for (nt, st) in s.0.iter_mut().enumerate() {
        for (e, x) in st.iter_mut().enumerate() {
            let key = base + nt as u32 * 8 + 2 * tq + (e % 2) as u32;
            let ok = mask.keep(key, pos[e / 2], kv_end);
            *x = if ok { *x } else { f32::NEG_INFINITY };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::fastdiv::FastDiv;

    /// A request of `qo_len` queries over `kv_len` keys and one item (query tile at `t0`, key
    /// chunk `[c0, c1)`), with the mask's launch parameters.
    fn tile(
        causal: bool,
        window: u32,
        qo_len: u32,
        kv_len: u32,
        t0: u32,
        tile_tokens: u32,
        chunk: (u32, u32),
    ) -> (CausalWindow, QueryTile<CausalWindow>) {
        let p = PrefillParams {
            causal: causal as u32,
            window_left: window,
            tile_tokens,
            group: FastDiv::new(1),
            ..Default::default()
        };
        let req = PrefillRequest {
            qo_begin: 0,
            qo_len,
            kv_begin: 0,
            kv_len,
        };
        let item = PrefillItem {
            request: 0,
            t0,
            kv_begin: chunk.0,
            kv_end: chunk.1,
            part: u32::MAX,
            chunk: 0,
            nchunks: 1,
            pad: 0,
        };
        (CausalWindow::new(&p), QueryTile::new(&p, &req, &item))
    }

    /// The visible range is exactly the hull of the keys some query of the tile keeps (within
    /// the chunk), and a tile the mask calls unmasked keeps every key for every query.
    #[test]
    fn visible_range_and_tile_test_agree_with_keep() {
        for causal in [false, true] {
            for window in [u32::MAX, 0, 1, 3, 7, 40] {
                for (qo_len, kv_len) in [(1, 1), (5, 5), (3, 17), (17, 40), (40, 40)] {
                    for tt in [1, 4, 16] {
                        for chunk in [(0, u32::MAX), (0, 8), (8, 24)] {
                            let mut t0 = 0;
                            while t0 < qo_len {
                                check(causal, window, qo_len, kv_len, t0, tt, chunk);
                                t0 += tt;
                            }
                        }
                    }
                }
            }
        }
    }

    fn check(
        causal: bool,
        window: u32,
        qo_len: u32,
        kv_len: u32,
        t0: u32,
        tt: u32,
        chunk: (u32, u32),
    ) {
        let (mask, qt) = tile(causal, window, qo_len, kv_len, t0, tt, chunk);
        let positions = qt.pos_first..=qt.pos_last;
        assert_eq!(qt.pos_last - qt.pos_first + 1, qt.tokens);
        let chunk_end = chunk.1.min(kv_len);
        let seen: Vec<u32> = (chunk.0..chunk_end)
            .filter(|&k| positions.clone().any(|q| mask.keep(k, q, kv_len)))
            .collect();
        if let (Some(&lo), Some(&hi)) = (seen.first(), seen.last()) {
            assert!(
                qt.kv_begin <= lo && hi < qt.kv_end,
                "{causal} {window} {qo_len} {kv_len}"
            );
        }
        // Keys outside [kv_begin, kv_end) are invisible to every query of the tile.
        for k in chunk.0..chunk_end {
            if k < qt.kv_begin || k >= qt.kv_end {
                assert!(positions.clone().all(|q| !mask.keep(k, q, kv_len)));
            }
        }
        // Unmasked tiles keep everything.
        let all_from = qt.all_from();
        for tile in [1u32, 4, 8] {
            let mut base = qt.kv_begin;
            while base < qt.kv_end {
                if !qt.tile_masked(base, tile, all_from) {
                    for k in base..base + tile {
                        for q in positions.clone() {
                            assert!(mask.keep(k, q, qt.kv_end), "key {k} query {q}");
                        }
                    }
                }
                base += tile;
            }
        }
    }
}
