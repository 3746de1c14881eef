//! Shared-memory widths and barriers, global vector loads and stores, `cp.async`.
use super::*;

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
