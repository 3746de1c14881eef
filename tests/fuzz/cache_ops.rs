//! Calls on the two caches (sequences, append steps, appends, forks, truncates, frees, and
//! the CPU decode/prefill ops over them), checked against the cache model.
use super::*;

impl Fuzz {
    /// A cache call.
    pub(super) fn cache_step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Add(c) => {
                let m = &mut self.caches[*c];
                let id = m.cache.add_sequence();
                CALLS.fetch_add(1, Ordering::Relaxed);
                m.seqs.insert(id, vec![vec![]; self.g.layers]);
            }
            Op::Begin(c, reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.pick(*c, s), n)).collect();
                if let Some(step) = self.cache_call(*c, |x| x.begin_append(&reqs))? {
                    let m = &mut self.caches[*c];
                    for &(id, n) in &reqs {
                        for toks in m.seqs.get_mut(&id).into_iter().flatten() {
                            toks.extend(std::iter::repeat_n(None, n));
                        }
                    }
                    m.changes += 1;
                    self.steps.push(Step {
                        cache: *c,
                        made_at: m.changes,
                        step,
                        ids: reqs,
                    });
                    if self.steps.len() > 8 {
                        self.steps.remove(0);
                    }
                }
            }
            Op::AppendLayer(c, s, layer, short) => {
                if self.steps.is_empty() {
                    return Ok(());
                }
                let si = s % self.steps.len();
                let rows = self.steps[si].step.rows();
                let n = if *short { rows.saturating_sub(1) } else { rows };
                let (k, v, marks) = self.rows(n);
                let st = RowStrides::contiguous(self.g.kv_heads, D);
                let current =
                    self.steps[si].cache == *c && self.steps[si].made_at == self.caches[*c].changes;
                let expect_ok = current && *layer < self.g.layers && n == rows;
                let step = &self.steps[si].step;
                let r = {
                    let cache = &mut self.caches[*c].cache;
                    let before = snapshot(cache);
                    let r =
                        cache.append_layer(*layer, step, Rows::Host(&k), st, Rows::Host(&v), st);
                    called(&r);
                    if r.is_err() {
                        check(before == snapshot(cache), || {
                            "failed append_layer wrote".into()
                        })?;
                    }
                    r
                };
                if !current && r.is_ok() {
                    return Err(TestCaseError::fail(format!(
                        "a stale or foreign step was accepted by cache {c}"
                    )));
                }
                check(expect_ok == r.is_ok(), || {
                    format!("append_layer: expected ok {expect_ok}, got {r:?}")
                })?;
                if r.is_ok() {
                    let mut t = 0;
                    for &(id, n) in &self.steps[si].ids.clone() {
                        let toks = &mut self.caches[*c].seqs.get_mut(&id).expect("live")[*layer];
                        let start = toks.len() - n;
                        for i in 0..n {
                            toks[start + i] = Some(marks[t]);
                            t += 1;
                        }
                    }
                }
            }
            Op::Append(c, reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.pick(*c, s), n)).collect();
                let total = reqs.iter().fold(0usize, |a, r| a.saturating_add(r.1));
                // Rows for at most a pool's worth of tokens: longer requests must fail anyway.
                let (k, v, marks) = self.rows(total.min(64));
                let st = RowStrides::contiguous(self.g.kv_heads, D);
                let ok = self
                    .cache_call(*c, |x| {
                        x.append(&reqs, Rows::Host(&k), st, Rows::Host(&v), st)
                    })?
                    .is_some();
                if ok {
                    check(self.g.layers == 1, || {
                        "append on a multi-layer cache".into()
                    })?;
                    let m = &mut self.caches[*c];
                    let mut t = 0;
                    for &(id, n) in &reqs {
                        let toks = &mut m.seqs.get_mut(&id).expect("live")[0];
                        for _ in 0..n {
                            toks.push(Some(marks[t]));
                            t += 1;
                        }
                    }
                    m.changes += 1;
                }
            }
            Op::Fork(c, s) => {
                let id = self.pick(*c, *s);
                let known = self.caches[*c].seqs.contains_key(&id);
                let r = self.cache_call(*c, |x| x.fork(id))?;
                check(known == r.is_some(), || format!("fork of {id:?}: {r:?}"))?;
                if let Some(child) = r {
                    let m = &mut self.caches[*c];
                    let copy = m.seqs[&id].clone();
                    m.seqs.insert(child, copy);
                    m.changes += 1;
                }
            }
            Op::Truncate(c, s, len) => {
                let id = self.pick(*c, *s);
                let cur = self.caches[*c].seqs.get(&id).map(|l| l[0].len());
                let r = self.cache_call(*c, |x| x.truncate(id, *len))?;
                check(r.is_some() == cur.is_some_and(|cur| *len <= cur), || {
                    format!("truncate {id:?} to {len}")
                })?;
                if r.is_some() {
                    let m = &mut self.caches[*c];
                    for toks in m.seqs.get_mut(&id).into_iter().flatten() {
                        toks.truncate(*len);
                    }
                    m.changes += 1;
                }
            }
            Op::Free(c, s) => {
                let id = self.pick(*c, *s);
                let known = self.caches[*c].seqs.contains_key(&id);
                let r = self.cache_call(*c, |x| x.free(id))?;
                check(known == r.is_some(), || format!("free of {id:?}"))?;
                if r.is_some() {
                    let m = &mut self.caches[*c];
                    m.seqs.remove(&id);
                    m.changes += 1;
                }
            }
            Op::Decode(c, layer, seqs, group, opts) => {
                let ids: Vec<SeqId> = seqs.iter().map(|&s| self.pick(*c, s)).collect();
                let heads = HeadConfig {
                    num_qo_heads: self.g.kv_heads * group,
                    num_kv_heads: self.g.kv_heads,
                    head_dim: D,
                };
                let m = &self.caches[*c];
                let pages = m.cache.batch_pages(&ids);
                called(&pages);
                let (Ok(pages), Ok(pool)) = (pages, m.cache.pool(*layer)) else {
                    return Ok(());
                };
                let n = ids.len() * heads.num_qo_heads * D;
                let q = vec![bf16::from_f32(0.5); n];
                let mut out = vec![bf16::from_f32(9.0); n];
                let mut lse = vec![7.0f32; ids.len() * heads.num_qo_heads];
                let r = cpu::batch_decode(&heads, opts, &q, pool, &pages, &mut out, Some(&mut lse));
                called(&r);
                check(r.is_ok() == opts_valid(opts), || {
                    format!("batch_decode with {opts:?}: {r:?}")
                })?;
                self.check_outputs(r.is_ok(), &out, &lse)?;
            }
            Op::Prefill(c, layer, reqs, opts) => {
                let ids: Vec<SeqId> = reqs.iter().map(|&(s, _)| self.pick(*c, s)).collect();
                let heads = HeadConfig::new(self.g.kv_heads, self.g.kv_heads, D).expect("heads");
                let m = &self.caches[*c];
                let pages = m.cache.batch_pages(&ids);
                called(&pages);
                let (Ok(pages), Ok(pool)) = (pages, m.cache.pool(*layer)) else {
                    return Ok(());
                };
                // Query lengths: the generated ones clamped to what a buffer can hold.
                let mut qo_indptr = vec![0i32];
                let mut fits = true;
                for (&(_, q), id) in reqs.iter().zip(&ids) {
                    let q = q.min(64);
                    let kv = m.seqs.get(id).map_or(0, |l| l[0].len());
                    fits &= q <= kv;
                    qo_indptr.push(qo_indptr.last().copied().unwrap_or(0) + q as i32);
                }
                let rows = *qo_indptr.last().unwrap_or(&0) as usize;
                let n = rows * heads.num_qo_heads * D;
                let q = vec![bf16::from_f32(0.5); n];
                let mut out = vec![bf16::from_f32(9.0); n];
                let mut lse = vec![7.0f32; rows * heads.num_qo_heads];
                let r = cpu::batch_prefill_paged(
                    &heads,
                    opts,
                    &q,
                    &qo_indptr,
                    pool,
                    &pages,
                    &mut out,
                    Some(&mut lse),
                );
                called(&r);
                check(r.is_ok() == (opts_valid(opts) && fits), || {
                    format!("batch_prefill_paged with {opts:?}, fits {fits}: {r:?}")
                })?;
                self.check_outputs(r.is_ok(), &out, &lse)?;
            }
            _ => unreachable!("not a cache op"),
        }
        Ok(())
    }
}
