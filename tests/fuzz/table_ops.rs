//! Calls on the standalone page table (reserve, plan, rollback, fork, truncate, free) and
//! on the planners with raw, possibly absurd, problems.
use super::*;

impl Fuzz {
    /// A page-table call.
    pub(super) fn table_step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::TAdd => {
                let id = self.table.add_sequence();
                CALLS.fetch_add(1, Ordering::Relaxed);
                self.tlens.insert(id, 0);
                // Adding a sequence changes no page list: plans stay current, and the states
                // their rollbacks return to now hold the new, empty sequence too.
                for (_, lens, state) in &mut self.undo {
                    lens.insert(id, 0);
                    state.1.push((id, 0, vec![], vec![]));
                }
            }
            Op::TReserve(reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.tpick(s), n)).collect();
                // Differential: the same reserves one at a time, on a clone.
                let mut one = self.table.clone();
                let singly = reqs.iter().all(|&(id, n)| one.reserve(id, n).is_ok());
                let distinct = reqs
                    .iter()
                    .map(|r| r.0)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == reqs.len();
                let r = self.table_call(|t| t.reserve_many(&reqs))?;
                if singly && distinct {
                    check(r.is_some(), || {
                        format!("reserve_many {reqs:?} failed, one by one not")
                    })?;
                    for &(id, _) in &reqs {
                        check(self.table.pages(id).ok() == one.pages(id).ok(), || {
                            format!("reserve_many {reqs:?}: pages differ from one by one")
                        })?;
                    }
                }
                if r.is_some() {
                    for &(id, n) in &reqs {
                        *self.tlens.get_mut(&id).expect("live") += n;
                    }
                    self.undo.clear();
                }
            }
            Op::TPlan(reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.tpick(s), n)).collect();
                let before = (self.tlens.clone(), table_snapshot(&self.table));
                if let Some(plan) = self.table_call(|t| t.plan_append(&reqs))? {
                    for &(id, n) in &reqs {
                        *self.tlens.get_mut(&id).expect("live") += n;
                    }
                    self.plans.push(plan.clone());
                    if self.plans.len() > 6 {
                        self.plans.remove(0);
                    }
                    self.undo.push((plan, before.0, before.1));
                }
            }
            Op::TRollback(i, foreign) => {
                let plan = if *foreign {
                    match self.steps.get(*i) {
                        Some(s) => s.step.plan().clone(),
                        None => Default::default(),
                    }
                } else {
                    match self.plans.get(*i) {
                        Some(p) => p.clone(),
                        None => return Ok(()),
                    }
                };
                let top = self.undo.last().is_some_and(|(p, _, _)| *p == plan) && !*foreign;
                let r = self.table_call(|t| t.rollback(&plan))?;
                check(r.is_some() == top, || {
                    format!("rollback: expected ok {top}, got {r:?}")
                })?;
                if r.is_some() {
                    let (_, lens, state) = self.undo.pop().expect("top");
                    check(table_snapshot(&self.table) == state, || {
                        "rollback did not restore the table".into()
                    })?;
                    self.tlens = lens;
                }
            }
            Op::TFork(s) => {
                let id = self.tpick(*s);
                let r = self.table_call(|t| t.fork(id))?;
                check(r.is_some() == self.tlens.contains_key(&id), || {
                    "fork".into()
                })?;
                if let Some(child) = r {
                    self.tlens.insert(child, self.tlens[&id]);
                    self.undo.clear();
                }
            }
            Op::TForkStep(s, a, b) => {
                let parent = self.tpick(*s);
                self.step(&Op::TFork(*s))?;
                if let Some(&child) = self.tlens.keys().last().filter(|&&c| c != parent) {
                    let (ip, ic) = self.tlens.keys().fold((0, 0), |(ip, ic), &k| {
                        (ip + (k < parent) as usize, ic + (k < child) as usize)
                    });
                    self.step(&Op::TReserve(vec![(ip, *a), (ic, *b)]))?;
                }
            }
            Op::TTruncate(s, len) => {
                let id = self.tpick(*s);
                let ok = self.tlens.get(&id).is_some_and(|&l| *len <= l);
                let r = self.table_call(|t| t.truncate(id, *len))?;
                check(r.is_some() == ok, || "truncate".into())?;
                if r.is_some() {
                    self.tlens.insert(id, *len);
                    self.undo.clear();
                }
            }
            Op::TFree(s) => {
                let id = self.tpick(*s);
                let r = self.table_call(|t| t.free(id))?;
                check(r.is_some() == self.tlens.contains_key(&id), || {
                    "free".into()
                })?;
                if r.is_some() {
                    self.tlens.remove(&id);
                    self.undo.clear();
                }
            }
            _ => unreachable!("not a table op"),
        }
        Ok(())
    }

    /// A planner call.
    pub(super) fn plan_step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::PlanDecode(lens, heads, ctas, fixed, align) => {
                let r = plan_decode(&DecodeProblem {
                    kv_lens: lens,
                    num_kv_heads: *heads,
                    max_ctas: *ctas,
                    min_chunk: 16,
                    chunk_align: *align,
                    fixed_chunk: *fixed,
                    graph_items: None,
                });
                called(&r);
                if let Ok(p) = r {
                    check(p.num_items() <= MAX_PLAN_ENTRIES, || {
                        "plan too large".into()
                    })?;
                    check(p.merge_indptr.len() == lens.len() + 1, || {
                        "merge_indptr".into()
                    })?;
                }
            }
            Op::PlanPrefill(reqs, tile, heads, ctas, opts) => {
                let (qo, kv): (Vec<usize>, Vec<usize>) = reqs.iter().copied().unzip();
                let r = plan_prefill(&PrefillProblem {
                    qo_lens: &qo,
                    kv_lens: &kv,
                    tile_tokens: *tile,
                    causal: opts.causal,
                    window_left: opts.window_left,
                    num_kv_heads: *heads,
                    max_ctas: *ctas,
                    min_chunk: 16,
                    chunk_align: 16,
                    fixed_chunk: None,
                    max_items: None,
                    max_slots: None,
                });
                called(&r);
                if let Ok(p) = r {
                    check(p.items.len() <= MAX_PLAN_ENTRIES, || {
                        "plan too large".into()
                    })?;
                    let r = schedule_units(&p.items, (*heads).clamp(1, 8), 132, 128);
                    called(&r);
                }
            }
            Op::Schedule(n, heads, ctas) => {
                let items = vec![
                    ferrinfer::kernels_abi::abi::PrefillItem {
                        request: 0,
                        t0: 0,
                        kv_begin: 0,
                        kv_end: 300,
                        part: u32::MAX,
                        chunk: 0,
                        nchunks: 1,
                        pad: 0,
                    };
                    n % 64
                ];
                let r = schedule_units(&items, *heads, *ctas, 128);
                called(&r);
                if let Ok(s) = r {
                    check(s.units.len() == items.len() * heads, || "units".into())?;
                }
            }
            _ => unreachable!("not a planner op"),
        }
        Ok(())
    }
}
