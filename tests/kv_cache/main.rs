//! The KV-cache engine: a proptest state machine over add/append/fork/truncate/free against a
//! plain model (`Vec` of rows per sequence), on the CPU pool always and on the GPU pool when
//! present; GPU append vs the CPU backend bit-exact; bad input as typed errors with unchanged
//! state.
use std::collections::BTreeMap;

use ferrinfer::kv::{
    AppendMeta, BatchPages, KvLayout, KvPool, KvPoolConfig, PagedKvCache, PoolSize, RowStrides,
    Rows, SeqId,
};
use ferrinfer::{Error, Gpu};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, rng};
use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::Rng;

const HEADS: usize = 2;
const D: usize = 64;
const ROW: usize = HEADS * D;

#[derive(Clone, Debug)]
enum Op {
    Add,
    Append(Vec<(usize, usize)>),
    Fork(usize),
    Truncate(usize, usize),
    Free(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Add),
        4 => prop::collection::vec((0usize..8, 0usize..40), 1..4).prop_map(Op::Append),
        1 => (0usize..8).prop_map(Op::Fork),
        1 => (0usize..8, 0usize..100).prop_map(|(s, p)| Op::Truncate(s, p)),
        1 => (0usize..8).prop_map(Op::Free),
    ]
}

/// Where the cache lives, and how rows get there.
enum Where<'a> {
    Cpu,
    Gpu(&'a Gpu),
}

struct Machine {
    cache: PagedKvCache<bf16>,
    model: BTreeMap<SeqId, (Vec<bf16>, Vec<bf16>)>,
    next_val: u32,
}

fn fresh_rows(next: &mut u32, n: usize) -> Vec<bf16> {
    (0..n * ROW)
        .map(|_| {
            *next = next.wrapping_add(1);
            // Distinct, non-zero, exactly representable values.
            bf16::from_f32(
                ((*next % 251) as f32 + 1.0) * if (*next).is_multiple_of(2) { 1.0 } else { -1.0 },
            )
        })
        .collect()
}

impl Machine {
    fn live(&self) -> Vec<SeqId> {
        self.model.keys().copied().collect()
    }

    fn pick(&self, i: usize) -> Option<SeqId> {
        let l = self.live();
        (!l.is_empty()).then(|| l[i % l.len()])
    }

    fn step(&mut self, op: &Op, w: &Where) {
        match op {
            Op::Add => {
                let id = self.cache.add_sequence();
                self.model.insert(id, (vec![], vec![]));
            }
            Op::Append(list) => {
                let mut reqs: Vec<(SeqId, usize)> = Vec::new();
                for &(i, n) in list {
                    if let Some(id) = self.pick(i) {
                        if !reqs.iter().any(|r| r.0 == id) {
                            reqs.push((id, n));
                        }
                    }
                }
                let total: usize = reqs.iter().map(|r| r.1).sum();
                let k = fresh_rows(&mut self.next_val, total);
                let v = fresh_rows(&mut self.next_val, total);
                let s = RowStrides::contiguous(HEADS, D);
                let before = self.snapshot();
                let r = match w {
                    Where::Cpu => self
                        .cache
                        .append(&reqs, Rows::Host(&k), s, Rows::Host(&v), s),
                    Where::Gpu(g) => {
                        let kd = g
                            .upload(&if k.is_empty() {
                                vec![bf16::ONE; 8]
                            } else {
                                k.clone()
                            })
                            .unwrap();
                        let vd = g
                            .upload(&if v.is_empty() {
                                vec![bf16::ONE; 8]
                            } else {
                                v.clone()
                            })
                            .unwrap();
                        self.cache
                            .append(&reqs, Rows::Device(&kd), s, Rows::Device(&vd), s)
                    }
                };
                match r {
                    Ok(()) => {
                        let mut off = 0;
                        for (id, n) in reqs {
                            let m = self.model.get_mut(&id).unwrap();
                            m.0.extend_from_slice(&k[off * ROW..(off + n) * ROW]);
                            m.1.extend_from_slice(&v[off * ROW..(off + n) * ROW]);
                            off += n;
                        }
                    }
                    Err(Error::OutOfPages { .. }) => {
                        assert_eq!(before, self.snapshot(), "failed append changed the tables")
                    }
                    Err(e) => panic!("unexpected append error: {e}"),
                }
            }
            Op::Fork(i) => {
                if let Some(p) = self.pick(*i) {
                    let c = self.cache.fork(p).unwrap();
                    let m = self.model[&p].clone();
                    self.model.insert(c, m);
                }
            }
            Op::Truncate(i, pct) => {
                if let Some(id) = self.pick(*i) {
                    let len = self.cache.len(id).unwrap() * pct / 100;
                    self.cache.truncate(id, len).unwrap();
                    let m = self.model.get_mut(&id).unwrap();
                    m.0.truncate(len * ROW);
                    m.1.truncate(len * ROW);
                }
            }
            Op::Free(i) => {
                if let Some(id) = self.pick(*i) {
                    self.cache.free(id).unwrap();
                    self.model.remove(&id);
                }
            }
        }
    }

    fn snapshot(&self) -> (Vec<BatchPages>, usize) {
        let ids = self.live();
        (
            ids.iter()
                .map(|&i| self.cache.batch_pages(&[i]).unwrap())
                .collect(),
            self.cache.table().free_pages(),
        )
    }

    fn check(&mut self) {
        let t = self.cache.table();
        t.check_invariants().unwrap();
        // free + used = total
        let mut used = std::collections::BTreeSet::new();
        for id in self.live() {
            used.extend(t.pages(id).unwrap().iter().copied());
        }
        assert_eq!(used.len() + t.free_pages(), t.num_pages());
        for id in self.live() {
            let (k, v) = self.cache.gather(0, id).unwrap();
            let m = &self.model[&id];
            assert!(
                k == m.0 && v == m.1,
                "gathered KV of {id:?} differs from the model"
            );
        }
    }
}

fn run_machine(w: Where, page_size: usize, layout: KvLayout, num_pages: usize, ops: &[Op]) {
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size,
        num_kv_heads: HEADS,
        head_dim: D,
        layout,
    };
    let cache = match w {
        Where::Cpu => PagedKvCache::new_cpu(cfg, PoolSize::Pages(num_pages)).unwrap(),
        Where::Gpu(g) => PagedKvCache::new_gpu(g, cfg, PoolSize::Pages(num_pages)).unwrap(),
    };
    let mut m = Machine {
        cache,
        model: BTreeMap::new(),
        next_val: 0,
    };
    for op in ops {
        m.step(op, &w);
        m.check();
    }
}

fn arb_machine() -> impl Strategy<Value = (usize, bool, usize, Vec<Op>)> {
    (
        prop::sample::select(vec![1usize, 8, 16, 32, 64]),
        any::<bool>(),
        4usize..40,
        prop::collection::vec(arb_op(), 1..40),
    )
}

fn layout(hnd: bool) -> KvLayout {
    if hnd {
        KvLayout::Hnd
    } else {
        KvLayout::Nhd
    }
}

#[test]
fn state_machine_cpu() {
    let mut runner = TestRunner::new(ProptestConfig::with_cases(proptest_cases(128)));
    runner
        .run(&arb_machine(), |(p, hnd, pages, ops)| {
            run_machine(Where::Cpu, p, layout(hnd), pages, &ops);
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn state_machine_gpu() {
    let Some(gpu) = gpu_or_skip("state_machine_gpu") else {
        return;
    };
    let mut runner = TestRunner::new(ProptestConfig::with_cases(proptest_cases(48)));
    runner
        .run(&arb_machine(), |(p, hnd, pages, ops)| {
            run_machine(Where::Gpu(&gpu), p, layout(hnd), pages, &ops);
            Ok(())
        })
        .unwrap();
    println!("state machine on the GPU pool: 48 cases passed");
}

/// The geometry most tests here use: NHD pages of 16 rows, `HEADS` heads of `D`.
fn nhd16() -> KvPoolConfig {
    KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: HEADS,
        head_dim: D,
        layout: KvLayout::Nhd,
    }
}

/// The raw pool of a cache, for the hand-made-metadata tests.
fn raw_pool(c: &mut PagedKvCache<bf16>) -> &mut KvPool<bf16> {
    c.pool_mut(0).unwrap()
}

mod append;
mod bad_input;
