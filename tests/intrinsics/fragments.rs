//! `ldmatrix` and `mma.m16n8k16` fragments against the host fragment model.
use super::*;

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
