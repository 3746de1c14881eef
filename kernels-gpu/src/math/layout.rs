//! Paged-KV addressing: where token `t` of a sequence lives in the page pool. A sequence's
//! pages are listed in CSR form (`indptr`, `indices`, `last_page_len`, FlashInfer's names);
//! token `t` is entry `t % page_size` of page `indices[indptr[seq] + t / page_size]`.
//!
//! A page holds `page_size` tokens × `num_heads` heads × `head_dim` elements, laid out NHD
//! (`[page_size, heads, head_dim]`) or HND (`[heads, page_size, head_dim]`); K and V pools are
//! addressed identically. Element `(page, entry, head, d)` is at
//! `page * stride_page + entry * stride_n + head * stride_h + d`.

/// In-page strides of a layout (elements).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStrides {
    /// Elements per page (`page_size * heads * head_dim`).
    pub stride_page: u32,
    /// Stride between token entries of a page.
    pub stride_n: u32,
    /// Stride between heads.
    pub stride_h: u32,
    /// Tokens per page.
    pub page_size: u32,
}

impl PageStrides {
    /// NHD: `[page_size, heads, head_dim]`.
    pub const fn nhd(page_size: u32, heads: u32, head_dim: u32) -> Self {
        Self {
            stride_page: page_size * heads * head_dim,
            stride_n: heads * head_dim,
            stride_h: head_dim,
            page_size,
        }
    }

    /// HND: `[heads, page_size, head_dim]`.
    pub const fn hnd(page_size: u32, heads: u32, head_dim: u32) -> Self {
        Self {
            stride_page: page_size * heads * head_dim,
            stride_n: head_dim,
            stride_h: page_size * head_dim,
            page_size,
        }
    }

    /// Element offset of `(page, entry, head)` (start of the head's `head_dim` row). 64-bit:
    /// pools can exceed 2^32 elements.
    #[inline(always)]
    pub fn offset(&self, page: u32, entry: u32, head: u32) -> u64 {
        page as u64 * self.stride_page as u64
            + (entry * self.stride_n + head * self.stride_h) as u64
    }
}

/// Splits a token position into (page slot in the sequence's page list, entry in the page).
#[inline(always)]
pub fn page_and_entry(pos: u32, page_size: core::num::NonZeroU32) -> (u32, u32) {
    (pos / page_size, pos % page_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::num::NonZeroU32;

    #[test]
    fn layouts_are_bijections_onto_a_page() {
        for (p, h, d) in [(1u32, 1u32, 8u32), (16, 8, 128), (3, 5, 16)] {
            for s in [PageStrides::nhd(p, h, d), PageStrides::hnd(p, h, d)] {
                let mut seen = vec![false; (p * h * d) as usize];
                for e in 0..p {
                    for hh in 0..h {
                        for x in 0..d {
                            let o = (s.offset(0, e, hh) + x as u64) as usize;
                            assert!(!seen[o]);
                            seen[o] = true;
                        }
                    }
                }
                assert!(seen.iter().all(|&b| b));
                assert_eq!(s.offset(2, 0, 0), 2 * (p * h * d) as u64);
            }
        }
    }

    #[test]
    fn positions_split_into_pages() {
        let p = NonZeroU32::new(16).unwrap();
        assert_eq!(page_and_entry(0, p), (0, 0));
        assert_eq!(page_and_entry(15, p), (0, 15));
        assert_eq!(page_and_entry(16, p), (1, 0));
        assert_eq!(page_and_entry(33, NonZeroU32::new(1).unwrap()), (33, 0));
    }
}
