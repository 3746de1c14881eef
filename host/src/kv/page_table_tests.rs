//! Unit tests of the page table (`page_table.rs`).
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
    assert_eq!(b.kv_len(0, 4).unwrap(), 5);
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
    assert_eq!(p.pages.kv_len(0, 4).unwrap(), 5);
    assert_eq!(p.pages.kv_len(1, 4).unwrap(), 3);
    assert!(t.plan_append(&[(a, 1), (a, 1)]).is_err());
}

#[test]
fn rollback_restores_the_tables() {
    let mut t = PageTable::new(16, 4).unwrap();
    let a = t.add_sequence();
    t.reserve(a, 6).unwrap();
    let c = t.fork(a).unwrap();
    let refcounts = |t: &PageTable| (0..16).map(|p| t.refcount(p)).collect::<Vec<_>>();
    let before = (t.free_pages(), refcounts(&t), t.seqs.clone());
    // Writes into the shared partial page (copy-on-write) and allocates more pages.
    let p = t.plan_append(&[(c, 7), (a, 1)]).unwrap();
    assert!(!p.copies.is_empty());
    t.rollback(&p).unwrap();
    t.check_invariants().unwrap();
    assert_eq!(before.1, refcounts(&t));
    assert_eq!(before.2, t.seqs);
    assert_eq!(before.0, t.free_pages());
}
