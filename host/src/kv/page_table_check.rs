//! The page table's invariant check ([`PageTable::check_invariants`]), used by the tests and
//! the state-machine test after every operation.
use super::PageTable;

impl PageTable {
    /// Checks every invariant of the module docs; returns a description of the first violation.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        // Pages at or above the high-water mark are free by construction.
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
                match count.get_mut(p as usize) {
                    Some(c) => *c += 1,
                    None => return Err(format!("seq {} owns unissued page {p}", id.0)),
                }
            }
        }
        let mut on_free = vec![false; self.refcount.len()];
        for &p in &self.free {
            let Some(slot) = on_free.get_mut(p as usize) else {
                return Err(format!("unissued page {p} on the free list"));
            };
            if std::mem::replace(slot, true) {
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
