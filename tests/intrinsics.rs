//! The intrinsics layer (`kernels-gpu/src/arch`) on the GPU against its CPU meaning: one test
//! per self-test kernel (`ferrinfer::selftest`), each comparing every output word with a value
//! computed here. Fragment layouts of `ldmatrix`/`mma` come from the host model
//! `ferrinfer::selftest::frag` (unit-tested against the PTX ISA formulas in the device crate).
//!
//! Every kernel runs twice, with the output buffer pre-filled with two different poison words
//! (one a NaN pattern, one a finite f32): a word the kernel fails to write reads back as the
//! poison, which cannot match the expected value in both runs. Inputs are random (seeded), never
//! all zeros.
//!
//! Tolerances of the approximate instructions (CUDA Programming Guide / PTX ISA bounds, plus a
//! margin because the references here are the correctly rounded f32 results of f64 functions):
//! `ex2.approx` 3 ulp (documented 2), `lg2.approx` |err| ≤ 2^-21 for x in [0.5, 2] (documented
//! 2^-22) and 3 ulp elsewhere (documented 2), `rcp.approx` 2 ulp (documented 1), `tanh.approx`
//! relative 2^-10.5 (documented about 2^-11). Everything else is exact.
use ferrinfer::selftest::{self, frag};
use ferrinfer::DType;
use ferrinfer_harness::{gpu_or_skip, rng};
use half::{bf16, f16};
use rand::Rng;

/// The two poison words: a NaN pattern and a finite f32 (about 6.2e18).
const POISONS: [u32; 2] = [0xFFFF_FFFF, 0x5EAD_BEEF];

/// Runs `f` once per poison word.
fn with_poisons<T>(mut f: impl FnMut(u32) -> ferrinfer::Result<Vec<T>>) -> Vec<Vec<T>> {
    POISONS
        .iter()
        .map(|&p| f(p).unwrap_or_else(|e| panic!("launch failed (poison {p:#x}): {e}")))
        .collect()
}

/// Asserts `got == want` word for word, naming the first mismatches by `describe(index)`.
fn assert_words(test: &str, got: &[u32], want: &[u32], describe: impl Fn(usize) -> String) {
    assert_eq!(got.len(), want.len(), "{test}: output length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if !bad.is_empty() {
        let lines: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "  [{i}] {}: got {:#010x}, want {:#010x}",
                    describe(i),
                    got[i],
                    want[i]
                )
            })
            .collect();
        panic!(
            "{test}: {} of {} words differ:\n{}",
            bad.len(),
            got.len(),
            lines.join("\n")
        );
    }
}

fn random_words(seed: u64, n: usize) -> Vec<u32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random::<u32>()).collect()
}

/// Distance in units in the last place between two finite f32 of the same sign (or zeros).
fn ulp_dist(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn add_one() {
    let Some(gpu) = gpu_or_skip("add_one") else {
        return;
    };
    let input = random_words(1, 1000);
    let want: Vec<u32> = input.iter().map(|x| x.wrapping_add(1)).collect();
    for got in with_poisons(|p| selftest::add_one(&gpu, &input, p)) {
        assert_words("add_one", &got, &want, |i| format!("element {i}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn thread_indices() {
    let Some(gpu) = gpu_or_skip("thread_indices") else {
        return;
    };
    const NAMES: [&str; 13] = [
        "tid.x", "tid.y", "tid.z", "ctaid.x", "ctaid.y", "ctaid.z", "ntid.x", "ntid.y", "nctaid.x",
        "nctaid.y", "laneid", "warp_id", "smid",
    ];
    let launches = [
        ((3u32, 2u32, 2u32), (64u32, 2u32, 2u32)),
        ((5, 1, 1), (96, 1, 1)),
        ((2, 1, 3), (48, 3, 1)),
        ((7, 1, 1), (33, 1, 1)),
    ];
    for (grid, block) in launches {
        let mut want = Vec::new();
        for bz in 0..grid.2 {
            for by in 0..grid.1 {
                for bx in 0..grid.0 {
                    for tz in 0..block.2 {
                        for ty in 0..block.1 {
                            for tx in 0..block.0 {
                                let linear = (tz * block.1 + ty) * block.0 + tx;
                                want.extend([
                                    tx,
                                    ty,
                                    tz,
                                    bx,
                                    by,
                                    bz,
                                    block.0,
                                    block.1,
                                    grid.0,
                                    grid.1,
                                    linear % 32,
                                    tx / 32,
                                    0, // smid: checked separately
                                ]);
                            }
                        }
                    }
                }
            }
        }
        for mut got in with_poisons(|p| selftest::indices(&gpu, grid, block, p)) {
            for (t, rec) in got.chunks_mut(selftest::INDEX_FIELDS).enumerate() {
                assert!(
                    rec[12] < 4096,
                    "thread {t} of {grid:?}x{block:?}: smid {:#x} not written",
                    rec[12]
                );
                rec[12] = 0;
            }
            assert_words("thread_indices", &got, &want, |i| {
                format!(
                    "{grid:?}x{block:?} thread {} {}",
                    i / selftest::INDEX_FIELDS,
                    NAMES[i % selftest::INDEX_FIELDS]
                )
            });
        }
    }
}

/// The expected output of `selftest_shuffles` (see `ferrinfer::selftest::shuffles`).
fn shuffles_expected(v: &[u32], arg: u32) -> Vec<u32> {
    let m = (arg & 31) as usize;
    let s = |x: u32| ((x >> 12) as i32 - (1 << 19)) as f32;
    let mut out = Vec::with_capacity(v.len() * selftest::SHUFFLE_FIELDS);
    for w in v.chunks(32) {
        let ballot = |pred: &dyn Fn(usize) -> bool| {
            (0..32).fold(0u32, |acc, j| acc | (u32::from(pred(j)) << j))
        };
        let down = |l: usize, d: usize| if l + d < 32 { w[l + d] } else { w[l] };
        let all_odd = w.iter().all(|x| x & 1 == 1);
        let any_even = w.iter().any(|x| x & 1 == 0);
        let group = |l: usize, width: usize| (l / width * width)..(l / width * width + width);
        for l in 0..32 {
            // Integers below 2^23 in magnitude: the sums are exact in any order.
            let sum8: f32 = group(l, 8).map(|j| s(w[j])).sum();
            let max = |width| {
                group(l, width)
                    .map(|j| s(w[j]))
                    .fold(f32::NEG_INFINITY, f32::max)
            };
            out.extend([
                w[l ^ 1],
                w[l ^ 16],
                w[l ^ m],
                w[(l * 7 + 3) & 31],
                w[m],
                down(l, 1),
                down(l, 5),
                w[l ^ 3],
                w[31 - l],
                down(l, 16),
                ballot(&|j| w[j] & 1 == 1),
                ballot(&|j| j == m),
                u32::from(all_odd),
                u32::from(any_even),
                1,
                sum8.to_bits(),
                max(32).to_bits(),
                max(4).to_bits(),
            ]);
        }
    }
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn warp_shuffles_and_votes() {
    let Some(gpu) = gpu_or_skip("warp_shuffles_and_votes") else {
        return;
    };
    // Warp 0 all odd, warp 2 all even (so all/any take both values), others random.
    let mut input = random_words(2, 224);
    for x in &mut input[0..32] {
        *x |= 1;
    }
    for x in &mut input[64..96] {
        *x &= !1;
    }
    // 224 = 7 warps: blocks of 32. The first 128 alone: one block of 4 warps.
    for (len, arg) in [(224usize, 5u32), (128, 0x27), (128, 0)] {
        let v = &input[..len];
        let want = shuffles_expected(v, arg);
        for got in with_poisons(|p| selftest::shuffles(&gpu, v, arg, p)) {
            assert_words("warp_shuffles_and_votes", &got, &want, |i| {
                let f = selftest::SHUFFLE_FIELDS;
                format!("len {len} arg {arg} thread {} field {}", i / f, i % f)
            });
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn shared_memory_widths_and_barriers() {
    let Some(gpu) = gpu_or_skip("shared_memory_widths_and_barriers") else {
        return;
    };
    for (seed, t) in [(3u64, 128usize), (4, 32), (5, 1024)] {
        let w = random_words(seed, 4 * t);
        let mut want = Vec::with_capacity(t * selftest::SHARED_FIELDS);
        let row2 = |r: usize| {
            [
                w[4 * r] ^ 0xA5A5_A5A5,
                w[4 * r + 1].wrapping_add(r as u32),
                w[4 * r + 2].rotate_left(7),
                ((w[4 * r + 3] >> 8) as f32).to_bits(),
            ]
        };
        for i in 0..t {
            let s = (3 * i + 7) & (2 * t - 1);
            let c = 4 * (t - 1 - i);
            let d = row2((i + 1) & (t - 1));
            want.push(w[(5 * i + 1) & (4 * t - 1)]);
            want.extend([w[2 * s], w[2 * s + 1]]);
            want.extend(&w[c..c + 4]);
            want.extend(d);
            want.extend([d[3], 0]);
        }
        for got in with_poisons(|p| selftest::shared(&gpu, &w, p)) {
            assert_words("shared_memory_widths_and_barriers", &got, &want, |i| {
                let f = selftest::SHARED_FIELDS;
                format!("T {t} thread {} field {}", i / f, i % f)
            });
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn global_vector_loads_and_stores() {
    let Some(gpu) = gpu_or_skip("global_vector_loads_and_stores") else {
        return;
    };
    let rows = 1000;
    let w = random_words(6, 4 * rows);
    let mut want = Vec::with_capacity(rows * selftest::GLOBAL_FIELDS);
    for i in 0..rows {
        let a = &w[4 * i..4 * i + 4];
        let j = rows - 1 - i;
        let b = &w[4 * j..4 * j + 4];
        want.extend(a);
        want.extend([b[3], b[2], b[1], b[0]]);
        want.extend([a[1], a[2], (a[3] & 0xffff) | (a[0] & 0xffff_0000), i as u32]);
    }
    for got in with_poisons(|p| selftest::global(&gpu, &w, p)) {
        assert_words("global_vector_loads_and_stores", &got, &want, |i| {
            let f = selftest::GLOBAL_FIELDS;
            format!("row {} field {}", i / f, i % f)
        });
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cp_async_copies_and_zero_fill() {
    let Some(gpu) = gpu_or_skip("cp_async_copies_and_zero_fill") else {
        return;
    };
    for (seed, t, src_size) in [
        (7u64, 256usize, 8u32),
        (8, 33, 0),
        (9, 1024, 16),
        (10, 64, 4),
        (11, 1, 12),
    ] {
        // Avoid zero words so the zero fill cannot be confused with copied data.
        let w: Vec<u32> = random_words(seed, 4 * t)
            .into_iter()
            .map(|x| x | 1)
            .collect();
        let mut want = Vec::with_capacity(t * selftest::CP_ASYNC_FIELDS);
        for i in 0..t {
            let k = (i + 1) % t;
            let row_k = &w[4 * k..4 * k + 4];
            want.extend(row_k);
            want.extend([0; 4]);
            for (j, &x) in row_k.iter().enumerate() {
                want.push(if 4 * (j as u32) < src_size { x } else { 0 });
            }
            want.extend(&w[4 * i..4 * i + 4]);
        }
        for got in with_poisons(|p| selftest::cp_async(&gpu, &w, src_size, p)) {
            assert_words("cp_async_copies_and_zero_fill", &got, &want, |i| {
                let f = selftest::CP_ASYNC_FIELDS;
                format!(
                    "T {t} src_size {src_size} thread {} slot {} word {}",
                    i / f,
                    (i % f) / 4,
                    i % 4
                )
            });
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ldmatrix_fragments() {
    let Some(gpu) = gpu_or_skip("ldmatrix_fragments") else {
        return;
    };
    let mut r = rng(12);
    let rows: Vec<u16> = (0..256).map(|_| r.random::<u16>() | 1).collect();
    for (mul, add) in [(1u32, 0u32), (7, 3), (13, 29)] {
        let mut lane_rows = [[0u16; 8]; 32];
        for (lane, lr) in lane_rows.iter_mut().enumerate() {
            let src = ((lane as u32 * mul + add) & 31) as usize;
            lr.copy_from_slice(&rows[8 * src..8 * src + 8]);
        }
        let mut regs: Vec<[u32; 32]> = Vec::new();
        // Regroups per-lane register arrays as per-register lane arrays.
        let mut push = |x: &[Vec<u32>]| {
            regs.extend((0..x[0].len()).map(|reg| std::array::from_fn(|lane| x[lane][reg])));
        };
        for trans in [false, true] {
            push(&frag::ldmatrix_emulate::<1>(&lane_rows, trans).map(|a| a.to_vec()));
            push(&frag::ldmatrix_emulate::<2>(&lane_rows, trans).map(|a| a.to_vec()));
            push(&frag::ldmatrix_emulate::<4>(&lane_rows, trans).map(|a| a.to_vec()));
        }
        let want: Vec<u32> = regs.concat();
        assert_eq!(want.len(), selftest::LDMATRIX_REGS * 32);
        const REG_NAMES: [&str; 14] = [
            "x1 r0",
            "x2 r0",
            "x2 r1",
            "x4 r0",
            "x4 r1",
            "x4 r2",
            "x4 r3",
            "x1.trans r0",
            "x2.trans r0",
            "x2.trans r1",
            "x4.trans r0",
            "x4.trans r1",
            "x4.trans r2",
            "x4.trans r3",
        ];
        for got in with_poisons(|p| selftest::ldmatrix(&gpu, &rows, mul, add, p)) {
            assert_words("ldmatrix_fragments", &got, &want, |i| {
                format!("mul {mul} add {add} {} lane {}", REG_NAMES[i / 32], i % 32)
            });
        }
    }
}

/// One mma test case: A 16×16, B as `b[k][n]`, C 16×8, all as the kernel's inputs.
struct MmaCase {
    a: [[u16; 16]; 16],
    b: [[u16; 8]; 16],
    c: [[f32; 8]; 16],
}

fn mma_case(dtype: DType, seed: u64, exact: bool) -> MmaCase {
    let mut r = rng(seed);
    let elem = |r: &mut rand::rngs::StdRng| -> u16 {
        let x = if exact {
            // ±k/4, k in 1..=8: products are multiples of 1/16 below 4 in magnitude.
            let k = r.random_range(1..=8) as f32 / 4.0;
            if r.random::<bool>() {
                k
            } else {
                -k
            }
        } else {
            let x: f32 = r.random_range(0.01..=1.0);
            if r.random::<bool>() {
                x
            } else {
                -x
            }
        };
        match dtype {
            DType::F16 => f16::from_f32(x).to_bits(),
            DType::Bf16 => bf16::from_f32(x).to_bits(),
        }
    };
    let mut a = [[0u16; 16]; 16];
    let mut b = [[0u16; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    a.iter_mut().flatten().for_each(|e| *e = elem(&mut r));
    b.iter_mut().flatten().for_each(|e| *e = elem(&mut r));
    c.iter_mut().flatten().for_each(|e| {
        *e = if exact {
            // ±j/16, j in 1..=64.
            let j = r.random_range(1..=64) as f32 / 16.0;
            if r.random::<bool>() {
                j
            } else {
                -j
            }
        } else {
            r.random_range(-1.0f32..=1.0)
        }
    });
    MmaCase { a, b, c }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mma_m16n8k16_fragments() {
    let Some(gpu) = gpu_or_skip("mma_m16n8k16_fragments") else {
        return;
    };
    for (di, dtype) in [DType::F16, DType::Bf16].into_iter().enumerate() {
        let to_f32 = move |x: u16| match dtype {
            DType::F16 => f16::from_bits(x).to_f32(),
            DType::Bf16 => bf16::from_bits(x).to_f32(),
        };
        for exact in [true, false] {
            let case = mma_case(dtype, 13 + 2 * di as u64 + u64::from(exact), exact);
            let a_flat: Vec<u16> = case.a.iter().flatten().copied().collect();
            let mut bt = vec![0u16; 128];
            for k in 0..16 {
                for n in 0..8 {
                    bt[n * 16 + k] = case.b[k][n];
                }
            }
            let c_flat: Vec<f32> = case.c.iter().flatten().copied().collect();
            let (fa, fb, fc) = (
                frag::pack_a(&case.a),
                frag::pack_b(&case.b),
                frag::pack_c(&case.c),
            );
            let want = frag::mma_m16n8k16_emulate(&fa, &fb, &fc, to_f32);
            // Σ|a·b| + |c| per element: the scale of the accumulation error.
            let abs_c = frag::pack_c(&case.c.map(|row| row.map(f32::abs)));
            let scale = frag::mma_m16n8k16_emulate(&fa, &fb, &abs_c, |x| to_f32(x).abs());
            for via_ldmatrix in [false, true] {
                let runs = with_poisons(|p| {
                    selftest::mma(&gpu, dtype, &a_flat, &bt, &c_flat, via_ldmatrix, p)
                });
                for got in runs {
                    assert_eq!(got.len(), 128);
                    let mut max_err = 0f64;
                    for lane in 0..32u32 {
                        for i in 0..4u32 {
                            let g = got[(4 * lane + i) as usize];
                            let w = want[lane as usize][i as usize];
                            let (row, col) = frag::mma_c(lane, i);
                            let what = format!(
                                "{dtype} exact={exact} via_ldmatrix={via_ldmatrix} lane {lane} \
                                 d{i} = D[{row}][{col}]"
                            );
                            if exact {
                                assert!(g == w, "{what}: got {g}, want {w}");
                            } else {
                                let tol = 2f64.powi(-16) * scale[lane as usize][i as usize] as f64
                                    + 1e-30;
                                let err = (g as f64 - w as f64).abs();
                                assert!(err <= tol, "{what}: got {g}, want {w} (tol {tol:e})");
                                max_err = max_err.max(err);
                            }
                        }
                    }
                    if !exact {
                        println!("mma {dtype} via_ldmatrix={via_ldmatrix}: max |err| {max_err:e}");
                    }
                }
            }
        }
    }
}

/// Inputs of the special-function test: several ranges plus the special values.
fn fast_inputs() -> Vec<f32> {
    let mut r = rng(17);
    let mut x: Vec<f32> = Vec::new();
    x.extend((0..256).map(|_| r.random_range(-60.0f32..=60.0)));
    x.extend((0..256).map(|_| r.random_range(-2.0f32..=2.0)));
    x.extend((0..128).map(|_| {
        let m = 2f32.powf(r.random_range(-20.0f32..=6.0));
        if r.random::<bool>() {
            m
        } else {
            -m
        }
    }));
    x.extend((0..64).map(|_| r.random_range(0.9f32..=1.1)));
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0,
        -1.0,
        0.5,
        2.0,
    ]);
    x
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fast_math_approximations() {
    let Some(gpu) = gpu_or_skip("fast_math_approximations") else {
        return;
    };
    let x = fast_inputs();
    let fma_c = -3.71875f32;
    for got in with_poisons(|p| selftest::fast(&gpu, &x, fma_c, p)) {
        assert_eq!(got.len(), x.len() * selftest::FAST_FIELDS);
        for (i, &xi) in x.iter().enumerate() {
            let g = &got[5 * i..5 * i + 5];
            let xd = xi as f64;
            // Exact special results (NaN, ±inf, and anything of a non-finite input) must match
            // by value (±0 equal); everything else is compared with a tolerance.
            let special = |got: f32, want: f64| -> Option<bool> {
                if want.is_nan() {
                    Some(got.is_nan())
                } else if want.is_infinite() || !xi.is_finite() {
                    Some(got as f64 == want)
                } else {
                    None
                }
            };
            // ex2
            let want = xd.exp2();
            let ok = special(g[0], want)
                .unwrap_or_else(|| g[0].is_finite() && ulp_dist(g[0], want as f32) <= 3);
            assert!(ok, "ex2({xi:e}): got {:e}, want {want:e}", g[0]);
            // lg2 of |x|
            let ax = xd.abs();
            let want = ax.log2();
            let ok = special(g[1], want).unwrap_or_else(|| {
                if (0.5..=2.0).contains(&ax) {
                    (g[1] as f64 - want).abs() <= 2f64.powi(-21)
                } else {
                    g[1].is_finite() && ulp_dist(g[1], want as f32) <= 3
                }
            });
            assert!(ok, "lg2({ax:e}): got {:e}, want {want:e}", g[1]);
            // rcp
            let want = 1.0 / xd;
            let ok = special(g[2], want)
                .unwrap_or_else(|| g[2].is_finite() && ulp_dist(g[2], want as f32) <= 2);
            assert!(ok, "rcp({xi:e}): got {:e}, want {want:e}", g[2]);
            // tanh
            let want = xd.tanh();
            let ok = special(g[3], want).unwrap_or_else(|| {
                (g[3] as f64 - want).abs() <= 2f64.powf(-10.5) * want.abs() + 1e-30
            });
            assert!(ok, "tanh({xi:e}): got {:e}, want {want:e}", g[3]);
            // fma: exact (IEEE fused multiply-add, round to nearest even).
            let want = xi.mul_add(xi, fma_c);
            assert!(
                g[4].to_bits() == want.to_bits() || (g[4].is_nan() && want.is_nan()),
                "fma({xi:e}, {xi:e}, {fma_c}): got {:e}, want {want:e}",
                g[4]
            );
        }
    }
}

/// Compares an f32 bit pattern with the expected one, NaN matching any NaN.
fn same_f32(got: u32, want: u32) -> bool {
    got == want || (f32::from_bits(got).is_nan() && f32::from_bits(want).is_nan())
}

/// Compares a packed pair of 16-bit floats, NaN halves matching any NaN.
fn same_pair(got: u32, want: u32, is_nan: impl Fn(u16) -> bool) -> bool {
    (0..2).all(|h| {
        let (g, w) = ((got >> (16 * h)) as u16, (want >> (16 * h)) as u16);
        g == w || (is_nan(g) && is_nan(w))
    })
}

fn convert_inputs() -> Vec<[u32; 4]> {
    let mut r = rng(18);
    let mut vals: Vec<f32> = Vec::new();
    vals.extend((0..200).map(|_| r.random_range(-1.0f32..=1.0)));
    vals.extend((0..100).map(|_| r.random_range(-70000.0f32..=70000.0)));
    vals.extend((0..200).map(|_| {
        let m = 2f32.powf(r.random_range(-30.0f32..=16.0)) * r.random_range(1.0f32..2.0);
        if r.random::<bool>() {
            m
        } else {
            -m
        }
    }));
    // Exact ties: half an f16 ulp above a normal f16, and half a bf16 ulp above a bf16.
    vals.extend((0..100).map(|_| {
        let h = f16::from_f32(r.random_range(-1000.0f32..=1000.0));
        let h = if h.to_f32().abs() < 1e-4 { f16::ONE } else { h };
        f32::from_bits(h.to_f32().to_bits() + (1 << 12))
    }));
    vals.extend((0..100).map(|_| {
        let b = r.random::<u32>() & 0x3fff_0000 | 0x0080_0000; // normal, |x| < 2
        f32::from_bits(b | 0x8000)
    }));
    vals.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65520.0,
        -65520.0,
        5.960_464_5e-8,
        2.980_232_2e-8,
    ]);
    let mut out: Vec<[u32; 4]> = vals
        .chunks(2)
        .map(|p| {
            let hi = p.get(1).copied().unwrap_or(1.5);
            [p[0].to_bits(), hi.to_bits(), r.random(), r.random()]
        })
        .collect();
    // Also pair each value with a random partner in the other half.
    for v in vals.iter().rev().step_by(3) {
        out.push([
            r.random_range(-2.0f32..2.0).to_bits(),
            v.to_bits(),
            r.random(),
            r.random(),
        ]);
    }
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn f16_bf16_conversions() {
    let Some(gpu) = gpu_or_skip("f16_bf16_conversions") else {
        return;
    };
    let input = convert_inputs();
    let f16_nan = |h: u16| f16::from_bits(h).is_nan();
    let bf16_nan = |h: u16| bf16::from_bits(h).is_nan();
    let f16_f32 = |h: u16| f16::from_bits(h).to_f32().to_bits();
    let bf16_f32 = |h: u16| bf16::from_bits(h).to_f32().to_bits();
    for got in with_poisons(|p| selftest::convert(&gpu, &input, p)) {
        assert_eq!(got.len(), input.len() * selftest::CONVERT_FIELDS);
        for (i, rec) in input.iter().enumerate() {
            let g = &got[12 * i..12 * i + 12];
            let (lo, hi) = (f32::from_bits(rec[0]), f32::from_bits(rec[1]));
            let what = format!(
                "record {i} (lo {lo:e}, hi {hi:e}, raw {:#x}, raw2 {:#x})",
                rec[2], rec[3]
            );
            let want_h = u32::from(f16::from_f32(lo).to_bits())
                | u32::from(f16::from_f32(hi).to_bits()) << 16;
            let want_b = u32::from(bf16::from_f32(lo).to_bits())
                | u32::from(bf16::from_f32(hi).to_bits()) << 16;
            assert!(
                same_pair(g[0], want_h, f16_nan),
                "{what}: f32x2_to_f16x2 got {:#010x}, want {want_h:#010x}",
                g[0]
            );
            assert!(
                same_pair(g[1], want_b, bf16_nan),
                "{what}: f32x2_to_bf16x2 got {:#010x}, want {want_b:#010x}",
                g[1]
            );
            // Unpacking the GPU's own packed words (so NaN payloads do not matter).
            let pairs = [
                (
                    2,
                    g[0],
                    &f16_f32 as &dyn Fn(u16) -> u32,
                    "f16x2_to_f32x2(packed)",
                ),
                (4, g[1], &bf16_f32, "bf16x2_to_f32x2(packed)"),
                (6, rec[2], &f16_f32, "f16x2_to_f32x2(raw)"),
                (8, rec[3], &bf16_f32, "bf16x2_to_f32x2(raw2)"),
                (10, rec[3], &f16_f32, "f16_to_f32(raw2 halves)"),
            ];
            for (at, word, cvt, name) in pairs {
                for h in 0..2 {
                    let want = cvt((word >> (16 * h)) as u16);
                    let gv = g[at + h];
                    assert!(
                        same_f32(gv, want),
                        "{what}: {name} half {h}: got {gv:#010x}, want {want:#010x}"
                    );
                }
            }
        }
    }
}
