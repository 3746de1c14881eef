//! CUDA graphs of the GPU runner's decode steps replay exactly what launching every kernel
//! computes: the same runner with graphs on and off, fed the same steps, gives bit-identical
//! logits and greedy tokens at every step, through a change of batch size (a new graph) and
//! both step kinds (logits, device argmax). On a random model of a small geometry (no file
//! needed) and on the real model. The graph runner launches its model kernels as programmatic
//! dependents (PDL, where the GPU has it) with the fused append, the eager one plainly with the
//! separate append, so the same checks show that neither changes a bit; the few-row products
//! (weights loaded before the in-kernel wait) are checked the same way.
mod common;

use std::sync::Arc;

use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer_engine::runner::cpu::CpuRunner;
use ferrinfer_engine::runner::gpu::{GpuRunner, GpuWeights};
use ferrinfer_engine::runner::{ModelRunner, StepInput};
use ferrinfer_engine::weights::Weights;
use ferrinfer_engine::ModelConfig;
use ferrinfer_harness::{gpu_or_skip, rng};
use rand::Rng;

/// A small Llama geometry: 4 blocks, 8/2 heads of 64, GQA group 4, a 1000-token vocabulary.
fn small_config() -> ModelConfig {
    ModelConfig {
        arch: "llama".into(),
        name: "random".into(),
        layers: 4,
        dim: 256,
        ffn_dim: 512,
        q_heads: 8,
        kv_heads: 2,
        head_dim: 64,
        vocab: 1000,
        context: 4096,
        rms_eps: 1e-5,
        rope: RopeConfig {
            theta: 10000.0,
            rotary_dim: 64,
            scaling: RopeScaling::None,
            style: RopeStyle::Interleaved,
        },
        tied_embeddings: true,
    }
}

/// Random weights have the shapes a runner expects: a CPU step gives finite logits of the
/// right size that depend on the input token.
#[test]
fn random_weights_run_on_the_cpu() {
    let cfg = small_config();
    let w = Arc::new(Weights::random(&cfg, 1).unwrap());
    let mut r = CpuRunner::new(cfg.clone(), w, 4096).unwrap();
    let (a, b) = (r.add_sequence(), r.add_sequence());
    let mut s = StepInput::default();
    s.push(a, 0, &[5, 17, 900], true);
    s.push(b, 0, &[6, 17, 900], true);
    let l = r.forward(&s).unwrap();
    assert_eq!(l.len(), 2 * cfg.vocab);
    assert!(l.iter().all(|x| x.is_finite()));
    assert!(l[..cfg.vocab] != l[cfg.vocab..], "logits ignore the input");
}

/// The CPU runner takes a query group of 24 (its attention has no group limit): the reference
/// of the GPU test below.
#[test]
fn large_query_groups_run_on_the_cpu() {
    let cfg = ModelConfig {
        q_heads: 24,
        kv_heads: 1,
        ..small_config()
    };
    let w = Arc::new(Weights::random(&cfg, 5).unwrap());
    let mut r = CpuRunner::new(cfg.clone(), w, 4096).unwrap();
    let a = r.add_sequence();
    let mut s = StepInput::default();
    s.push(a, 0, &[5, 17, 900], true);
    let first = r.forward(&s).unwrap();
    let mut d = StepInput::default();
    d.push(a, 3, &[42], true);
    let next = r.forward(&d).unwrap();
    assert_eq!((first.len(), next.len()), (cfg.vocab, cfg.vocab));
    assert!(first.iter().chain(&next).all(|x| x.is_finite()) && first != next);
}

/// A query group above the decode kernels' 16 (24 query heads on one KV head): the GPU runner
/// sends its decode steps to the prefill op, and its logits follow the CPU runner's (f32
/// products on both; the GPU's f16 K/V cache and attention order give the difference).
#[test]
#[ignore = "needs a CUDA GPU"]
fn large_query_groups_decode_on_the_prefill_op() {
    let Some(gpu) = gpu_or_skip("large_query_groups_decode_on_the_prefill_op") else {
        return;
    };
    let cfg = ModelConfig {
        q_heads: 24,
        kv_heads: 1,
        ..small_config()
    };
    let w = Arc::new(Weights::random(&cfg, 5).unwrap());
    let mut g =
        GpuRunner::new(&gpu, cfg.clone(), w.clone(), GpuWeights::F32, 4096, 256, 8).unwrap();
    assert!(
        g.backend().contains("every step on the prefill op"),
        "{}",
        g.backend()
    );
    let mut c = CpuRunner::new(cfg.clone(), w, 4096).unwrap();
    let mut r = rng(8);
    let seqs: Vec<_> = (0..3)
        .map(|_| {
            let (a, b) = (g.add_sequence(), c.add_sequence());
            assert_eq!(a, b);
            a
        })
        .collect();
    let mut step = StepInput::default();
    let mut pos = Vec::new();
    for &s in &seqs {
        let len = r.random_range(5..=60);
        let p: Vec<u32> = (0..len)
            .map(|_| r.random_range(0..cfg.vocab as u32))
            .collect();
        step.push(s, 0, &p, true);
        pos.push(len);
    }
    for i in 0..5 {
        let (lg, lc) = (g.forward(&step).unwrap(), c.forward(&step).unwrap());
        assert_eq!(lg.len(), lc.len());
        let scale = lc.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = lg
            .iter()
            .zip(&lc)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            lg.iter().all(|x| x.is_finite()) && err <= 1e-2 * scale,
            "step {i}: max |GPU − CPU| {err} against max |logit| {scale}"
        );
        // The next step: one token per sequence (a decode step), the CPU's argmax.
        let next: Vec<u32> = lc
            .chunks_exact(cfg.vocab)
            .map(|row| ferrinfer::cpu::sampling::argmax(row).unwrap())
            .collect();
        step = StepInput::default();
        for ((&s, p), t) in seqs.iter().zip(pos.iter_mut()).zip(next) {
            step.push(s, *p, &[t], true);
            *p += 1;
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replayed_decode_steps_equal_eager_steps_random_model() {
    let Some(gpu) = gpu_or_skip("graph_replayed_decode_steps_equal_eager_steps_random_model")
    else {
        return;
    };
    let cfg = small_config();
    let w = Arc::new(Weights::random(&cfg, 2).unwrap());
    check_replay_equals_eager(&gpu, &cfg, &w, false);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replayed_few_row_decode_steps_equal_eager_steps_random_model() {
    let Some(gpu) =
        gpu_or_skip("graph_replayed_few_row_decode_steps_equal_eager_steps_random_model")
    else {
        return;
    };
    let cfg = small_config();
    let w = Arc::new(Weights::random(&cfg, 4).unwrap());
    check_replay_equals_eager(&gpu, &cfg, &w, true);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replayed_decode_steps_equal_eager_steps() {
    let Some(gpu) = gpu_or_skip("graph_replayed_decode_steps_equal_eager_steps") else {
        return;
    };
    let m = common::model();
    check_replay_equals_eager(&gpu, &m.config, &m.weights, false);
}

/// The same model twice: graphs on with the model kernels as programmatic dependents (where
/// the GPU has them) and RoPE fused into the KV append, graphs off with plain launches and the
/// separate append; `small`: both with the few-row products for steps of up to 16 tokens (two
/// row groups).
fn runner_pair(
    gpu: &ferrinfer::Gpu,
    cfg: &ModelConfig,
    w: &Arc<Weights>,
    small: bool,
) -> (GpuRunner, GpuRunner) {
    let new = |graphs: bool| {
        let mut r = GpuRunner::new(
            gpu,
            cfg.clone(),
            w.clone(),
            GpuWeights::Bf16,
            32768,
            1024,
            64,
        )
        .unwrap();
        r.set_graphs(graphs);
        r.set_small_products(if small { 16 } else { 0 });
        r.set_fused_append(graphs);
        let pdl = r.set_dependent_launch(graphs);
        assert_eq!(pdl, graphs && gpu.supports_dependent_launch());
        r
    };
    (new(true), new(false))
}

/// Runs step `d` on both runners — through the logits (`logits`: bit-identical, finite, and
/// not the previous logits step's, which a replay that wrote nothing would repeat) or the device
/// argmax (the same tokens) — and returns the next token of every logits row.
fn step_both(
    step: usize,
    logits: bool,
    g: &mut GpuRunner,
    e: &mut GpuRunner,
    d: &StepInput,
    prev_logits: &mut Vec<f32>,
) -> Vec<u32> {
    if !logits {
        let ig = g.forward_greedy(d).unwrap();
        assert_eq!(
            ig,
            e.forward_greedy(d).unwrap(),
            "step {step}: greedy tokens"
        );
        return ig;
    }
    let vocab = g.config().vocab;
    let (lg, le) = (g.forward(d).unwrap(), e.forward(d).unwrap());
    assert_eq!(lg.len(), d.logits_rows.len() * vocab);
    assert!(
        lg.iter().all(|x| x.is_finite()),
        "step {step}: non-finite logits"
    );
    let diff = lg
        .iter()
        .zip(&le)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        diff, 0,
        "step {step}: {diff} logits differ from the eager run"
    );
    assert!(
        lg != *prev_logits,
        "step {step}: logits repeat the previous step's"
    );
    let ids = lg
        .chunks_exact(vocab)
        .map(|row| ferrinfer::cpu::sampling::argmax(row).unwrap())
        .collect();
    *prev_logits = lg;
    ids
}

fn check_replay_equals_eager(
    gpu: &ferrinfer::Gpu,
    cfg: &ModelConfig,
    w: &Arc<Weights>,
    small: bool,
) {
    let vocab = cfg.vocab;
    let (mut g, mut e) = runner_pair(gpu, cfg, w, small);
    let mut r = rng(41);
    // Ten prompts of random tokens and random lengths (1 to 70: some cross page boundaries).
    let prompts: Vec<Vec<u32>> = (0..10)
        .map(|_| {
            let len = r.random_range(1..=70);
            (0..len).map(|_| r.random_range(0..vocab as u32)).collect()
        })
        .collect();
    let mut seqs: Vec<_> = prompts
        .iter()
        .map(|_| {
            let (a, b) = (g.add_sequence(), e.add_sequence());
            assert_eq!(a, b);
            a
        })
        .collect();
    let mut prefill = StepInput::default();
    for (&s, p) in seqs.iter().zip(&prompts) {
        prefill.push(s, 0, p, true);
    }
    let first = e.forward_greedy(&prefill).unwrap();
    assert_eq!(g.forward_greedy(&prefill).unwrap(), first);
    let mut last: Vec<(u32, usize)> = first
        .iter()
        .zip(&prompts)
        .map(|(&t, p)| (t, p.len()))
        .collect();
    let mut prev_logits: Vec<f32> = Vec::new();
    for step in 0..12 {
        if step == 6 {
            // Three sequences finish: the batch drops to 7, a new graph key.
            for _ in 0..3 {
                let s = seqs.pop().unwrap();
                last.pop();
                g.free(s).unwrap();
                e.free(s).unwrap();
            }
        }
        let mut d = StepInput::default();
        for (&s, &(t, pos)) in seqs.iter().zip(&last) {
            d.push(s, pos, &[t], true);
        }
        let next = step_both(step, step % 2 == 0, &mut g, &mut e, &d, &mut prev_logits);
        for (l, t) in last.iter_mut().zip(next) {
            *l = (t, l.1 + 1);
        }
    }
    let (sg, se) = (g.graph_stats(), e.graph_stats());
    println!(
        "graphs on: {sg:?}; graphs off: {se:?}; backend: {}",
        g.backend()
    );
    // Four keys (batch 10 and 7, logits and argmax): each eager once, captured once, replayed
    // after. (The prefill step is not a decode step.)
    assert_eq!((sg.captures, sg.replays, sg.eager), (4, 8, 4), "{sg:?}");
    assert_eq!((se.captures, se.replays, se.eager), (0, 0, 12), "{se:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn piecewise_replayed_mixed_steps_equal_eager_steps_random_model() {
    let Some(gpu) = gpu_or_skip("piecewise_replayed_mixed_steps_equal_eager_steps_random_model")
    else {
        return;
    };
    let cfg = small_config();
    let w = Arc::new(Weights::random(&cfg, 3).unwrap());
    check_pieces_equal_eager(&gpu, &cfg, &w);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn piecewise_replayed_mixed_steps_equal_eager_steps() {
    let Some(gpu) = gpu_or_skip("piecewise_replayed_mixed_steps_equal_eager_steps") else {
        return;
    };
    let m = common::model();
    check_pieces_equal_eager(&gpu, &m.config, &m.weights);
}

/// Steps with prompt chunks (a new request's prompt beside six running decodes, one request
/// leaving per step, so the bucket repeats): with graphs on they run piecewise (eager, captured,
/// then replayed per key), and give the same bits as the same runner with graphs off.
fn check_pieces_equal_eager(gpu: &ferrinfer::Gpu, cfg: &ModelConfig, w: &Arc<Weights>) {
    let vocab = cfg.vocab;
    let (mut g, mut e) = runner_pair(gpu, cfg, w, false);
    let mut r = rng(43);
    let mut prompt = |lo: usize, hi: usize| -> Vec<u32> {
        let len = r.random_range(lo..=hi);
        (0..len).map(|_| r.random_range(0..vocab as u32)).collect()
    };
    let add = |g: &mut GpuRunner, e: &mut GpuRunner| {
        let (a, b) = (g.add_sequence(), e.add_sequence());
        assert_eq!(a, b);
        a
    };
    // Running sequences: (id, last token, its position).
    let mut running: Vec<(ferrinfer::kv::SeqId, u32, usize)> = Vec::new();
    let mut first = StepInput::default();
    let mut lens = Vec::new();
    for _ in 0..6 {
        let p = prompt(10, 20);
        let s = add(&mut g, &mut e);
        first.push(s, 0, &p, true);
        lens.push((s, p.len()));
    }
    let toks = e.forward_greedy(&first).unwrap();
    assert_eq!(g.forward_greedy(&first).unwrap(), toks);
    for ((s, len), t) in lens.into_iter().zip(toks) {
        running.push((s, t, len));
    }
    let mut prev_logits: Vec<f32> = Vec::new();
    for step in 0..10 {
        let mut d = StepInput::default();
        for &(s, t, pos) in &running {
            d.push(s, pos, &[t], true);
        }
        let p = prompt(3, 8);
        let s = add(&mut g, &mut e);
        d.push(s, 0, &p, true);
        let next = step_both(step, step % 2 == 1, &mut g, &mut e, &d, &mut prev_logits);
        for (x, &t) in running.iter_mut().zip(&next) {
            *x = (x.0, t, x.2 + 1);
        }
        running.push((s, next[6], p.len()));
        // The oldest request leaves: six decodes and one prompt again next step.
        let (old, _, _) = running.remove(0);
        g.free(old).unwrap();
        e.free(old).unwrap();
    }
    let (pg, pe) = (g.piece_stats(), e.piece_stats());
    println!(
        "pieces, graphs on: {pg:?}; graphs off: {pe:?}; backend: {}",
        g.backend()
    );
    // Keys: the first step's (its own bucket), then 9-14 tokens → 32 rows, 7 logits rows → 8,
    // greedy and logits alternating: each of those two keys eager, captured (and launched),
    // replayed 3 times.
    assert_eq!((pg.captures, pg.replays, pg.eager), (2, 8, 3), "{pg:?}");
    assert_eq!((pe.captures, pe.replays, pe.eager), (0, 0, 11), "{pe:?}");
    assert_eq!(g.graph_stats().captures, 0, "no decode step was run");
}
