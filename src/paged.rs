//! Random paged-KV layouts for the GPU tests: page tables with shuffled page ids, the
//! `(batch index, position)` placement of appended rows, and a GPU pool filled through the
//! public append op. Shared by `tests/batch_decode.rs`, `tests/batch_prefill.rs` and the large
//! sweep `tests/gpu_sweep.rs`, so every test lays out a cache the same way.
use ferrinfer::dtype::KvElem;
use ferrinfer::kv::{
    AppendMeta, BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows,
};
use ferrinfer::ops::PagedKvSpans;
use ferrinfer::{Float16, Gpu, HeadConfig};
use rand::seq::SliceRandom;
use rand::Rng;

/// Page tables for requests of `lens` tokens over pages of `page_size`: request `b` gets
/// `⌈lens[b] / page_size⌉` pages drawn without replacement from a pool of
/// `Σ pages + spare` ids in random order (so requests interleave and some ids stay unused).
/// Returns the tables and the pool size in pages.
pub fn shuffled_pages(
    r: &mut impl Rng,
    lens: &[usize],
    page_size: usize,
    spare: usize,
) -> (BatchPages, usize) {
    let per: Vec<usize> = lens.iter().map(|&l| l.div_ceil(page_size)).collect();
    let num_pages = per.iter().sum::<usize>() + spare;
    let mut ids: Vec<i32> = (0..num_pages as i32).collect();
    ids.shuffle(r);
    let mut pages = BatchPages {
        kv_indptr: vec![0],
        ..Default::default()
    };
    let mut next = 0;
    for (&np, &l) in per.iter().zip(lens) {
        pages.kv_indices.extend_from_slice(&ids[next..next + np]);
        next += np;
        pages.kv_indptr.push(next as i32);
        pages.kv_last_page_len.push(last_page_len(l, page_size));
    }
    (pages, num_pages)
}

/// Rows used in the last page of a `len`-token sequence (0 when empty).
pub fn last_page_len(len: usize, page_size: usize) -> i32 {
    if len == 0 {
        0
    } else {
        ((len - 1) % page_size + 1) as i32
    }
}

/// `(batch_indices, positions)` appending, request after request, positions
/// `from[b]..lens[b]` of request `b` (`from = None`: every position).
pub fn positions(lens: &[usize], from: Option<&[usize]>) -> (Vec<i32>, Vec<i32>) {
    let (mut bi, mut pos) = (Vec::new(), Vec::new());
    for (b, &l) in lens.iter().enumerate() {
        let start = from.map_or(0, |f| f[b]);
        bi.extend(std::iter::repeat_n(b as i32, l - start));
        pos.extend(start as i32..l as i32);
    }
    (bi, pos)
}

/// The pool geometry of `heads` with `num_pages` pages.
pub fn pool_config(
    heads: &HeadConfig,
    page_size: usize,
    layout: KvLayout,
    num_pages: usize,
) -> KvPoolConfig {
    KvPoolConfig {
        num_pages,
        page_size,
        num_kv_heads: heads.num_kv_heads,
        head_dim: heads.head_dim,
        layout,
    }
}

/// A GPU pool of `num_pages` pages holding `k`/`v` (`[Σ lens, Hkv, D]`, request after
/// request, contiguous) appended at `pages` through [`KvPool::append`].
#[allow(clippy::too_many_arguments)]
pub fn gpu_pool<T: Float16>(
    gpu: &Gpu,
    heads: &HeadConfig,
    page_size: usize,
    layout: KvLayout,
    pages: &BatchPages,
    num_pages: usize,
    lens: &[usize],
    k: &[T],
    v: &[T],
) -> KvPool<T> {
    let cfg = pool_config(heads, page_size, layout, 0);
    let mut pool = KvPool::<T>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages)).unwrap();
    let (bi, pos) = positions(lens, None);
    if !bi.is_empty() {
        let rs = RowStrides::contiguous(heads.num_kv_heads, heads.head_dim);
        let (kd, vd) = (gpu.upload(k).unwrap(), gpu.upload(v).unwrap());
        let meta = AppendMeta {
            batch_indices: &bi,
            positions: &pos,
            pages,
        };
        pool.append(&meta, Rows::Device(&kd), rs, Rows::Device(&vd), rs)
            .unwrap();
    }
    pool
}

/// A host-memory pool (the CPU backend's) holding `k`/`v` like [`gpu_pool`].
#[allow(clippy::too_many_arguments)]
pub fn host_pool<T: Float16>(
    heads: &HeadConfig,
    page_size: usize,
    layout: KvLayout,
    pages: &BatchPages,
    num_pages: usize,
    lens: &[usize],
    k: &[T],
    v: &[T],
) -> KvPool<T> {
    let cfg = pool_config(heads, page_size, layout, 0);
    let mut pool = KvPool::<T>::new_cpu(cfg, PoolSize::Pages(num_pages)).unwrap();
    let (bi, pos) = positions(lens, None);
    let rs = RowStrides::contiguous(heads.num_kv_heads, heads.head_dim);
    let meta = AppendMeta {
        batch_indices: &bi,
        positions: &pos,
        pages,
    };
    pool.append(&meta, Rows::Host(k), rs, Rows::Host(v), rs)
        .unwrap();
    pool
}

/// Splits `[Σ lens, row]` values into one vector per request.
pub fn per_request(all: &[f64], lens: &[usize], row: usize) -> Vec<Vec<f64>> {
    let mut off = 0;
    lens.iter()
        .map(|&l| {
            let v = all[off * row..(off + l) * row].to_vec();
            off += l;
            v
        })
        .collect()
}

/// A GPU pool's pages as a caller's cache ([`PagedKvSpans`]: what the embedding API reads), for
/// comparing the caller-memory launches with the pool ones over the same bytes.
pub fn pool_spans<T: Float16, S: KvElem>(pool: &KvPool<T, S>) -> PagedKvSpans<S> {
    let (k, v) = pool.device_buffers().expect("a GPU pool");
    let c = pool.config();
    let st = c.strides();
    let strides = [
        st.stride_page as usize,
        st.stride_n as usize,
        st.stride_h as usize,
    ];
    PagedKvSpans {
        k: k.span(),
        v: v.span(),
        num_pages: c.num_pages,
        page_size: c.page_size,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        k_strides: strides,
        v_strides: strides,
    }
}
