//! CPU backend decode (`ferrinfer::cpu::single_decode`) against the f64 oracle
//! (`ferrinfer::reference::attention`), with the harness tolerance table.
//!
//! Property test over head dims (the GPU's 64/128/256 and odd CPU-only sizes), GQA groups,
//! KV lengths (edge lengths and random up to 3000), f16/bf16, options (sm_scale, soft-cap,
//! sliding window) and K/V layouts (contiguous, padded NHD, head-major HND). Outputs are poisoned
//! with NaN before the call, strided K/V padding is filled with NaN, and the output/lse slices are
//! longer than needed: any unwritten element, any read of padding, and any write past the rows
//! shows up as NaN or as a changed tail. Plus one test per kind of bad input: a typed error and
//! `out`/`lse` bit-identical to before.
use ferrinfer::cpu::{single_decode, single_decode_contiguous, KvStrides};
use ferrinfer::reference::attention;
use ferrinfer::{AttentionOptions, Error, Float16, HeadConfig};
use ferrinfer_harness::{random_values, rng, to_f64, tolerance, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;

/// Extra output elements (and lse entries) past the required ones; must stay poisoned.
const TAIL: usize = 3;

/// How K or V is laid out in its buffer.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// `[kv_len, Hkv, D]`, no gaps.
    Contiguous,
    /// NHD with gaps: `stride_h = D + pad_h`, `stride_n = Hkv·stride_h + pad_n`.
    Padded { pad_h: usize, pad_n: usize },
    /// HND (`[Hkv, kv_len, D]`) with gaps: `stride_n = D + pad`,
    /// `stride_h = kv_len·stride_n + pad`.
    HeadMajor { pad: usize },
}

impl Layout {
    fn strides(self, h: &HeadConfig, kv_len: usize) -> KvStrides {
        let d = h.head_dim;
        match self {
            Layout::Contiguous => KvStrides::contiguous(h),
            Layout::Padded { pad_h, pad_n } => KvStrides {
                stride_n: h.num_kv_heads * (d + pad_h) + pad_n,
                stride_h: d + pad_h,
            },
            Layout::HeadMajor { pad } => KvStrides {
                stride_n: d + pad,
                stride_h: kv_len * (d + pad) + pad,
            },
        }
    }
}

/// Scatters contiguous `[kv_len, Hkv, D]` values into a NaN-filled strided buffer.
fn scatter<T: Float16>(src: &[T], h: &HeadConfig, kv_len: usize, s: KvStrides) -> Vec<T> {
    let d = h.head_dim;
    let need = s.required_len(h, kv_len).expect("extent fits usize");
    let mut buf = vec![T::nan(); need];
    for t in 0..kv_len {
        for kh in 0..h.num_kv_heads {
            let dst = t * s.stride_n + kh * s.stride_h;
            buf[dst..dst + d].copy_from_slice(&src[(t * h.num_kv_heads + kh) * d..][..d]);
        }
    }
    buf
}

#[derive(Clone, Debug)]
struct Case {
    head_dim: usize,
    group: usize,
    num_kv_heads: usize,
    kv_len: usize,
    bf16: bool,
    opts: AttentionOptions,
    k_layout: Layout,
    v_layout: Layout,
    seed: u64,
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        2 => Just(Layout::Contiguous),
        2 => (0usize..=40, 0usize..=70).prop_map(|(pad_h, pad_n)| Layout::Padded { pad_h, pad_n }),
        1 => (0usize..=16).prop_map(|pad| Layout::HeadMajor { pad }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let head_dim = prop_oneof![
        3 => prop::sample::select(vec![64usize, 128, 256]),
        2 => prop::sample::select(vec![1usize, 3, 8, 24, 40, 72]),
    ];
    let kv_len = prop_oneof![
        1 => Just(0usize),
        1 => Just(1usize),
        1 => Just(7usize),
        1 => Just(16usize),
        1 => Just(17usize),
        6 => 0usize..=3000,
    ];
    let opts = (
        prop::option::of(0.01f32..1.0),
        prop::option::of(5.0f32..50.0),
        prop::option::of(prop_oneof![0usize..8, 0usize..3500]),
    )
        .prop_map(|(sm_scale, soft_cap, window_left)| AttentionOptions {
            sm_scale,
            soft_cap,
            window_left,
            causal: false,
        });
    (
        head_dim,
        1usize..=8,
        1usize..=4,
        kv_len,
        any::<bool>(),
        opts,
        layout(),
        layout(),
        any::<u64>(),
    )
        .prop_map(
            |(head_dim, group, num_kv_heads, kv_len, bf16, opts, k_layout, v_layout, seed)| Case {
                head_dim,
                group,
                num_kv_heads,
                kv_len,
                bf16,
                opts,
                k_layout,
                v_layout,
                seed,
            },
        )
}

/// Runs one case; `Err` describes the failure.
fn check<T: Float16>(c: &Case) -> Result<ErrorStats, String> {
    let h = HeadConfig::new(c.group * c.num_kv_heads, c.num_kv_heads, c.head_dim)
        .map_err(|e| e.to_string())?;
    let (hq, d, n) = (h.num_qo_heads, h.head_dim, c.kv_len);
    let mut r = rng(c.seed);
    let (q, qf) = random_values::<T>(&mut r, hq * d, 1.0);
    let (k, kf) = random_values::<T>(&mut r, n * h.num_kv_heads * d, 1.0);
    let (v, vf) = random_values::<T>(&mut r, n * h.num_kv_heads * d, 1.0);
    let (ks, vs) = (c.k_layout.strides(&h, n), c.v_layout.strides(&h, n));
    let (kb, vb) = (scatter(&k, &h, n, ks), scatter(&v, &h, n, vs));

    let mut out = vec![T::nan(); hq * d + TAIL];
    let mut lse = vec![f32::NAN; hq + TAIL];
    single_decode(
        &h,
        &c.opts,
        &q,
        &kb,
        ks,
        &vb,
        vs,
        n,
        &mut out,
        Some(&mut lse),
    )
    .map_err(|e| format!("cpu decode failed: {e}"))?;
    let reference = attention(&qf, &kf, &vf, &h, 1, n, &c.opts).map_err(|e| e.to_string())?;

    if !out[hq * d..].iter().all(|x| x.to_f32().is_nan()) || !lse[hq..].iter().all(|x| x.is_nan()) {
        return Err("wrote past the output rows / lse entries".into());
    }
    let o = to_f64(&out[..hq * d]);
    let l: Vec<f64> = lse[..hq].iter().map(|&x| x as f64).collect();
    let stats = ErrorStats::compare(&o, &reference.o, Some((&l, &reference.lse)));
    if stats.has_nan {
        return Err(format!("NaN in output (unwritten or computed): {stats:?}"));
    }
    if !stats.within(tolerance(T::DTYPE)) {
        return Err(format!(
            "outside {:?} tolerance {:?}: {stats:?}",
            T::DTYPE,
            tolerance(T::DTYPE)
        ));
    }
    Ok(stats)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cpu_decode_matches_oracle(c in case()) {
        let res = if c.bf16 { check::<bf16>(&c) } else { check::<f16>(&c) };
        prop_assert!(res.is_ok(), "{c:?}: {}", res.err().unwrap_or_default());
    }
}

/// Deterministic sweep of the edge lengths for both dtypes and the GPU head dims, so those
/// cases run every time regardless of what the property test draws.
#[test]
fn edge_lengths_and_windows() {
    let mut worst = ErrorStats::default();
    let mut seed = 1u64;
    for &head_dim in &[64usize, 128, 256, 8, 24] {
        for &kv_len in &[0usize, 1, 7, 16, 17, 129] {
            for window_left in [None, Some(0), Some(5), Some(16), Some(10_000)] {
                for bf16 in [false, true] {
                    seed += 1;
                    let c = Case {
                        head_dim,
                        group: 4,
                        num_kv_heads: 2,
                        kv_len,
                        bf16,
                        opts: AttentionOptions {
                            window_left,
                            ..AttentionOptions::default()
                        },
                        k_layout: Layout::Padded {
                            pad_h: 8,
                            pad_n: 16,
                        },
                        v_layout: Layout::Contiguous,
                        seed,
                    };
                    let s = if bf16 {
                        check::<bf16>(&c)
                    } else {
                        check::<f16>(&c)
                    };
                    match s {
                        Ok(s) => worst = worst.worst(s),
                        Err(e) => panic!("{c:?}: {e}"),
                    }
                }
            }
        }
    }
    println!("worst: {worst:?}");
}

/// Inputs of the error tests: a valid call that each test breaks in one way.
struct Call {
    heads: HeadConfig,
    opts: AttentionOptions,
    q: Vec<f16>,
    k: Vec<f16>,
    v: Vec<f16>,
    kv_len: usize,
    out_len: usize,
    lse_len: Option<usize>,
}

impl Call {
    fn valid() -> Call {
        let heads = HeadConfig::new(8, 2, 64).expect("valid heads");
        let kv_len = 33;
        let mut r = rng(7);
        let (q, _) = random_values::<f16>(&mut r, 8 * 64, 1.0);
        let (k, _) = random_values::<f16>(&mut r, kv_len * 2 * 64, 1.0);
        let (v, _) = random_values::<f16>(&mut r, kv_len * 2 * 64, 1.0);
        Call {
            heads,
            opts: AttentionOptions::default(),
            q,
            k,
            v,
            kv_len,
            out_len: 8 * 64,
            lse_len: Some(8),
        }
    }

    /// Runs the call on poisoned outputs; returns the result and whether `out` and `lse` kept
    /// their exact bits.
    fn run(&self) -> (ferrinfer::Result<()>, bool) {
        let mut out: Vec<f16> = (0..self.out_len)
            .map(|i| f16::from_bits(0x7e00 | (i as u16 & 0xff)))
            .collect();
        let mut lse: Option<Vec<f32>> = self.lse_len.map(|n| vec![f32::from_bits(0x7fc0_1234); n]);
        let out0: Vec<u16> = out.iter().map(|x| x.to_bits()).collect();
        let lse0 = lse.clone();
        let res = single_decode_contiguous(
            &self.heads,
            &self.opts,
            &self.q,
            &self.k,
            &self.v,
            self.kv_len,
            &mut out,
            lse.as_deref_mut(),
        );
        let same_out = out.iter().map(|x| x.to_bits()).eq(out0.iter().copied());
        let same_lse = match (&lse, &lse0) {
            (Some(a), Some(b)) => a
                .iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            _ => true,
        };
        (res, same_out && same_lse)
    }
}

/// Asserts the call fails with an error matching `ok` and writes nothing.
fn rejects(c: &Call, what: &str, ok: impl Fn(&Error) -> bool) {
    let (res, untouched) = c.run();
    match res {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => assert!(ok(&e), "{what}: unexpected error {e:?}"),
    }
    assert!(untouched, "{what}: out/lse modified on error");
}

fn is_shape(what: &'static str) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::Shape { what: w, .. } if *w == what)
}

fn is_invalid(what: &'static str) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::InvalidArgument { what: w, .. } if *w == what)
}

#[test]
fn valid_call_succeeds_and_writes() {
    let (res, untouched) = Call::valid().run();
    assert!(res.is_ok(), "{res:?}");
    assert!(!untouched);
}

#[test]
fn q_too_short() {
    let mut c = Call::valid();
    c.q.pop();
    rejects(&c, "q too short", is_shape("q elements"));
}

#[test]
fn out_too_short() {
    let mut c = Call::valid();
    c.out_len -= 1;
    rejects(&c, "out too short", is_shape("out elements"));
}

#[test]
fn lse_too_short() {
    let mut c = Call::valid();
    c.lse_len = Some(7);
    rejects(&c, "lse too short", is_shape("lse elements"));
}

#[test]
fn k_too_short_for_kv_len() {
    let mut c = Call::valid();
    c.k.pop();
    rejects(&c, "k too short", is_shape("k elements"));
    let mut c = Call::valid();
    c.kv_len += 1;
    rejects(&c, "kv_len past k", is_shape("k elements"));
}

#[test]
fn v_too_short_for_kv_len() {
    let mut c = Call::valid();
    c.v.truncate(c.v.len() - 64);
    rejects(&c, "v too short", is_shape("v elements"));
}

#[test]
fn qo_heads_not_a_multiple_of_kv_heads() {
    let mut c = Call::valid();
    c.heads.num_qo_heads = 7;
    rejects(&c, "7 qo heads on 2 kv heads", is_invalid("heads"));
    let mut c = Call::valid();
    c.heads.num_kv_heads = 0;
    rejects(&c, "0 kv heads", is_invalid("heads"));
}

#[test]
fn zero_head_dim() {
    let mut c = Call::valid();
    c.heads.head_dim = 0;
    rejects(&c, "head_dim 0", is_invalid("head_dim"));
}

#[test]
fn soft_cap_not_positive() {
    for cap in [0.0f32, -0.0, -3.0, f32::NAN, f32::INFINITY] {
        let mut c = Call::valid();
        c.opts.soft_cap = Some(cap);
        rejects(&c, &format!("soft_cap {cap}"), is_invalid("soft_cap"));
    }
}

#[test]
fn sm_scale_not_finite() {
    for s in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut c = Call::valid();
        c.opts.sm_scale = Some(s);
        rejects(&c, &format!("sm_scale {s}"), is_invalid("sm_scale"));
    }
}

#[test]
fn kv_len_past_the_gpu_limit() {
    let mut c = Call::valid();
    c.kv_len = i32::MAX as usize + 1;
    rejects(&c, "kv_len 2^31", is_invalid("kv_len"));
}

#[test]
fn extent_overflow() {
    let h = HeadConfig::new(1, 1, 8).expect("valid heads");
    let s = KvStrides {
        stride_n: usize::MAX / 4,
        stride_h: 8,
    };
    let q = vec![f16::ONE; 8];
    let mut out = vec![f16::NAN; 8];
    let res = single_decode(
        &h,
        &AttentionOptions::default(),
        &q,
        &q,
        s,
        &q,
        s,
        100,
        &mut out,
        None,
    );
    assert!(matches!(res, Err(Error::Overflow { .. })), "{res:?}");
    assert!(out.iter().all(|x| x.is_nan()));
}

/// A KV head's query group is computed together (each K/V row converted once for the group),
/// but every head's arithmetic is its own: decoding a group-`g` problem gives, bit for bit,
/// what decoding each of its query heads alone (group 1 over the same K/V) gives, output and
/// lse, with and without a window and soft-cap.
#[test]
fn grouped_heads_equal_heads_alone() {
    let strategy = (
        prop::sample::select(vec![64usize, 128]),
        prop::sample::select(vec![2usize, 3, 8, 16]),
        1usize..700,
        prop::option::of(0usize..300),
        prop::option::of(5.0f32..40.0),
        any::<u64>(),
    );
    proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24))
        .run(&strategy, |(d, g, kv_len, win, cap, seed)| {
            let h = HeadConfig::new(g, 1, d).unwrap();
            let one = HeadConfig::new(1, 1, d).unwrap();
            let opts = AttentionOptions {
                window_left: win,
                soft_cap: cap,
                ..Default::default()
            };
            let mut r = rng(seed);
            let (q, _) = random_values::<bf16>(&mut r, g * d, 2.0);
            let (k, _) = random_values::<bf16>(&mut r, kv_len * d, 2.0);
            let (v, _) = random_values::<bf16>(&mut r, kv_len * d, 1.0);
            let (mut out, mut lse) = (vec![bf16::NAN; g * d], vec![f32::NAN; g]);
            single_decode_contiguous(&h, &opts, &q, &k, &v, kv_len, &mut out, Some(&mut lse))
                .unwrap();
            for j in 0..g {
                let (mut o1, mut l1) = (vec![bf16::NAN; d], [f32::NAN]);
                let qj = &q[j * d..(j + 1) * d];
                single_decode_contiguous(&one, &opts, qj, &k, &v, kv_len, &mut o1, Some(&mut l1))
                    .unwrap();
                let same = o1
                    .iter()
                    .zip(&out[j * d..(j + 1) * d])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(
                    same && l1[0].to_bits() == lse[j].to_bits(),
                    "head {j} of {g}"
                );
            }
            Ok(())
        })
        .unwrap();
}
