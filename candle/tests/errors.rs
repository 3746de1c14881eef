//! Bad inputs return candle errors with a message naming the problem (no panics), and leave a
//! cache unchanged.
mod common;

use candle_core::{DType, Device, Result};
use common::{random, rng};
use ferrinfer::kv::SeqId;
use ferrinfer::AttentionOptions;
use ferrinfer_candle::{decode, prefill, prefill_ragged, CacheConfig, PagedKvCache};

/// Asserts `r` failed with a message containing `needle`.
fn refused<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
    let e = r.expect_err(&format!("expected an error containing {needle:?}"));
    let msg = e.to_string();
    assert!(msg.contains(needle), "error {msg:?} lacks {needle:?}");
}

#[test]
fn contiguous_ops_refuse_bad_inputs() {
    let mut r = rng(0);
    let h = DType::F16;
    let q = random(&mut r, &[4, 16], h);
    let q3 = random(&mut r, &[2, 4, 16], h);
    let k = random(&mut r, &[5, 2, 16], h);
    let v = random(&mut r, &[5, 2, 16], h);
    let o = AttentionOptions::default();

    refused(decode(&q3, &k, &v, &o), "[Hq, D]");
    refused(
        decode(&q, &k.narrow(1, 0, 1).unwrap(), &v, &o),
        "v has shape",
    );
    refused(decode(&q.narrow(1, 0, 8).unwrap(), &k, &v, &o), "head_dim");
    let q32 = q.to_dtype(DType::F32).unwrap();
    refused(decode(&q32, &k, &v, &o), "to_dtype");
    refused(
        decode(&q, &k.to_dtype(DType::BF16).unwrap(), &v, &o),
        "dtype",
    );
    refused(decode(&q.narrow(0, 0, 3).unwrap(), &k, &v, &o), "multiple");
    refused(decode(&q, &k, &v, &o.with_sm_scale(f32::NAN)), "sm_scale");
    refused(decode(&q, &k, &v, &o.with_soft_cap(-1.0)), "cap");
    let long = random(&mut r, &[6, 4, 16], h);
    refused(prefill(&long, &k, &v, &o), "qo_len 6 > kv_len 5");
    refused(prefill(&q, &k, &v, &o), "[qo_len, Hq, D]");

    refused(prefill_ragged(&q3, &k, &v, &[2], &[3, 2], &o), "kv_lens");
    refused(
        prefill_ragged(&q3, &k, &v, &[1, 1], &[3, 1], &o),
        "sum to 4",
    );
    refused(
        prefill_ragged(&q3, &k, &v, &[2, 0], &[1, 4], &o),
        "request 0",
    );
}

fn cache(num_layers: usize) -> PagedKvCache {
    let cfg = CacheConfig {
        num_pages: 4,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 64,
        num_layers,
    };
    PagedKvCache::new(cfg, DType::BF16, &Device::Cpu).unwrap()
}

#[test]
fn cache_refuses_bad_inputs_and_stays_unchanged() {
    let mut r = rng(1);
    let b = DType::BF16;
    let cfg = CacheConfig {
        num_pages: 4,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 64,
        num_layers: 1,
    };
    refused(
        PagedKvCache::new(cfg, DType::F32, &Device::Cpu),
        "f16 or bf16",
    );
    refused(
        PagedKvCache::new(
            CacheConfig {
                page_size: 0,
                ..cfg
            },
            b,
            &Device::Cpu,
        ),
        "page",
    );

    let mut c = cache(1);
    let s = c.add_sequence();
    let k = random(&mut r, &[3, 2, 64], b);
    let v = random(&mut r, &[3, 2, 64], b);
    refused(c.append(&[(s, 2)], &k, &v), "expected [2, 2, 64]");
    refused(
        c.append(&[(s, 3)], &k.to_dtype(DType::F16).unwrap(), &v),
        "dtype",
    );
    refused(c.append(&[(SeqId(99), 3)], &k, &v), "");
    // 17 tokens do not fit 4 pages of 4.
    let big = random(&mut r, &[17, 2, 64], b);
    refused(c.append(&[(s, 17)], &big, &big), "");
    assert_eq!(c.len(s).unwrap(), 0, "a refused append reserves nothing");

    c.append(&[(s, 3)], &k, &v).unwrap();
    let q = random(&mut r, &[1, 8, 64], b);
    refused(
        c.decode(0, &q, &[s, s], &AttentionOptions::default()),
        "1 rows for 2",
    );
    refused(c.decode(1, &q, &[s], &AttentionOptions::default()), "layer");
    refused(
        c.decode(0, &q, &[SeqId(99)], &AttentionOptions::default()),
        "",
    );
    refused(
        c.decode(
            0,
            &q.narrow(2, 0, 8).unwrap(),
            &[s],
            &AttentionOptions::default(),
        ),
        "head_dim",
    );
    refused(
        c.decode(
            0,
            &q.to_dtype(DType::F16).unwrap(),
            &[s],
            &AttentionOptions::default(),
        ),
        "cache holds",
    );
    refused(
        c.prefill(0, &q, &[(s, 2)], &AttentionOptions::default()),
        "sum to 2",
    );
    let q4 = random(&mut r, &[4, 8, 64], b);
    refused(
        c.prefill(0, &q4, &[(s, 4)], &AttentionOptions::default()),
        "",
    );

    let mut two = cache(2);
    let s2 = two.add_sequence();
    refused(two.append(&[(s2, 3)], &k, &v), "begin_append");
    assert_eq!(two.len(s2).unwrap(), 0);
}
