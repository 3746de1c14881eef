//! The device memory of a planned op's step, shared by batch decode and batch prefill.
//!
//! A plan owns one `i32` metadata buffer holding every table its kernels read (work items,
//! request rows, page lists, merge rows, counters) at named offsets ([`MetaLayout`]), plus the
//! split-KV partial outputs (`f32`, one slot = `num_qo_heads × head_dim` values and
//! `num_qo_heads` lse). Each plan fills one host staging vector ([`Staged`]) and uploads it with
//! one copy through pinned memory.
//!
//! Outside CUDA-graph mode the buffers grow on demand, and new ones replace the old only after
//! every fallible step has succeeded (grow-then-swap): a failed re-plan leaves the previous
//! plan usable. In graph mode they are allocated once, from the op's limits, and never move,
//! so a captured launch stays valid after any later re-plan; a step that exceeds the limits is
//! refused ([`check_graph_fit`]).
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::runtime::{DeviceBuffer, Gpu, PinnedStaging};

/// Offsets of named regions in a plan's metadata buffer, laid out in order (in `i32`s).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MetaLayout {
    len: usize,
}

impl MetaLayout {
    /// Reserves `n` entries after the previous region; returns the region's offset.
    pub(crate) fn region(&mut self, n: usize) -> usize {
        let at = self.len;
        self.len += n;
        at
    }

    /// Entries of all regions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// What a plan was made for: the op's device context, head geometry and graph limits (`G`).
/// Launches refuse a plan of another owner (its tables and partial buffers are sized for the
/// owner's heads and limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanOwner<G> {
    ctx_id: usize,
    heads: HeadConfig,
    graph: Option<G>,
}

impl<G: PartialEq + Copy> PlanOwner<G> {
    pub(crate) fn new(gpu: &Gpu, heads: HeadConfig, graph: Option<G>) -> Self {
        Self {
            ctx_id: gpu.ctx_id(),
            heads,
            graph,
        }
    }

    /// `Err(InvalidArgument)` unless `self` (a plan's owner) is `op_owner`.
    pub(crate) fn check(&self, op: &'static str, op_owner: &Self) -> Result<()> {
        if self != op_owner {
            return Err(Error::invalid(
                op,
                "plan",
                "the plan belongs to another op or head configuration",
            ));
        }
        Ok(())
    }
}

/// `Err(InvalidArgument)` when any `(name, value, limit)` of a step exceeds its graph-mode
/// limit (the buffers were sized from the limits and cannot grow).
pub(crate) fn check_graph_fit(op: &'static str, sizes: &[(&str, usize, usize)]) -> Result<()> {
    if sizes.iter().all(|&(_, v, max)| v <= max) {
        return Ok(());
    }
    let list = |f: &dyn Fn(&(&str, usize, usize)) -> usize| {
        sizes
            .iter()
            .map(|s| format!("{} {}", s.0, f(s)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    Err(Error::invalid(
        op,
        "plan",
        format!(
            "{} exceed the graph-mode limits {}",
            list(&|s| s.1),
            list(&|s| s.2)
        ),
    ))
}

/// `Err(Overflow)` when `slots` partial states of `heads` do not fit the kernels' 32-bit
/// offsets.
pub(crate) fn check_slots(op: &'static str, slots: usize, heads: &HeadConfig) -> Result<()> {
    if slots
        .checked_mul(heads.num_qo_heads * heads.head_dim)
        .is_none_or(|n| n > u32::MAX as usize)
    {
        return Err(Error::Overflow {
            op,
            what: "split-KV partial outputs",
        });
    }
    Ok(())
}

/// The host staging vector of one plan's metadata, filled region by region.
pub(crate) struct Staged<'a>(&'a mut Vec<i32>);

impl Staged<'_> {
    /// The vector, zero-padded up to `offset` (where the next region starts).
    pub(crate) fn at(&mut self, offset: usize) -> &mut Vec<i32> {
        self.0.resize(offset.max(self.0.len()), 0);
        self.0
    }

    /// The `len` entries from `offset` on, zeroed (padding up to `offset` too).
    pub(crate) fn region(&mut self, offset: usize, len: usize) -> &mut [i32] {
        self.0.resize(offset.max(self.0.len()), 0);
        self.0.resize(offset + len, 0);
        &mut self.0[offset..]
    }
}

/// A plan's device buffers and staging (see the module docs).
pub(crate) struct PlanWorkspace<G> {
    owner: PlanOwner<G>,
    meta: DeviceBuffer<i32>,
    staging: Vec<i32>,
    pinned: Option<PinnedStaging>,
    part_o: DeviceBuffer<f32>,
    part_lse: DeviceBuffer<f32>,
    /// Buffers sized once, from the graph limits.
    fixed: bool,
}

impl<G: PartialEq + Copy> PlanWorkspace<G> {
    /// An empty workspace of `owner`; in graph mode (`fixed = Some((meta_len, slots))`) with
    /// its final buffers.
    pub(crate) fn new(
        gpu: &Gpu,
        owner: PlanOwner<G>,
        fixed: Option<(usize, usize)>,
    ) -> Result<Self> {
        let h = owner.heads;
        let (meta, slots) = fixed.unwrap_or((1, 0));
        Ok(Self {
            owner,
            meta: gpu.alloc::<i32>(meta.max(1))?,
            staging: Vec::new(),
            pinned: None,
            part_o: gpu.alloc::<f32>((slots * h.num_qo_heads * h.head_dim).max(1))?,
            part_lse: gpu.alloc::<f32>((slots * h.num_qo_heads).max(1))?,
            fixed: fixed.is_some(),
        })
    }

    /// The plan's owner.
    pub(crate) fn owner(&self) -> &PlanOwner<G> {
        &self.owner
    }

    /// The staging vector, cleared.
    pub(crate) fn stage(&mut self) -> Staged<'_> {
        self.staging.clear();
        Staged(&mut self.staging)
    }

    /// Uploads the staged metadata (one copy) after making room for it and for `slots`
    /// partial states: outside graph mode larger buffers are allocated first and swapped in
    /// only once the upload succeeded.
    pub(crate) fn commit(&mut self, gpu: &Gpu, slots: usize) -> Result<()> {
        let h = self.owner.heads;
        let mut new_meta = None;
        let mut new_parts = None;
        if !self.fixed {
            if self.meta.len() < self.staging.len() {
                new_meta = Some(gpu.alloc::<i32>(self.staging.len())?);
            }
            let (o, l) = (slots * h.num_qo_heads * h.head_dim, slots * h.num_qo_heads);
            if self.part_o.len() < o || self.part_lse.len() < l {
                new_parts = Some((gpu.alloc::<f32>(o)?, gpu.alloc::<f32>(l)?));
            }
        }
        {
            let meta = new_meta.as_mut().unwrap_or(&mut self.meta);
            gpu.upload_pinned(&mut self.pinned, &self.staging, meta)?;
        }
        if let Some(m) = new_meta {
            self.meta = m;
        }
        if let Some((o, l)) = new_parts {
            self.part_o = o;
            self.part_lse = l;
        }
        Ok(())
    }

    /// Device address of metadata entry `offset`.
    pub(crate) fn at(&self, offset: usize) -> u64 {
        self.meta.addr() + (offset * 4) as u64
    }

    /// Device address of the partial outputs.
    pub(crate) fn part_o(&self) -> u64 {
        self.part_o.addr()
    }

    /// Device address of the partial lse.
    pub(crate) fn part_lse(&self) -> u64 {
        self.part_lse.addr()
    }

    /// Metadata, partial o and partial lse addresses (constant across re-plans in graph mode).
    pub(crate) fn addresses(&self) -> [u64; 3] {
        [self.meta.addr(), self.part_o.addr(), self.part_lse.addr()]
    }
}
