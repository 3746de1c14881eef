//! A step's attention over the paged KV cache: `BatchDecode` when every sequence of the step
//! brings one token (a decode step: the tensor-core decode kernel with its split-KV merge
//! fused), `BatchPrefill` otherwise (prompt chunks, alone or mixed with decode tokens). On the
//! prefill kernel a decode step fills query tiles with one token per request and, at batch 64,
//! needs a separate split-KV merge launch (19.4 + 14.7 µs per layer on an H100, perf-notes).
//! Both ops run in CUDA-graph mode: each step rewrites its op's plan in place. The decode
//! kernels take query groups up to 16 (above 8 at head dims 64/128 only); a model they refuse
//! (up to the prefill kernels' 32) runs its decode steps on the prefill op, as FlashInfer's
//! wrappers send large groups to their prefill kernels.
use ferrinfer::kv::{BatchPages, KvPool, KvPoolConfig};
use ferrinfer::ops::{BatchDecode, BatchDecodePlan, BatchPrefill, BatchPrefillPlan};
use ferrinfer::ops::{GraphLimits, PrefillGraphLimits};
use ferrinfer::{AttentionOptions, DType, DeviceBuffer, Gpu, HeadConfig};
use half::f16;

use crate::error::{EngineError, Result};

/// Which op the current step was planned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planned {
    None,
    Prefill,
    Decode,
}

/// The attention ops of a runner and the current step's plan.
pub(super) struct Attention {
    prefill: BatchPrefill,
    prefill_plan: Option<BatchPrefillPlan>,
    /// `None` for query groups the decode kernels do not take (decode steps then go to the
    /// prefill op).
    decode: Option<BatchDecode>,
    decode_plan: Option<BatchDecodePlan>,
    planned: Planned,
    /// Whether decode steps go to the decode op (else to the prefill op, as mixed steps).
    decode_steps: bool,
}

impl Attention {
    /// Causal attention for `heads` over f16 pages, for steps of at most `max_seqs` sequences
    /// and `max_tokens` tokens over at most `max_pages` pages.
    pub fn new(
        gpu: &Gpu,
        heads: HeadConfig,
        max_seqs: usize,
        max_tokens: usize,
        max_pages: usize,
    ) -> Result<Self> {
        let prefill = BatchPrefill::new_graph(
            gpu,
            heads,
            DType::F16,
            AttentionOptions::default().with_causal(true),
            PrefillGraphLimits {
                max_batch: max_seqs.max(1),
                max_qo_tokens: max_tokens.max(1),
                max_pages,
                // The engine's steps carry no custom mask.
                max_mask_bytes: 0,
            },
        )?;
        // A decode query is its sequence's last token: it sees every key, so no causal mask.
        // The decode op takes groups up to 16 at head dims 64/128 (above 8 on tensor cores
        // only); where it refuses the geometry (`Unsupported`: a larger group, or a group above
        // 8 at head dim 256) the prefill op, which takes groups up to 32, serves decode steps.
        let decode = match BatchDecode::new_graph(
            gpu,
            heads,
            DType::F16,
            AttentionOptions::default(),
            GraphLimits {
                max_batch: max_seqs.min(max_tokens).max(1),
                max_pages,
            },
        ) {
            Ok(d) => Some(d),
            Err(ferrinfer::Error::Unsupported { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            prefill,
            prefill_plan: None,
            decode_steps: decode.is_some(),
            decode,
            decode_plan: None,
            planned: Planned::None,
        })
    }

    /// Sends decode steps to the decode op (`true`, the default where the model's query group
    /// allows it) or to the prefill op.
    pub fn set_decode_steps(&mut self, on: bool) {
        self.decode_steps = on && self.decode.is_some();
    }

    /// Whether decode steps go to the decode op.
    pub fn decode_steps(&self) -> bool {
        self.decode_steps
    }

    /// Plans the step whose sequences bring `qo_indptr[b + 1] − qo_indptr[b]` tokens each over
    /// `pages` (their pages, the step's tokens included).
    pub fn plan(
        &mut self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
    ) -> Result<()> {
        self.planned = Planned::None;
        let decode_step = self.decode_steps && qo_indptr.windows(2).all(|w| w[1] - w[0] == 1);
        if let (true, Some(decode)) = (decode_step, &self.decode) {
            match &mut self.decode_plan {
                Some(p) => decode.plan_into(pages, pool, p)?,
                None => self.decode_plan = Some(decode.plan(pages, pool)?),
            }
            self.planned = Planned::Decode;
        } else {
            match &mut self.prefill_plan {
                Some(p) => self.prefill.plan_paged_into(qo_indptr, pages, pool, p)?,
                None => self.prefill_plan = Some(self.prefill.plan_paged(qo_indptr, pages, pool)?),
            }
            self.planned = Planned::Prefill;
        }
        Ok(())
    }

    /// The device addresses of the decode plan's buffers when the current step was planned
    /// on the decode op (`None` otherwise): with the op in graph mode they never change, and a
    /// captured step's attention launches read the plan there.
    pub fn decode_plan_addresses(&self) -> Option<[u64; 3]> {
        match (self.planned, &self.decode_plan) {
            (Planned::Decode, Some(p)) => Some(p.buffer_addresses()),
            _ => None,
        }
    }

    /// Attention of the planned step on one layer's pool: `q` and `out` `[tokens, Hq, D]`.
    pub fn run(
        &self,
        q: &DeviceBuffer<f16>,
        pool: &KvPool<f16>,
        out: &mut DeviceBuffer<f16>,
    ) -> Result<()> {
        match (self.planned, &self.prefill_plan, &self.decode_plan) {
            (Planned::Prefill, Some(p), _) => Ok(self.prefill.run_paged(p, q, pool, out, None)?),
            (Planned::Decode, _, Some(p)) => match &self.decode {
                Some(d) => Ok(d.run(p, q, pool, out, None)?),
                None => Err(EngineError::Model("decode plan without a decode op".into())),
            },
            _ => Err(EngineError::Model("attention run before a plan".into())),
        }
    }
}
