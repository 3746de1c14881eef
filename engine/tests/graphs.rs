//! CUDA graphs of the GPU runner's decode steps replay exactly what launching every kernel
//! computes: the same runner with graphs on and off, fed the same steps, gives bit-identical
//! logits and greedy tokens at every step, through a change of batch size (a new graph) and
//! both step kinds (logits, device argmax).
mod common;

use ferrinfer_engine::runner::gpu::{GpuRunner, GpuWeights};
use ferrinfer_engine::runner::{ModelRunner, StepInput};
use ferrinfer_harness::{gpu_or_skip, rng};
use rand::Rng;

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replayed_decode_steps_equal_eager_steps() {
    let Some(gpu) = gpu_or_skip("graph_replayed_decode_steps_equal_eager_steps") else {
        return;
    };
    let m = common::model();
    let vocab = m.config.vocab;
    let new = |graphs: bool| {
        let mut r = GpuRunner::new(
            &gpu,
            m.config.clone(),
            m.weights.clone(),
            GpuWeights::Bf16,
            32768,
            1024,
            64,
        )
        .unwrap();
        r.set_graphs(graphs);
        r
    };
    let (mut g, mut e) = (new(true), new(false));
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
        let next: Vec<u32> = if step % 2 == 0 {
            let (lg, le) = (g.forward(&d).unwrap(), e.forward(&d).unwrap());
            assert_eq!(lg.len(), seqs.len() * vocab);
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
            // Each step's logits are new (a replay that wrote nothing would repeat the last).
            assert!(
                lg != prev_logits,
                "step {step}: logits repeat the previous step's"
            );
            let ids = lg
                .chunks_exact(vocab)
                .map(|row| ferrinfer::cpu::sampling::argmax(row).unwrap())
                .collect();
            prev_logits = lg;
            ids
        } else {
            let ig = g.forward_greedy(&d).unwrap();
            assert_eq!(
                ig,
                e.forward_greedy(&d).unwrap(),
                "step {step}: greedy tokens"
            );
            ig
        };
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
    // after; the prefill step is eager.
    assert_eq!((sg.captures, sg.replays, sg.eager), (4, 8, 5), "{sg:?}");
    assert_eq!((se.captures, se.replays, se.eager), (0, 0, 13), "{se:?}");
}
