//! A Llama-style attention block in candle (random weights): q/k/v projections and RoPE with
//! candle ops, then ferrinfer's paged attention for a prompt (prefill) and a few generated
//! tokens (decode), each step checked against the same block with candle's own attention.
//!
//! Run: `cargo run --release -p ferrinfer-candle --example attention`
use candle_core::{DType, Device, Result, Tensor, D};
use ferrinfer_candle::{AttentionOptions, CacheConfig, PagedKvCache};

const HIDDEN: usize = 256;
const HQ: usize = 8;
const HKV: usize = 2;
const HEAD_DIM: usize = 64;
const ROPE_THETA: f64 = 10_000.0;

/// The block's weights (`[out, in]`, as Llama checkpoints store them).
struct Block {
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
}

impl Block {
    fn random(dev: &Device) -> Result<Self> {
        let w = |out: usize| Tensor::randn(0f32, 1.0 / (HIDDEN as f32).sqrt(), (out, HIDDEN), dev);
        Ok(Self {
            wq: w(HQ * HEAD_DIM)?,
            wk: w(HKV * HEAD_DIM)?,
            wv: w(HKV * HEAD_DIM)?,
            wo: Tensor::randn(
                0f32,
                1.0 / (HIDDEN as f32).sqrt(),
                (HIDDEN, HQ * HEAD_DIM),
                dev,
            )?,
        })
    }

    /// q `[n, HQ, D]`, k and v `[n, HKV, D]` for hidden states `x [n, HIDDEN]` at positions
    /// `start..start + n`, RoPE applied to q and k, stored as f16 (what the cache holds).
    fn qkv(&self, x: &Tensor, start: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let n = x.dim(0)?;
        let proj = |w: &Tensor, heads: usize| x.matmul(&w.t()?)?.reshape((n, heads, HEAD_DIM));
        let (cos, sin) = rope_tables(start, n, x.device())?;
        let q = rope(&proj(&self.wq, HQ)?, &cos, &sin)?;
        let k = rope(&proj(&self.wk, HKV)?, &cos, &sin)?;
        let v = proj(&self.wv, HKV)?;
        let f16 = |t: Tensor| t.to_dtype(DType::F16);
        Ok((f16(q)?, f16(k)?, f16(v)?))
    }

    /// The output projection of attention rows `[n, HQ, D]`.
    fn out(&self, attn: &Tensor) -> Result<Tensor> {
        let n = attn.dim(0)?;
        attn.to_dtype(DType::F32)?
            .reshape((n, HQ * HEAD_DIM))?
            .matmul(&self.wo.t()?)
    }
}

/// cos/sin `[n, 1, D/2]` for positions `start..start + n` (broadcast over heads).
fn rope_tables(start: usize, n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let half = HEAD_DIM / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / ROPE_THETA.powf(2.0 * i as f64 / HEAD_DIM as f64)) as f32)
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), dev)?;
    let pos = Tensor::arange(start as u32, (start + n) as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    let angles = pos.matmul(&inv_freq)?.reshape((n, 1, half))?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Llama's rotate-half RoPE on `[n, heads, D]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = HEAD_DIM / 2;
    let (x1, x2) = (
        x.narrow(D::Minus1, 0, half)?,
        x.narrow(D::Minus1, half, half)?,
    );
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[r1, r2], D::Minus1)
}

/// Candle's own causal GQA attention in f32 for the last `q.dim(0)` positions of `k`, `v`.
fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n, kv_len) = (q.dim(0)?, k.dim(0)?);
    let heads_first = |t: &Tensor| t.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous();
    let repeat_kv = |t: &Tensor| {
        heads_first(t)?
            .unsqueeze(1)?
            .expand((HKV, HQ / HKV, kv_len, HEAD_DIM))?
            .reshape((HQ, kv_len, HEAD_DIM))
    };
    let (q, k, v) = (heads_first(q)?, repeat_kv(k)?, repeat_kv(v)?);
    let scores = (q.matmul(&k.t()?)? / (HEAD_DIM as f64).sqrt())?;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if j > kv_len - n + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let scores = scores.broadcast_add(&Tensor::from_vec(mask, (n, kv_len), q.device())?)?;
    let probs = candle_core::Tensor::exp(&scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?)?)?;
    let probs = probs.broadcast_div(&probs.sum_keepdim(D::Minus1)?)?;
    probs.matmul(&v)?.transpose(0, 1)?.contiguous()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Runs the block on a `prompt`-token prompt and `steps` decode steps; returns the largest
/// difference between ferrinfer's and candle's block outputs (`print`: report each step).
pub fn run(prompt: usize, steps: usize, print: bool) -> Result<f32> {
    let dev = Device::Cpu;
    let block = Block::random(&dev)?;
    let cfg = CacheConfig {
        num_pages: 16,
        page_size: 16,
        num_kv_heads: HKV,
        head_dim: HEAD_DIM,
        num_layers: 1,
    };
    let mut cache = PagedKvCache::new(cfg, DType::F16, &dev)?;
    let seq = cache.add_sequence();
    let opts = AttentionOptions::default().with_causal(true);

    // Candle's side keeps its K/V as growing tensors, the usual candle KV cache.
    let x = Tensor::randn(0f32, 1.0, (prompt, HIDDEN), &dev)?;
    let (q, k, v) = block.qkv(&x, 0)?;
    cache.append(&[(seq, prompt)], &k, &v)?;
    let ours = block.out(&cache.prefill(0, &q, &[(seq, prompt)], &opts)?)?;
    let theirs = block.out(&candle_attention(&q, &k, &v)?)?;
    let mut worst = max_abs_diff(&ours, &theirs)?;
    if print {
        println!("prefill  {prompt:>3} tokens: max |ferrinfer - candle| = {worst:.2e}");
    }
    let (mut k_all, mut v_all) = (k, v);
    for step in 0..steps {
        let pos = prompt + step;
        let x = Tensor::randn(0f32, 1.0, (1, HIDDEN), &dev)?;
        let (q, k, v) = block.qkv(&x, pos)?;
        cache.append(&[(seq, 1)], &k, &v)?;
        let ours = block.out(&cache.decode(0, &q, &[seq], &opts)?)?;
        k_all = Tensor::cat(&[&k_all, &k], 0)?;
        v_all = Tensor::cat(&[&v_all, &v], 0)?;
        let theirs = block.out(&candle_attention(&q, &k_all, &v_all)?)?;
        let diff = max_abs_diff(&ours, &theirs)?;
        if print {
            println!("decode at position {pos:>3}: max |ferrinfer - candle| = {diff:.2e}");
        }
        worst = worst.max(diff);
    }
    Ok(worst)
}

/// The bound on the block output difference: ferrinfer rounds attention to f16 (relative
/// 2^-11), candle keeps f32; the output projection sums 512 of them with weights ~1/16.
pub const TOLERANCE: f32 = 1e-2;

fn main() -> Result<()> {
    let worst = run(24, 8, true)?;
    if worst > TOLERANCE {
        candle_core::bail!("ferrinfer and candle differ by {worst:.2e} > {TOLERANCE:.0e}");
    }
    println!("ferrinfer's paged attention matches candle's attention (max diff {worst:.2e})");
    Ok(())
}
