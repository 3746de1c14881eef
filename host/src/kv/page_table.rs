//! Host-owned page tables of the paged KV cache: a page allocator with reference counts, and
//! per-sequence page lists with lengths.
//!
//! Invariants (checked by [`PageTable::check_invariants`] and the state-machine test):
//! - every page is either free (refcount 0, on the free list exactly once) or owned
//!   (refcount = number of sequences whose page list contains it);
//! - a sequence of length `len` owns exactly `ceil(len / page_size)` pages;
//! - only pages that a write can no longer reach are shared after a fork, except the partially
//!   filled last page, which is copied on the first write into it (copy-on-write).
//!
//! Every operation is all-or-nothing: it validates and counts what it needs first, and returns a
//! typed error leaving every table exactly as it was.
//!
//! Device side: the tables are exported as FlashInfer's CSR arrays ([`BatchPages`]) and the
//! ragged append metadata ([`AppendPlan`]); `kv/cache.rs` owns the device pool.
use std::collections::BTreeMap;

use crate::error::{Error, Result};

const OP: &str = "page_table";

/// A sequence handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(pub u64);

/// A page copy the device must perform before appending (copy-on-write of a shared, partially
/// filled last page): rows `[0, rows)` of every head of `src` go to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageCopy {
    /// Shared source page.
    pub src: u32,
    /// Freshly allocated destination page (exclusive to the writing sequence).
    pub dst: u32,
    /// Rows to copy.
    pub rows: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sequence {
    pages: Vec<u32>,
    len: usize,
}

/// Page allocator plus per-sequence page lists.
#[derive(Clone, Debug)]
pub struct PageTable {
    page_size: usize,
    refcount: Vec<u32>,
    free: Vec<u32>,
    seqs: BTreeMap<SeqId, Sequence>,
    next_id: u64,
}

/// CSR page-table metadata of a batch of sequences (FlashInfer's paged-KV form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchPages {
    /// `[batch + 1]` prefix sums of page counts.
    pub kv_indptr: Vec<i32>,
    /// `[kv_indptr[batch]]` page ids.
    pub kv_indices: Vec<i32>,
    /// `[batch]` rows used in each sequence's last page, in `[1, page_size]` (0 for an empty
    /// sequence).
    pub kv_last_page_len: Vec<i32>,
}

impl BatchPages {
    /// Checks the CSR invariants for op `op`: `kv_indptr` has `batch + 1` entries, starts at 0
    /// and never decreases, its last entry is the length of `kv_indices`, each last-page length
    /// is in `[1, page_size]` (0 exactly for sequences without pages), and — when `num_pages`
    /// is given — every page id lies in `[0, num_pages)`.
    pub fn validate(
        &self,
        op: &'static str,
        page_size: usize,
        num_pages: Option<usize>,
    ) -> Result<()> {
        let b = self.kv_last_page_len.len();
        if self.kv_indptr.len() != b + 1 {
            return Err(Error::shape(
                op,
                "kv_indptr length",
                b + 1,
                self.kv_indptr.len(),
            ));
        }
        if self.kv_indptr[0] != 0 || self.kv_indptr.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::invalid(
                op,
                "kv_indptr",
                "must start at 0 and be non-decreasing",
            ));
        }
        if self.kv_indptr[b] as usize != self.kv_indices.len() {
            return Err(Error::shape(
                op,
                "kv_indices length",
                self.kv_indptr[b],
                self.kv_indices.len(),
            ));
        }
        for i in 0..b {
            let n = self.kv_indptr[i + 1] - self.kv_indptr[i];
            let last = self.kv_last_page_len[i];
            let ok = if n == 0 {
                last == 0
            } else {
                last >= 1 && last as usize <= page_size
            };
            if !ok {
                return Err(Error::invalid(
                    op,
                    "kv_last_page_len",
                    format!("entry {i}: {last} with {n} pages"),
                ));
            }
        }
        if let Some(num_pages) = num_pages {
            if let Some(&bad) = self
                .kv_indices
                .iter()
                .find(|&&p| p < 0 || p as usize >= num_pages)
            {
                return Err(Error::PageOutOfRange {
                    op,
                    page: bad as i64,
                    num_pages,
                });
            }
        }
        Ok(())
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.kv_last_page_len.len()
    }

    /// Length in tokens of sequence `b` for page size `page_size`.
    pub fn kv_len(&self, b: usize, page_size: usize) -> usize {
        let pages = (self.kv_indptr[b + 1] - self.kv_indptr[b]) as usize;
        if pages == 0 {
            0
        } else {
            (pages - 1) * page_size + self.kv_last_page_len[b] as usize
        }
    }
}

/// Ragged append metadata: where each new token goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendPlan {
    /// `[batch + 1]` prefix sums of new-token counts (rows of the K/V input).
    pub append_indptr: Vec<i32>,
    /// `[total new tokens]` the batch entry of each new row.
    pub batch_indices: Vec<i32>,
    /// `[total new tokens]` the absolute position of each new row in its sequence.
    pub positions: Vec<i32>,
    /// Page tables of the batch *after* the reservation.
    pub pages: BatchPages,
    /// Copy-on-write page copies to perform before writing.
    pub copies: Vec<PageCopy>,
    /// Per request: (sequence, length, page count, last page) before the reservation, for
    /// [`PageTable::rollback`].
    undo: Vec<(SeqId, usize, usize, Option<u32>)>,
}

impl PageTable {
    /// A table over `num_pages` pages of `page_size` tokens.
    pub fn new(num_pages: usize, page_size: usize) -> Result<Self> {
        if page_size == 0 {
            return Err(Error::invalid(OP, "page_size", "must be positive"));
        }
        if num_pages > i32::MAX as usize {
            return Err(Error::invalid(
                OP,
                "num_pages",
                format!("{num_pages} exceeds 2^31-1"),
            ));
        }
        Ok(Self {
            page_size,
            refcount: vec![0; num_pages],
            // Pop from the back: hand out low page ids first.
            free: (0..num_pages as u32).rev().collect(),
            seqs: BTreeMap::new(),
            next_id: 0,
        })
    }

    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.refcount.len()
    }

    /// Pages on the free list.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Live sequences.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Reference count of a page (0 = free).
    pub fn refcount(&self, page: u32) -> Option<u32> {
        self.refcount.get(page as usize).copied()
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence> {
        self.seqs
            .get(&id)
            .ok_or(Error::UnknownSequence { op: OP, id: id.0 })
    }

    /// Length of a sequence in tokens.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// Page list of a sequence.
    pub fn pages(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.seq(id)?.pages)
    }

    /// Whether no sequence is live.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, Sequence::default());
        id
    }

    /// Pages (new allocations) that appending `n` tokens to `id` needs, and whether its current
    /// last page must be copied first (shared and partially filled).
    fn needs(&self, s: &Sequence, n: usize) -> Result<(usize, bool)> {
        let p = self.page_size;
        let new_len = s.len.checked_add(n).ok_or(Error::Overflow {
            op: OP,
            what: "sequence length",
        })?;
        let have = s.pages.len();
        let want = new_len.div_ceil(p);
        let cow =
            n > 0 && !s.len.is_multiple_of(p) && self.refcount[s.pages[have - 1] as usize] > 1;
        Ok((want - have + cow as usize, cow))
    }

    /// Reserves room for `n` more tokens in each listed sequence (its length grows by `n`),
    /// allocating pages from the free list. Returns the copy-on-write copies to perform before
    /// writing. All-or-nothing across the whole list.
    pub fn reserve_many(&mut self, reqs: &[(SeqId, usize)]) -> Result<Vec<PageCopy>> {
        let mut total = 0usize;
        let mut seen = std::collections::BTreeSet::new();
        for &(id, n) in reqs {
            if !seen.insert(id) {
                return Err(Error::invalid(
                    OP,
                    "reserve",
                    format!("sequence {} listed twice", id.0),
                ));
            }
            let (need, _) = self.needs(self.seq(id)?, n)?;
            total = total.checked_add(need).ok_or(Error::Overflow {
                op: OP,
                what: "pages needed",
            })?;
        }
        if total > self.free.len() {
            return Err(Error::OutOfPages {
                op: OP,
                needed: total,
                free: self.free.len(),
            });
        }
        let mut copies = Vec::new();
        for &(id, n) in reqs {
            let (need, cow) = self.needs(&self.seqs[&id], n)?;
            let fresh: Vec<u32> = (0..need).filter_map(|_| self.free.pop()).collect();
            let mut fresh = fresh.into_iter();
            let p = self.page_size;
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            if cow {
                if let (Some(last), Some(dst)) = (s.pages.last_mut(), fresh.next()) {
                    copies.push(PageCopy {
                        src: *last,
                        dst,
                        rows: (s.len % p) as u32,
                    });
                    self.refcount[*last as usize] -= 1;
                    self.refcount[dst as usize] = 1;
                    *last = dst;
                }
            }
            for page in fresh {
                self.refcount[page as usize] = 1;
                s.pages.push(page);
            }
            s.len += n;
        }
        Ok(copies)
    }

    /// [`PageTable::reserve_many`] for one sequence.
    pub fn reserve(&mut self, id: SeqId, n: usize) -> Result<Vec<PageCopy>> {
        self.reserve_many(&[(id, n)])
    }

    /// Frees a sequence: drops one reference on each of its pages.
    pub fn free(&mut self, id: SeqId) -> Result<()> {
        let s = self
            .seqs
            .remove(&id)
            .ok_or(Error::UnknownSequence { op: OP, id: id.0 })?;
        for p in s.pages {
            self.release(p);
        }
        Ok(())
    }

    fn release(&mut self, page: u32) {
        let rc = &mut self.refcount[page as usize];
        *rc -= 1;
        if *rc == 0 {
            self.free.push(page);
        }
    }

    /// Forks `parent`: the child shares every page of the parent by reference (prefix sharing).
    /// The partially filled last page, if any, is copied by whichever sequence writes it first.
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let s = self.seq(parent)?.clone();
        for &p in &s.pages {
            self.refcount[p as usize] += 1;
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, s);
        Ok(id)
    }

    /// Shortens a sequence to `len` tokens (≤ its length), releasing pages past the end.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self.seq(id)?;
        if len > s.len {
            return Err(Error::invalid(
                OP,
                "truncate",
                format!("length {len} > current length {}", s.len),
            ));
        }
        let keep = len.div_ceil(self.page_size);
        let dropped: Vec<u32> = s.pages[keep..].to_vec();
        if let Some(s) = self.seqs.get_mut(&id) {
            s.pages.truncate(keep);
            s.len = len;
        }
        for p in dropped {
            self.release(p);
        }
        Ok(())
    }

    /// CSR page tables of `ids`, in order, into reusable buffers.
    pub fn batch_pages_into(&self, ids: &[SeqId], out: &mut BatchPages) -> Result<()> {
        for &id in ids {
            self.seq(id)?;
        }
        out.kv_indptr.clear();
        out.kv_indices.clear();
        out.kv_last_page_len.clear();
        out.kv_indptr.push(0);
        for &id in ids {
            let s = &self.seqs[&id];
            out.kv_indices.extend(s.pages.iter().map(|&p| p as i32));
            out.kv_indptr.push(out.kv_indices.len() as i32);
            let last = if s.len == 0 {
                0
            } else {
                (s.len - 1) % self.page_size + 1
            };
            out.kv_last_page_len.push(last as i32);
        }
        Ok(())
    }

    /// CSR page tables of `ids`.
    pub fn batch_pages(&self, ids: &[SeqId]) -> Result<BatchPages> {
        let mut b = BatchPages::default();
        self.batch_pages_into(ids, &mut b)?;
        Ok(b)
    }

    /// Reserves `n_b` new tokens for each `(id_b, n_b)` and returns the ragged append metadata
    /// (rows of the new K/V, in request order) plus the batch's page tables after reservation.
    /// All-or-nothing.
    pub fn plan_append(&mut self, reqs: &[(SeqId, usize)]) -> Result<AppendPlan> {
        let old: Vec<usize> = reqs
            .iter()
            .map(|&(id, _)| self.len(id))
            .collect::<Result<_>>()?;
        let undo = reqs
            .iter()
            .map(|&(id, _)| {
                let s = &self.seqs[&id];
                (id, s.len, s.pages.len(), s.pages.last().copied())
            })
            .collect();
        let total = reqs
            .iter()
            .try_fold(0usize, |a, r| a.checked_add(r.1))
            .ok_or(Error::Overflow {
                op: OP,
                what: "append rows",
            })?;
        if total > i32::MAX as usize {
            return Err(Error::Overflow {
                op: OP,
                what: "append rows",
            });
        }
        let copies = self.reserve_many(reqs)?;
        let mut plan = AppendPlan {
            copies,
            undo,
            ..Default::default()
        };
        plan.append_indptr.push(0);
        for (b, (&(_, n), &start)) in reqs.iter().zip(&old).enumerate() {
            for t in 0..n {
                plan.batch_indices.push(b as i32);
                plan.positions.push((start + t) as i32);
            }
            plan.append_indptr.push(plan.batch_indices.len() as i32);
        }
        let ids: Vec<SeqId> = reqs.iter().map(|r| r.0).collect();
        self.batch_pages_into(&ids, &mut plan.pages)?;
        Ok(plan)
    }

    /// Undoes the reservation of `plan` (the last `plan_append` on this table): releases the
    /// pages it allocated, puts back pages it replaced by copy-on-write, restores lengths. For
    /// callers whose device work after a reservation failed.
    pub fn rollback(&mut self, plan: &AppendPlan) {
        for &(id, len, np, last) in plan.undo.iter().rev() {
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            let added: Vec<u32> = s.pages.split_off(np.min(s.pages.len()));
            let mut restore = None;
            if np > 0 && s.pages.get(np - 1).copied() != last {
                if let (Some(cur), Some(old)) = (s.pages.get_mut(np - 1), last) {
                    restore = Some(*cur);
                    *cur = old;
                }
            }
            s.len = len;
            for p in added {
                self.release(p);
            }
            if let (Some(copy), Some(old)) = (restore, last) {
                self.release(copy);
                self.refcount[old as usize] += 1;
            }
        }
    }

    /// Checks every invariant of the module docs; returns a description of the first violation.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut count = vec![0u32; self.refcount.len()];
        for (id, s) in &self.seqs {
            if s.pages.len() != s.len.div_ceil(self.page_size) {
                return Err(format!(
                    "seq {} has {} pages for {} tokens",
                    id.0,
                    s.pages.len(),
                    s.len
                ));
            }
            for &p in &s.pages {
                count[p as usize] += 1;
            }
        }
        let mut on_free = vec![false; self.refcount.len()];
        for &p in &self.free {
            if std::mem::replace(&mut on_free[p as usize], true) {
                return Err(format!("page {p} on the free list twice"));
            }
        }
        for (p, (&rc, &c)) in self.refcount.iter().zip(&count).enumerate() {
            if rc != c {
                return Err(format!("page {p}: refcount {rc} but {c} owners"));
            }
            if (rc == 0) != on_free[p] {
                return Err(format!(
                    "page {p}: refcount {rc}, on free list {}",
                    on_free[p]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_allocates_pages_on_boundaries() {
        let mut t = PageTable::new(8, 4).unwrap();
        let a = t.add_sequence();
        assert!(t.reserve(a, 0).unwrap().is_empty());
        assert_eq!(t.pages(a).unwrap().len(), 0);
        t.reserve(a, 4).unwrap();
        assert_eq!(t.pages(a).unwrap().len(), 1);
        t.reserve(a, 1).unwrap();
        assert_eq!(t.pages(a).unwrap().len(), 2);
        assert_eq!(t.len(a).unwrap(), 5);
        let b = t.batch_pages(&[a]).unwrap();
        assert_eq!(b.kv_indptr, vec![0, 2]);
        assert_eq!(b.kv_last_page_len, vec![1]);
        assert_eq!(b.kv_len(0, 4), 5);
        t.check_invariants().unwrap();
    }

    #[test]
    fn out_of_pages_changes_nothing() {
        let mut t = PageTable::new(3, 2).unwrap();
        let a = t.add_sequence();
        let b = t.add_sequence();
        t.reserve(a, 3).unwrap();
        let before = (t.free.clone(), t.refcount.clone(), t.seqs.clone());
        let e = t.reserve_many(&[(b, 1), (a, 3)]).unwrap_err();
        assert!(matches!(
            e,
            Error::OutOfPages {
                needed: 2,
                free: 1,
                ..
            }
        ));
        assert_eq!(before, (t.free.clone(), t.refcount.clone(), t.seqs.clone()));
        assert!(matches!(
            t.reserve(SeqId(99), 1),
            Err(Error::UnknownSequence { .. })
        ));
    }

    #[test]
    fn fork_shares_and_copies_partial_page_on_write() {
        let mut t = PageTable::new(8, 4).unwrap();
        let a = t.add_sequence();
        t.reserve(a, 6).unwrap(); // pages [0, 1], last page holds 2 rows
        let c = t.fork(a).unwrap();
        assert_eq!(t.refcount(0), Some(2));
        assert_eq!(t.refcount(1), Some(2));
        let copies = t.reserve(c, 1).unwrap();
        assert_eq!(
            copies,
            vec![PageCopy {
                src: 1,
                dst: 2,
                rows: 2
            }]
        );
        assert_eq!(t.pages(c).unwrap(), &[0, 2]);
        assert_eq!(t.refcount(1), Some(1));
        // The parent now owns page 1 alone and writes in place.
        assert!(t.reserve(a, 1).unwrap().is_empty());
        t.check_invariants().unwrap();
        t.free(a).unwrap();
        t.free(c).unwrap();
        assert_eq!(t.free_pages(), 8);
        t.check_invariants().unwrap();
    }

    #[test]
    fn fork_of_full_pages_needs_no_copy() {
        let mut t = PageTable::new(8, 4).unwrap();
        let a = t.add_sequence();
        t.reserve(a, 8).unwrap();
        let c = t.fork(a).unwrap();
        assert!(t.reserve(c, 3).unwrap().is_empty());
        assert_eq!(t.pages(c).unwrap()[..2], t.pages(a).unwrap()[..2]);
        t.check_invariants().unwrap();
    }

    #[test]
    fn truncate_releases_and_later_write_copies_shared_page() {
        let mut t = PageTable::new(8, 4).unwrap();
        let a = t.add_sequence();
        t.reserve(a, 8).unwrap();
        let c = t.fork(a).unwrap();
        t.truncate(c, 5).unwrap();
        assert_eq!(t.pages(c).unwrap().len(), 2);
        // Page 1 is still shared with `a`; writing row 1 of it must copy row 0 first.
        let copies = t.reserve(c, 1).unwrap();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].rows, 1);
        assert!(t.truncate(c, 100).is_err());
        t.check_invariants().unwrap();
    }

    #[test]
    fn append_plan_lists_rows_in_order() {
        let mut t = PageTable::new(16, 4).unwrap();
        let a = t.add_sequence();
        let b = t.add_sequence();
        t.reserve(a, 3).unwrap();
        let p = t.plan_append(&[(a, 2), (b, 3)]).unwrap();
        assert_eq!(p.append_indptr, vec![0, 2, 5]);
        assert_eq!(p.batch_indices, vec![0, 0, 1, 1, 1]);
        assert_eq!(p.positions, vec![3, 4, 0, 1, 2]);
        assert_eq!(p.pages.kv_len(0, 4), 5);
        assert_eq!(p.pages.kv_len(1, 4), 3);
        assert!(t.plan_append(&[(a, 1), (a, 1)]).is_err());
    }

    #[test]
    fn rollback_restores_the_tables() {
        let mut t = PageTable::new(16, 4).unwrap();
        let a = t.add_sequence();
        t.reserve(a, 6).unwrap();
        let c = t.fork(a).unwrap();
        let before = (t.free.len(), t.refcount.clone(), t.seqs.clone());
        // Writes into the shared partial page (copy-on-write) and allocates more pages.
        let p = t.plan_append(&[(c, 7), (a, 1)]).unwrap();
        assert!(!p.copies.is_empty());
        t.rollback(&p);
        t.check_invariants().unwrap();
        assert_eq!(before.1, t.refcount);
        assert_eq!(before.2, t.seqs);
        assert_eq!(before.0, t.free.len());
    }
}
