//! Thread indices, warp shuffles and votes.
use super::*;

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
