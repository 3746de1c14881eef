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
use std::sync::atomic::{AtomicU64, Ordering};

use super::BatchPages;
use crate::checked::{self, I32_LIMIT};
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

/// Owner ids of page tables: process-wide unique, never 0 (the owner of a `Default` plan, so a
/// plan not made by a table is foreign to every table).
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

fn new_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// Page allocator plus per-sequence page lists.
///
/// Every table has a process-unique owner id and a generation that changes with every change
/// of its page lists; [`AppendPlan`]s (and the cache's append steps) carry both, so a plan from
/// another table, or one made before a later change, is refused with
/// [`Error::StaleHandle`] instead of writing into pages that now belong to someone else. A
/// clone is a new table with its own owner id.
#[derive(Debug)]
pub struct PageTable {
    page_size: usize,
    num_pages: usize,
    /// Reference counts of the pages handed out at least once (`[0, refcount.len())`, the
    /// high-water mark); pages above it are free and untouched. Lazy, so that a table over
    /// 2^31 − 1 pages costs nothing until its pages are used (it allocated 16 GiB up front).
    refcount: Vec<u32>,
    /// Pages below the high-water mark that were freed (reused first, last freed first).
    free: Vec<u32>,
    seqs: BTreeMap<SeqId, Sequence>,
    next_id: u64,
    owner: u64,
    /// Current generation; `last_generation` is the largest ever handed out, so a generation
    /// value is never reused for a different state (a rollback returns to an earlier state and
    /// its generation).
    generation: u64,
    last_generation: u64,
}

impl Clone for PageTable {
    fn clone(&self) -> Self {
        Self {
            page_size: self.page_size,
            num_pages: self.num_pages,
            refcount: self.refcount.clone(),
            free: self.free.clone(),
            seqs: self.seqs.clone(),
            next_id: self.next_id,
            owner: new_owner(),
            generation: self.generation,
            last_generation: self.last_generation,
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
    /// The table that made the plan (0: none, e.g. `AppendPlan::default()`).
    owner: u64,
    /// The table's generation right after the reservation, and right before it.
    generation: u64,
    prev_generation: u64,
}

impl AppendPlan {
    /// Whether this plan was made by `table` and nothing changed `table` since (the plan's
    /// page lists are still the table's).
    pub fn is_current_for(&self, table: &PageTable) -> bool {
        self.owner == table.owner && self.generation == table.generation
    }
}

impl PageTable {
    /// A table over `num_pages` pages of `page_size` tokens. Both at most 2^31 − 1 (they end
    /// up in i32 tables). Page bookkeeping grows with the pages in use, allocated fallibly
    /// ([`Error::OutOfMemory`]). Low page ids are handed out first.
    pub fn new(num_pages: usize, page_size: usize) -> Result<Self> {
        if page_size == 0 {
            return Err(Error::invalid(OP, "page_size", "must be positive"));
        }
        checked::at_most(OP, "page_size", page_size, I32_LIMIT)?;
        checked::at_most(OP, "num_pages", num_pages, I32_LIMIT)?;
        Ok(Self {
            page_size,
            num_pages,
            refcount: Vec::new(),
            free: Vec::new(),
            seqs: BTreeMap::new(),
            next_id: 0,
            owner: new_owner(),
            generation: 0,
            last_generation: 0,
        })
    }

    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// Free pages.
    pub fn free_pages(&self) -> usize {
        self.free.len() + (self.num_pages - self.refcount.len())
    }

    /// Live sequences.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Reference count of a page (0 = free).
    pub fn refcount(&self, page: u32) -> Option<u32> {
        let p = page as usize;
        match self.refcount.get(p) {
            Some(&rc) => Some(rc),
            None => (p < self.num_pages).then_some(0),
        }
    }

    /// A free page (refcount still 0): a freed one first, else the next never-used one.
    /// Capacity for it was reserved by the caller ([`PageTable::reserve_many`]).
    fn take_page(&mut self) -> Option<u32> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.refcount.len() < self.num_pages {
            // < num_pages ≤ 2^31 − 1.
            let p = self.refcount.len() as u32;
            self.refcount.push(0);
            return Some(p);
        }
        None
    }

    /// Makes every outstanding plan of this table stale without changing its page lists (for
    /// the cache, whose steps also point into device metadata a failed step may have
    /// overwritten).
    pub(crate) fn invalidate_plans(&mut self) {
        self.bump();
    }

    /// Marks a change of the page lists: a fresh generation, never handed out before.
    fn bump(&mut self) {
        self.last_generation += 1;
        self.generation = self.last_generation;
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

    /// Pages (new allocations) that appending `n` tokens to `s` needs, and whether its current
    /// last page must be copied first: partially filled and still shared once `released`
    /// references to it have been dropped by earlier requests of the same batch (two forks
    /// sharing a partial page: the first copies, the second then owns it alone).
    fn needs(&self, s: &Sequence, n: usize, released: u32) -> Result<(usize, bool)> {
        let p = self.page_size;
        let new_len = checked::add(OP, "sequence length", s.len, n)?;
        // Positions are i32 in every table and kernel.
        checked::at_most(OP, "sequence length", new_len, I32_LIMIT)?;
        let have = s.pages.len();
        let want = new_len.div_ceil(p);
        let shared = |page: u32| self.refcount[page as usize].saturating_sub(released) > 1;
        let cow = n > 0 && !s.len.is_multiple_of(p) && s.pages.last().is_some_and(|&l| shared(l));
        Ok((want - have + cow as usize, cow))
    }

    /// Reserves room for `n` more tokens in each listed sequence (its length grows by `n`),
    /// allocating pages from the free list. Returns the copy-on-write copies to perform before
    /// writing. All-or-nothing across the whole list.
    pub fn reserve_many(&mut self, reqs: &[(SeqId, usize)]) -> Result<Vec<PageCopy>> {
        let (total, cows) = self.count(reqs)?;
        // Every allocation before the first change, so that an allocation failure changes
        // nothing (reserved capacity is not observable state).
        let mut copies = checked::with_capacity(OP, "page copies", cows)?;
        // New pages above the high-water mark, and room on the free list for every page below
        // the new mark (`release` then never allocates).
        let fresh = total.saturating_sub(self.free.len());
        checked::reserve(&mut self.refcount, OP, "page refcounts", fresh)?;
        let mark = self.refcount.len() + fresh;
        let more = mark - self.free.len();
        checked::reserve(&mut self.free, OP, "free list", more)?;
        for &(id, n) in reqs {
            let want = self.seq(id)?.len.saturating_add(n).div_ceil(self.page_size);
            if let Some(s) = self.seqs.get_mut(&id) {
                let more = want.saturating_sub(s.pages.len());
                checked::reserve(&mut s.pages, OP, "page list", more)?;
            }
        }
        self.bump();
        for &(id, n) in reqs {
            let (need, cow) = self.needs(self.seq(id)?, n, 0)?;
            let p = self.page_size;
            // `count` checked the free pages cover the batch; capacity is reserved above.
            let mut left = need;
            if cow {
                if let Some(dst) = self.take_page() {
                    left -= 1;
                    if let Some(last) = self.seqs.get_mut(&id).and_then(|s| {
                        let rows = (s.len % p) as u32;
                        s.pages
                            .last_mut()
                            .map(|l| (std::mem::replace(l, dst), rows))
                    }) {
                        let (src, rows) = last;
                        copies.push(PageCopy { src, dst, rows });
                        self.refcount[src as usize] -= 1;
                        self.refcount[dst as usize] = 1;
                    }
                }
            }
            for _ in 0..left {
                let Some(page) = self.take_page() else { break };
                self.refcount[page as usize] = 1;
                if let Some(s) = self.seqs.get_mut(&id) {
                    s.pages.push(page);
                }
            }
            if let Some(s) = self.seqs.get_mut(&id) {
                s.len += n;
            }
        }
        Ok(copies)
    }

    /// Validates `reqs` (known, distinct sequences; lengths within limits; enough free pages)
    /// and counts the pages and copy-on-write copies reserving them needs, simulating the
    /// copies of earlier requests exactly as [`PageTable::reserve_many`] performs them.
    fn count(&self, reqs: &[(SeqId, usize)]) -> Result<(usize, usize)> {
        let mut total = 0usize;
        let mut cows = 0usize;
        let mut seen = std::collections::BTreeSet::new();
        // Last pages whose reference an earlier request of this batch drops by copying.
        let mut released: BTreeMap<u32, u32> = BTreeMap::new();
        for &(id, n) in reqs {
            if !seen.insert(id) {
                return Err(Error::invalid(
                    OP,
                    "reserve",
                    format!("sequence {} listed twice", id.0),
                ));
            }
            let s = self.seq(id)?;
            let last = s.pages.last().copied();
            let dropped = last.and_then(|l| released.get(&l).copied()).unwrap_or(0);
            let (need, cow) = self.needs(s, n, dropped)?;
            if let (true, Some(l)) = (cow, last) {
                *released.entry(l).or_insert(0) += 1;
                cows += 1;
            }
            total = checked::add(OP, "pages needed", total, need)?;
        }
        if total > self.free_pages() {
            return Err(Error::OutOfPages {
                op: OP,
                needed: total,
                free: self.free_pages(),
            });
        }
        Ok((total, cows))
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
        self.bump();
        Ok(())
    }

    fn release(&mut self, page: u32) {
        let rc = &mut self.refcount[page as usize];
        *rc -= 1;
        if *rc == 0 {
            // Never longer than the high-water mark, whose capacity `reserve_many` reserved.
            self.free.push(page);
        }
    }

    /// Forks `parent`: the child shares every page of the parent by reference (prefix sharing).
    /// The partially filled last page, if any, is copied by whichever sequence writes it first.
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let parent_seq = self.seq(parent)?;
        if parent_seq
            .pages
            .iter()
            .any(|&p| self.refcount[p as usize] == u32::MAX)
        {
            return Err(Error::Overflow {
                op: OP,
                what: "page reference count",
            });
        }
        let mut pages = checked::with_capacity(OP, "page list", parent_seq.pages.len())?;
        pages.extend_from_slice(&parent_seq.pages);
        let s = Sequence {
            pages,
            len: parent_seq.len,
        };
        for &p in &s.pages {
            self.refcount[p as usize] += 1;
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, s);
        self.bump();
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
        let mut dropped = Vec::new();
        if let Some(s) = self.seqs.get_mut(&id) {
            dropped = s.pages.split_off(keep);
            s.len = len;
        }
        for p in dropped {
            self.release(p);
        }
        self.bump();
        Ok(())
    }

    /// CSR page tables of `ids`, in order, into reusable buffers. On error `out` is unchanged.
    /// Errors: an unknown sequence, more than 2^31 − 1 pages in the batch (i32 tables), or
    /// [`Error::OutOfMemory`].
    pub fn batch_pages_into(&self, ids: &[SeqId], out: &mut BatchPages) -> Result<()> {
        const WHAT: &str = "batch page count";
        let mut total = 0usize;
        for &id in ids {
            total = checked::add(OP, WHAT, total, self.seq(id)?.pages.len())?;
        }
        checked::at_most(OP, WHAT, total, I32_LIMIT)?;
        let reserve = |v: &mut Vec<i32>, n: usize| {
            checked::reserve(v, OP, "batch pages", n.saturating_sub(v.len()))
        };
        reserve(&mut out.kv_indptr, ids.len() + 1)?;
        reserve(&mut out.kv_indices, total)?;
        reserve(&mut out.kv_last_page_len, ids.len())?;
        out.kv_indptr.clear();
        out.kv_indices.clear();
        out.kv_last_page_len.clear();
        out.kv_indptr.push(0);
        for &id in ids {
            let s = self.seq(id)?;
            out.kv_indices.extend(s.pages.iter().map(|&p| p as i32));
            // ≤ total ≤ 2^31 − 1; a page list's last page holds ≤ page_size ≤ 2^31 − 1 rows.
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
    /// All-or-nothing. The plan is bound to this table and this change of it: see
    /// [`PageTable::rollback`].
    pub fn plan_append(&mut self, reqs: &[(SeqId, usize)]) -> Result<AppendPlan> {
        const ROWS: &str = "append rows";
        let total = checked::sum(OP, ROWS, reqs.iter().map(|r| r.1))?;
        checked::at_most(OP, ROWS, total, I32_LIMIT)?;
        // Every check (including free pages) before the per-token tables are allocated.
        self.count(reqs)?;
        let prev_generation = self.generation;
        let mut plan = AppendPlan {
            undo: checked::with_capacity(OP, "append plan", reqs.len())?,
            append_indptr: checked::with_capacity(OP, "append plan", reqs.len() + 1)?,
            batch_indices: checked::with_capacity(OP, "append plan", total)?,
            positions: checked::with_capacity(OP, "append plan", total)?,
            ..Default::default()
        };
        let mut ids = checked::with_capacity(OP, "append plan", reqs.len())?;
        plan.append_indptr.push(0);
        for (b, &(id, n)) in reqs.iter().enumerate() {
            let s = self.seq(id)?;
            plan.undo
                .push((id, s.len, s.pages.len(), s.pages.last().copied()));
            // `count` checked every new length ≤ 2^31 − 1, and the batch ≤ 2^31 − 1 rows.
            plan.batch_indices.extend((0..n).map(|_| b as i32));
            plan.positions.extend((s.len..s.len + n).map(|p| p as i32));
            plan.append_indptr.push(plan.batch_indices.len() as i32);
            ids.push(id);
        }
        plan.copies = self.reserve_many(reqs)?;
        plan.owner = self.owner;
        plan.generation = self.generation;
        plan.prev_generation = prev_generation;
        if let Err(e) = self.batch_pages_into(&ids, &mut plan.pages) {
            // Only an i32 overflow or a failed allocation gets here: undo the reservation.
            self.undo(&plan);
            self.generation = prev_generation;
            return Err(e);
        }
        Ok(plan)
    }

    /// Undoes the reservation of `plan`: releases the pages it allocated, puts back pages it
    /// replaced by copy-on-write, restores lengths. For callers whose device work after a
    /// reservation failed.
    ///
    /// Only the most recent change of this table can be undone: `plan` must have been made by
    /// this table's [`PageTable::plan_append`], with no change of the tables since (other than
    /// rolling back later plans, newest first). Anything else — a plan of another table, a
    /// plan already rolled back, a plan followed by a `reserve`, `fork`, `truncate` or `free` —
    /// is refused with [`Error::StaleHandle`] and changes nothing.
    pub fn rollback(&mut self, plan: &AppendPlan) -> Result<()> {
        if plan.owner != self.owner {
            return Err(Error::StaleHandle {
                op: OP,
                what: "append plan",
                detail: "made by another page table".into(),
            });
        }
        if plan.generation != self.generation {
            return Err(Error::StaleHandle {
                op: OP,
                what: "append plan",
                detail: "the page table changed since the plan (or it was rolled back already)"
                    .into(),
            });
        }
        self.undo(plan);
        // The tables are exactly as before the plan again, and so is their generation: plans
        // made earlier can be rolled back in turn (newest first).
        self.generation = plan.prev_generation;
        Ok(())
    }

    /// The state change of [`PageTable::rollback`], for a plan known to be the latest change.
    fn undo(&mut self, plan: &AppendPlan) {
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
}

#[path = "page_table_check.rs"]
mod check;

#[cfg(test)]
#[path = "page_table_tests.rs"]
mod tests;
