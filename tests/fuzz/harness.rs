//! The fuzzer's state: construction, the helpers every call uses, the dispatch of one call,
//! and the checks after a sequence.
use super::*;

impl Fuzz {
    pub(super) fn new(g: Geometry) -> Self {
        let cfg = KvPoolConfig {
            num_pages: 0,
            page_size: g.page_size,
            num_kv_heads: g.kv_heads,
            head_dim: D,
            layout: g.layout,
        };
        let caches = (0..2)
            .map(|_| CacheModel {
                cache: PagedKvCache::new_cpu_layers(cfg, PoolSize::Pages(g.num_pages), g.layers)
                    .expect("a small cache"),
                seqs: BTreeMap::new(),
                changes: 0,
            })
            .collect();
        let table = PageTable::new(g.table.0, g.table.1).expect("a table within limits");
        Self {
            g,
            caches,
            steps: vec![],
            table,
            tlens: BTreeMap::new(),
            plans: vec![],
            undo: vec![],
            next: 0,
        }
    }

    pub(super) fn row(&self) -> usize {
        self.g.kv_heads * D
    }

    /// Pick `i < 8` of cache `c`: a live sequence (when there is one), else (and for `i ≥ 8`)
    /// an id no cache ever handed out.
    pub(super) fn pick(&self, c: usize, i: usize) -> SeqId {
        let live: Vec<SeqId> = self.caches[c].seqs.keys().copied().collect();
        pick_of(&live, i)
    }

    pub(super) fn tpick(&self, i: usize) -> SeqId {
        let live: Vec<SeqId> = self.tlens.keys().copied().collect();
        pick_of(&live, i)
    }

    /// Rows with fresh markers for `reqs`, and each token's marker.
    pub(super) fn rows(&mut self, total: usize) -> (Vec<bf16>, Vec<bf16>, Vec<f32>) {
        let row = self.row();
        let marks: Vec<f32> = (0..total).map(|_| marker(&mut self.next)).collect();
        let k = marks
            .iter()
            .flat_map(|&m| std::iter::repeat_n(bf16::from_f32(m), row))
            .collect();
        let v = marks
            .iter()
            .flat_map(|&m| std::iter::repeat_n(bf16::from_f32(-m), row))
            .collect();
        (k, v, marks)
    }

    pub(super) fn verify_cache(&mut self, c: usize) -> Result<(), TestCaseError> {
        let m = &mut self.caches[c];
        m.cache
            .table()
            .check_invariants()
            .map_err(TestCaseError::fail)?;
        for (&id, layers) in &m.seqs {
            check(m.cache.len(id).ok() == Some(layers[0].len()), || {
                format!("cache {c} seq {id:?}: length differs from the model")
            })?;
            for (layer, toks) in layers.iter().enumerate() {
                let (k, v) = m
                    .cache
                    .gather(layer, id)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let row = self.g.kv_heads * D;
                for (t, mark) in toks.iter().enumerate() {
                    if let Some(x) = mark {
                        let ok = k[t * row..(t + 1) * row].iter().all(|e| e.to_f32() == *x)
                            && v[t * row..(t + 1) * row].iter().all(|e| e.to_f32() == -*x);
                        check(ok, || {
                            format!("cache {c} seq {id:?} layer {layer} token {t}: wrong K/V")
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a mutating cache call; on error checks nothing changed.
    pub(super) fn cache_call<T>(
        &mut self,
        c: usize,
        f: impl FnOnce(&mut PagedKvCache<bf16>) -> Result<T, Error>,
    ) -> Result<Option<T>, TestCaseError> {
        let before = snapshot(&mut self.caches[c].cache);
        let r = f(&mut self.caches[c].cache);
        called(&r);
        match r {
            Ok(x) => Ok(Some(x)),
            Err(_) => {
                let after = snapshot(&mut self.caches[c].cache);
                check(before == after, || {
                    format!("a failed call changed cache {c}")
                })?;
                Ok(None)
            }
        }
    }

    pub(super) fn table_call<T>(
        &mut self,
        f: impl FnOnce(&mut PageTable) -> Result<T, Error>,
    ) -> Result<Option<T>, TestCaseError> {
        let before = table_snapshot(&self.table);
        let r = f(&mut self.table);
        called(&r);
        match r {
            Ok(x) => Ok(Some(x)),
            Err(_) => {
                check(table_snapshot(&self.table) == before, || {
                    "a failed call changed the page table".into()
                })?;
                Ok(None)
            }
        }
    }

    /// One call: dispatched by family.
    pub(super) fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Add(..)
            | Op::Begin(..)
            | Op::AppendLayer(..)
            | Op::Append(..)
            | Op::Fork(..)
            | Op::Truncate(..)
            | Op::Free(..)
            | Op::Decode(..)
            | Op::Prefill(..) => self.cache_step(op),
            Op::PlanDecode(..) | Op::PlanPrefill(..) | Op::Schedule(..) => self.plan_step(op),
            _ => self.table_step(op),
        }
    }

    pub(super) fn check_outputs(
        &self,
        ok: bool,
        out: &[bf16],
        lse: &[f32],
    ) -> Result<(), TestCaseError> {
        if ok {
            check(out.iter().all(|x| x.to_f32().is_finite()), || {
                "non-finite output".into()
            })?;
            check(lse.iter().all(|x| !x.is_nan()), || "NaN lse".into())
        } else {
            check(out.iter().all(|x| x.to_f32() == 9.0), || {
                "failed op wrote out".into()
            })?;
            check(lse.iter().all(|&x| x == 7.0), || {
                "failed op wrote lse".into()
            })
        }
    }

    pub(super) fn finish(mut self) -> Result<(), TestCaseError> {
        for c in 0..2 {
            let ids: Vec<SeqId> = self.caches[c].seqs.keys().copied().collect();
            for id in ids {
                let r = self.caches[c].cache.free(id);
                called(&r);
                check(r.is_ok(), || format!("free of live {id:?}"))?;
            }
            let t = self.caches[c].cache.table();
            check(t.free_pages() == t.num_pages(), || {
                format!("cache {c} leaked pages")
            })?;
            t.check_invariants().map_err(TestCaseError::fail)?;
        }
        let ids: Vec<SeqId> = self.tlens.keys().copied().collect();
        for id in ids {
            let r = self.table.free(id);
            called(&r);
            check(r.is_ok(), || "free".into())?;
        }
        check(self.table.free_pages() == self.table.num_pages(), || {
            "table leaked pages".into()
        })?;
        self.table.check_invariants().map_err(TestCaseError::fail)
    }
}
