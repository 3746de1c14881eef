//! CPU state merges (`ferrinfer::cpu::{merge_state, merge_states, merge_state_in_place}`):
//! attention over a split of the keys, merged, equals attention over all keys (checked against
//! the f64 oracle with the harness tolerance table); the empty state is the identity;
//! `merge_state` is commutative (bit for bit).
use ferrinfer::cpu::{
    merge_state, merge_state_in_place, merge_states, single_decode, single_decode_state, KvStrides,
};
use ferrinfer::reference::{attention, Reference};
use ferrinfer::{AttentionOptions, Float16, HeadConfig};
use ferrinfer_harness::{lse_tolerance, random_values, rng, tolerance, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use rand::Rng;

/// A decode problem with contiguous K/V (rounded values and their f64 images).
struct Problem<T> {
    heads: HeadConfig,
    opts: AttentionOptions,
    kv_len: usize,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    qf: Vec<f64>,
    kf: Vec<f64>,
    vf: Vec<f64>,
}

impl<T: Float16> Problem<T> {
    fn new(heads: HeadConfig, opts: AttentionOptions, kv_len: usize, seed: u64) -> Self {
        let mut r = rng(seed);
        let n = kv_len * heads.num_kv_heads * heads.head_dim;
        let (q, qf) = random_values::<T>(&mut r, heads.num_qo_heads * heads.head_dim, 1.0);
        let (k, kf) = random_values::<T>(&mut r, n, 1.0);
        let (v, vf) = random_values::<T>(&mut r, n, 1.0);
        Problem {
            heads,
            opts,
            kv_len,
            q,
            k,
            v,
            qf,
            kf,
            vf,
        }
    }

    /// The f32 attention state (`single_decode_state`) over keys `[begin, end)`: a strided
    /// view starting at row `begin` (no window, so the query position does not matter).
    fn state(&self, begin: usize, end: usize) -> (Vec<f32>, Vec<f32>) {
        let h = &self.heads;
        let s = KvStrides::contiguous(h);
        let off = begin * s.stride_n;
        let mut o = vec![f32::NAN; h.num_qo_heads * h.head_dim];
        let mut lse = vec![f32::NAN; h.num_qo_heads];
        single_decode_state(
            h,
            &self.opts,
            &self.q,
            &self.k[off..],
            s,
            &self.v[off..],
            s,
            end - begin,
            &mut o,
            &mut lse,
        )
        .expect("valid decode");
        (o, lse)
    }

    /// Like [`Problem::state`] but through `single_decode`, whose output is rounded to `T`.
    fn rounded_state(&self, begin: usize, end: usize) -> (Vec<f32>, Vec<f32>) {
        let h = &self.heads;
        let s = KvStrides::contiguous(h);
        let off = begin * s.stride_n;
        let mut o = vec![T::nan(); h.num_qo_heads * h.head_dim];
        let mut lse = vec![f32::NAN; h.num_qo_heads];
        single_decode(
            h,
            &self.opts,
            &self.q,
            &self.k[off..],
            s,
            &self.v[off..],
            s,
            end - begin,
            &mut o,
            Some(&mut lse),
        )
        .expect("valid decode");
        (o.iter().map(|x| x.to_f32()).collect(), lse)
    }

    /// The oracle over all keys.
    fn reference(&self) -> Reference {
        attention(
            &self.qf,
            &self.kf,
            &self.vf,
            &self.heads,
            1,
            self.kv_len,
            &self.opts,
        )
        .expect("valid oracle call")
    }

    /// Compares a merged state with the oracle over all keys.
    fn compare(&self, o: &[f32], lse: &[f32]) -> ErrorStats {
        let r = self.reference();
        let o: Vec<f64> = o.iter().map(|&x| x as f64).collect();
        let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
        ErrorStats::compare(&o, &r.o, Some((&l, &r.lse)))
    }
}

fn opts(sm_scale: Option<f32>, soft_cap: Option<f32>) -> AttentionOptions {
    AttentionOptions {
        sm_scale,
        soft_cap,
        ..AttentionOptions::default()
    }
}

/// Two-way and n-way splits of `[0, kv_len)` merged and compared with the oracle.
fn check_split<T: Float16>(
    heads: HeadConfig,
    o: AttentionOptions,
    kv_len: usize,
    cut: usize,
    chunks: usize,
    seed: u64,
) -> Result<(), String> {
    let p = Problem::<T>::new(heads, o, kv_len, seed);
    let (hq, d) = (heads.num_qo_heads, heads.head_dim);
    let tol = tolerance(T::DTYPE);

    let (oa, la) = p.state(0, cut);
    let (ob, lb) = p.state(cut, kv_len);
    let mut m = vec![f32::NAN; hq * d];
    let mut ml = vec![f32::NAN; hq];
    merge_state(hq, d, &oa, &la, &ob, &lb, &mut m, &mut ml).map_err(|e| e.to_string())?;
    let s = p.compare(&m, &ml);
    if !s.within(tol) {
        return Err(format!("2-way split at {cut}: {s:?}"));
    }

    // In place, the other way round: (b, lb) ⊕= (a, la).
    let (mut ob2, mut lb2) = (ob.clone(), lb.clone());
    merge_state_in_place(hq, d, &mut ob2, &mut lb2, &oa, &la).map_err(|e| e.to_string())?;
    let s = p.compare(&ob2, &lb2);
    if !s.within(tol) {
        return Err(format!("in-place split at {cut}: {s:?}"));
    }

    // n chunks as in split-KV.
    let len = kv_len.div_ceil(chunks).max(1);
    let mut so = Vec::new();
    let mut sl = Vec::new();
    for c in 0..chunks {
        let (b, e) = ((c * len).min(kv_len), ((c + 1) * len).min(kv_len));
        let (o, l) = p.state(b, e);
        so.extend(o);
        sl.extend(l);
    }
    merge_states(chunks, hq, d, &so, &sl, &mut m, &mut ml).map_err(|e| e.to_string())?;
    let s = p.compare(&m, &ml);
    if !s.within(tol) {
        return Err(format!("{chunks}-way split: {s:?}"));
    }

    // Partials rounded to T (single_decode's output) and merged: each partial carries one
    // rounding, so the bound is per element, |o − ref| <= u·Σ_c w_c·|o_c| + f32 noise, with u
    // the unit roundoff of T (cancellation between partials can push the relative error past
    // the single-rounding table, which is why split-KV keeps f32 partials).
    let u = match T::DTYPE {
        ferrinfer::DType::Bf16 => 2f64.powi(-8),
        ferrinfer::DType::F16 => 2f64.powi(-11),
    };
    let (ra, rla) = p.rounded_state(0, cut);
    let (rb, rlb) = p.rounded_state(cut, kv_len);
    merge_state(hq, d, &ra, &rla, &rb, &rlb, &mut m, &mut ml).map_err(|e| e.to_string())?;
    let r = p.reference();
    for h in 0..hq {
        let (la, lb) = (rla[h] as f64, rlb[h] as f64);
        let top = la.max(lb);
        let (wa, wb) = if top == f64::NEG_INFINITY {
            (0.0, 0.0)
        } else {
            let (a, b) = ((la - top).exp2(), (lb - top).exp2());
            (a / (a + b), b / (a + b))
        };
        for e in h * d..(h + 1) * d {
            let mag = wa * (ra[e] as f64).abs() + wb * (rb[e] as f64).abs();
            let bound = (u + 1e-5) * mag + 1e-5;
            let err = (m[e] as f64 - r.o[e]).abs();
            if err.is_nan() || err > bound {
                return Err(format!(
                    "rounded 2-way split at {cut}: o[{e}] = {} vs {} (bound {bound})",
                    m[e], r.o[e]
                ));
            }
        }
        let (l, rl) = (ml[h] as f64, r.lse[h]);
        let lse_ok = if rl.is_finite() {
            (l - rl).abs() <= lse_tolerance(rl)
        } else {
            l == rl
        };
        if !lse_ok {
            return Err(format!(
                "rounded 2-way split at {cut}: lse[{h}] = {l} vs {rl}"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn split_then_merge_equals_whole(
        d in prop::sample::select(vec![1usize, 8, 24, 64, 128, 256]),
        group in 1usize..=8,
        hkv in 1usize..=4,
        kv_len in prop_oneof![0usize..=20, 0usize..=2000],
        cut_frac in 0.0f64..=1.0,
        chunks in 1usize..=12,
        sm_scale in prop::option::of(0.01f32..1.0),
        soft_cap in prop::option::of(5.0f32..50.0),
        use_bf16 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let heads = HeadConfig::new(group * hkv, hkv, d).expect("valid heads");
        let cut = ((kv_len as f64) * cut_frac).round() as usize;
        let o = opts(sm_scale, soft_cap);
        let res = if use_bf16 {
            check_split::<bf16>(heads, o, kv_len, cut, chunks, seed)
        } else {
            check_split::<f16>(heads, o, kv_len, cut, chunks, seed)
        };
        let msg = res.err().unwrap_or_default();
        prop_assert!(msg.is_empty(), "{heads:?} {o:?} kv_len={kv_len}: {msg}");
    }

    #[test]
    fn merge_state_is_commutative(
        heads in 1usize..=6,
        d in 1usize..=40,
        seed in any::<u64>(),
        empty_mask in 0u8..16,
    ) {
        let mut r = rng(seed);
        let mut draw = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|_| r.random_range(-s..=s)).collect()
        };
        let (a, b) = (draw(heads * d, 1.0), draw(heads * d, 1.0));
        let (mut la, lb) = (draw(heads, 40.0), draw(heads, 40.0));
        // Some heads empty in state a.
        for (h, l) in la.iter_mut().enumerate() {
            if empty_mask & (1 << (h % 4)) != 0 {
                *l = f32::NEG_INFINITY;
            }
        }
        let mut o1 = vec![0.0f32; heads * d];
        let mut l1 = vec![0.0f32; heads];
        let mut o2 = o1.clone();
        let mut l2 = l1.clone();
        merge_state(heads, d, &a, &la, &b, &lb, &mut o1, &mut l1).expect("valid merge");
        merge_state(heads, d, &b, &lb, &a, &la, &mut o2, &mut l2).expect("valid merge");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        prop_assert_eq!(bits(&o1), bits(&o2));
        prop_assert_eq!(bits(&l1), bits(&l2));
        prop_assert!(o1.iter().chain(&l1).all(|x| !x.is_nan()));
    }
}

#[test]
fn empty_state_is_the_identity() {
    let heads = HeadConfig::new(4, 2, 64).expect("valid heads");
    let p = Problem::<f16>::new(heads, AttentionOptions::default(), 50, 3);
    let (empty_o, empty_l) = p.state(0, 0);
    assert!(empty_o.iter().all(|&x| x == 0.0));
    assert!(empty_l.iter().all(|&l| l == f32::NEG_INFINITY));
    let (x, lx) = p.state(0, 50);
    let mut o = vec![f32::NAN; 4 * 64];
    let mut l = vec![f32::NAN; 4];
    for (oa, la, ob, lb) in [(&empty_o, &empty_l, &x, &lx), (&x, &lx, &empty_o, &empty_l)] {
        merge_state(4, 64, oa, la, ob, lb, &mut o, &mut l).expect("valid merge");
        assert_eq!(o, x);
        assert_eq!(l, lx);
    }
    // Merging two empty states stays empty; n-ary with empties equals the non-empty state.
    merge_state(
        4, 64, &empty_o, &empty_l, &empty_o, &empty_l, &mut o, &mut l,
    )
    .expect("merge");
    assert!(o.iter().all(|&x| x == 0.0) && l.iter().all(|&x| x == f32::NEG_INFINITY));
    let so: Vec<f32> = [&empty_o, &x, &empty_o]
        .iter()
        .flat_map(|v| v.iter().copied())
        .collect();
    let sl: Vec<f32> = [&empty_l, &lx, &empty_l]
        .iter()
        .flat_map(|v| v.iter().copied())
        .collect();
    merge_states(3, 4, 64, &so, &sl, &mut o, &mut l).expect("valid merge");
    assert_eq!(o, x);
    assert_eq!(l, lx);
}

#[test]
fn fixed_splits_for_both_dtypes() {
    let heads = HeadConfig::new(8, 2, 128).expect("valid heads");
    for (i, &(kv_len, cut)) in [(1, 0), (1, 1), (17, 16), (1000, 500), (1000, 999)]
        .iter()
        .enumerate()
    {
        for o in [opts(None, None), opts(Some(0.2), Some(30.0))] {
            let seed = 100 + i as u64;
            check_split::<f16>(heads, o, kv_len, cut, 5, seed).expect("f16 split");
            check_split::<bf16>(heads, o, kv_len, cut, 5, seed).expect("bf16 split");
        }
    }
}
