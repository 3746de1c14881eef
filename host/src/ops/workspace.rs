//! The device memory of a planned op's step, shared by batch decode and batch prefill.
//!
//! A plan owns one `i32` metadata buffer holding every table its kernels read (work items,
//! request rows, page lists, merge rows, counters) at named offsets ([`MetaLayout`]), plus the
//! split-KV partial outputs (`f32`, one slot = `num_qo_heads × head_dim` values and
//! `num_qo_heads` lse). Each plan writes its tables into one pinned host buffer ([`Staged`]) and
//! uploads them with one asynchronous copy.
//!
//! Outside CUDA-graph mode the buffers grow on demand, and new ones replace the old only after
//! every fallible step has succeeded (grow-then-swap): a failed re-plan leaves the previous
//! plan usable. In graph mode they are allocated once, from the op's limits, and never move,
//! so a captured launch stays valid after any later re-plan; a step that exceeds the limits is
//! refused ([`check_graph_fit`]).
//!
//! A plan may instead live in a caller's workspace ([`PlanWorkspace::in_caller`], FlashInfer's
//! `float_workspace_buffer`): the same tables and partials, laid out in the caller's bytes, and
//! no allocation at all — what an embedding on a borrowed stream needs (a buffer freed on a
//! stream ferrinfer does not own could race the owner's work).
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::runtime::{DeviceBuffer, DeviceSpan, Gpu, PinnedStaging};

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

/// One plan's metadata as it is written, region by region, straight into the pinned staging
/// buffer the upload reads (no intermediate vector). Regions are written in layout order;
/// gaps between them are zeroed. Writing past the layout's length is refused (a layout bug,
/// reported as an error rather than a panic or a corrupt table).
pub(crate) struct Staged<'a> {
    buf: &'a mut [i32],
    /// Entries written so far (the upload's length).
    pos: &'a mut usize,
}

impl Staged<'_> {
    fn overflow(&self, end: usize) -> Error {
        Error::invalid(
            "plan",
            "metadata layout",
            format!("{end} entries staged into a layout of {}", self.buf.len()),
        )
    }

    /// Moves the write position to `offset` (zeroing any gap) and returns the stage for
    /// [`Staged::extend`]; `Err` when an earlier region ran past `offset`.
    pub(crate) fn at(&mut self, offset: usize) -> Result<&mut Self> {
        if *self.pos > offset || offset > self.buf.len() {
            return Err(self.overflow((*self.pos).max(offset)));
        }
        self.buf[*self.pos..offset].fill(0);
        *self.pos = offset;
        Ok(self)
    }

    /// Appends `values` at the write position.
    pub(crate) fn extend(&mut self, values: impl IntoIterator<Item = i32>) -> Result<()> {
        for v in values {
            let Some(slot) = self.buf.get_mut(*self.pos) else {
                return Err(self.overflow(*self.pos + 1));
            };
            *slot = v;
            *self.pos += 1;
        }
        Ok(())
    }

    /// Appends `values` at the write position (one copy).
    pub(crate) fn extend_from_slice(&mut self, values: &[i32]) -> Result<()> {
        let end = *self.pos + values.len();
        if end > self.buf.len() {
            return Err(self.overflow(end));
        }
        self.buf[*self.pos..end].copy_from_slice(values);
        *self.pos = end;
        Ok(())
    }

    /// The `len` entries from `offset` on, zeroed (padding up to `offset` too).
    pub(crate) fn region(&mut self, offset: usize, len: usize) -> Result<&mut [i32]> {
        self.at(offset)?;
        let end = offset + len;
        if end > self.buf.len() {
            return Err(self.overflow(end));
        }
        *self.pos = end;
        let r = &mut self.buf[offset..end];
        r.fill(0);
        Ok(r)
    }
}

/// Where a plan's device tables and partial outputs live.
enum Store {
    /// Buffers the plan allocated (and frees when dropped).
    Owned {
        meta: DeviceBuffer<i32>,
        part_o: DeviceBuffer<f32>,
        part_lse: DeviceBuffer<f32>,
    },
    /// Regions of a caller's workspace (bytes), laid out by [`CallerLayout`]: the plan never
    /// allocates, and the caller's allocator (torch's, with its stream semantics) owns the
    /// memory.
    Caller {
        base: DeviceSpan<u8>,
        layout: CallerLayout,
    },
}

/// Byte offsets of the metadata, partial outputs and partial lse in a caller's workspace, each
/// region 256-byte aligned (the kernels' vector loads need 16).
#[derive(Clone, Copy, Debug, Default)]
struct CallerLayout {
    part_o: u64,
    part_lse: u64,
    meta_elems: usize,
    end: u64,
}

const REGION_ALIGN: u64 = 256;

/// Bytes of caller workspace that `meta_elems` metadata entries and `slots` partial states of
/// `heads` take (`None`: not representable).
pub(crate) fn caller_bytes(meta_elems: usize, slots: usize, heads: &HeadConfig) -> Option<usize> {
    CallerLayout::new(meta_elems, slots, heads).and_then(|l| usize::try_from(l.end).ok())
}

impl CallerLayout {
    fn new(meta_elems: usize, slots: usize, h: &HeadConfig) -> Option<Self> {
        let up = |x: u64| x.checked_next_multiple_of(REGION_ALIGN);
        let part_o = up(meta_elems.checked_mul(4)? as u64)?;
        let o_bytes = slots.checked_mul(h.num_qo_heads * h.head_dim * 4)? as u64;
        let part_lse = up(part_o.checked_add(o_bytes)?)?;
        let end = part_lse.checked_add(slots.checked_mul(h.num_qo_heads * 4)? as u64)?;
        Some(Self {
            part_o,
            part_lse,
            meta_elems,
            end,
        })
    }

    /// `Err` unless this layout fits a workspace of `bytes`.
    fn check_fits(op: &'static str, l: Option<Self>, bytes: usize) -> Result<Self> {
        match l {
            Some(l) if l.end <= bytes as u64 => Ok(l),
            Some(l) => Err(Error::shape(
                op,
                "workspace bytes",
                format!(">= {}", l.end),
                bytes,
            )),
            None => Err(Error::Overflow {
                op,
                what: "workspace layout",
            }),
        }
    }
}

/// A plan's device buffers and staging (see the module docs).
pub(crate) struct PlanWorkspace<G> {
    owner: PlanOwner<G>,
    store: Store,
    /// Entries of the last staged metadata (in `pinned`).
    staged: usize,
    pinned: Option<PinnedStaging>,
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
            store: Store::Owned {
                meta: gpu.alloc::<i32>(meta.max(1))?,
                part_o: gpu.alloc::<f32>((slots * h.num_qo_heads * h.head_dim).max(1))?,
                part_lse: gpu.alloc::<f32>((slots * h.num_qo_heads).max(1))?,
            },
            staged: 0,
            pinned: None,
            fixed: fixed.is_some(),
        })
    }

    /// A workspace of `owner` in the caller's memory `base` (no allocation, now or later). In
    /// graph mode the layout is fixed here from the limits, so addresses never change.
    pub(crate) fn in_caller(
        op: &'static str,
        gpu: &Gpu,
        owner: PlanOwner<G>,
        fixed: Option<(usize, usize)>,
        base: DeviceSpan<u8>,
    ) -> Result<Self> {
        gpu.check_span(op, &base)?;
        if !base.addr().is_multiple_of(REGION_ALIGN) {
            return Err(Error::invalid(
                op,
                "workspace",
                format!(
                    "address {:#x} is not {REGION_ALIGN}-byte aligned",
                    base.addr()
                ),
            ));
        }
        let layout = match fixed {
            Some((meta, slots)) => CallerLayout::check_fits(
                op,
                CallerLayout::new(meta, slots, &owner.heads),
                base.len(),
            )?,
            None => CallerLayout::default(),
        };
        Ok(Self {
            owner,
            store: Store::Caller { base, layout },
            staged: 0,
            pinned: None,
            fixed: fixed.is_some(),
        })
    }

    /// The plan's owner.
    pub(crate) fn owner(&self) -> &PlanOwner<G> {
        &self.owner
    }

    /// A stage for metadata of at most `len` entries (the plan's layout length), in the
    /// pinned buffer once its previous upload has finished.
    pub(crate) fn stage(&mut self, gpu: &Gpu, len: usize) -> Result<Staged<'_>> {
        self.staged = 0;
        let buf = gpu.pinned_for(&mut self.pinned, len)?;
        Ok(Staged {
            buf: &mut buf[..len],
            pos: &mut self.staged,
        })
    }

    /// Uploads the staged metadata (one copy) after making room for it and for `slots`
    /// partial states: outside graph mode larger buffers are allocated first and swapped in
    /// only once the upload succeeded; in a caller's workspace the regions are laid out again
    /// and refused when they do not fit.
    pub(crate) fn commit(&mut self, gpu: &Gpu, slots: usize) -> Result<()> {
        let h = self.owner.heads;
        if let Store::Caller { base, layout } = &mut self.store {
            let l = if self.fixed {
                *layout
            } else {
                let want = CallerLayout::new(self.staged.max(1), slots, &h);
                CallerLayout::check_fits("plan", want, base.len())?
            };
            // SAFETY: the metadata region lies inside the caller's workspace (checked layout);
            // the caller keeps it alive for the plan (`BatchDecode::plan_in_workspace`).
            let meta = unsafe { gpu.span::<i32>(base.addr(), l.meta_elems)? };
            // SAFETY: as above; only this plan writes its workspace, in stream order.
            unsafe { gpu.upload_staged_to(&mut self.pinned, self.staged, meta)? };
            *layout = l;
            return Ok(());
        }
        let Store::Owned {
            meta,
            part_o,
            part_lse,
        } = &mut self.store
        else {
            return Err(Error::invalid("plan", "workspace", "unknown storage"));
        };
        let mut new_meta = None;
        let mut new_parts = None;
        if !self.fixed {
            if meta.len() < self.staged {
                new_meta = Some(gpu.alloc::<i32>(self.staged)?);
            }
            let (o, l) = (slots * h.num_qo_heads * h.head_dim, slots * h.num_qo_heads);
            if part_o.len() < o || part_lse.len() < l {
                new_parts = Some((gpu.alloc::<f32>(o)?, gpu.alloc::<f32>(l)?));
            }
        }
        {
            let dst = new_meta.as_mut().unwrap_or(meta);
            gpu.check_buffer("upload", dst)?;
            // SAFETY: `dst` is a live buffer of this context, exclusively borrowed here.
            unsafe { gpu.upload_staged_to(&mut self.pinned, self.staged, dst.span())? };
        }
        if let Some(m) = new_meta {
            *meta = m;
        }
        if let Some((o, l)) = new_parts {
            *part_o = o;
            *part_lse = l;
        }
        Ok(())
    }

    /// Metadata, partial o and partial lse addresses (constant across re-plans in graph mode).
    pub(crate) fn addresses(&self) -> [u64; 3] {
        match &self.store {
            Store::Owned {
                meta,
                part_o,
                part_lse,
            } => [meta.addr(), part_o.addr(), part_lse.addr()],
            Store::Caller { base, layout } => [
                base.addr(),
                base.addr() + layout.part_o,
                base.addr() + layout.part_lse,
            ],
        }
    }

    /// Device address of metadata entry `offset`.
    pub(crate) fn at(&self, offset: usize) -> u64 {
        self.addresses()[0] + (offset * 4) as u64
    }

    /// Device address of the partial outputs.
    pub(crate) fn part_o(&self) -> u64 {
        self.addresses()[1]
    }

    /// Device address of the partial lse.
    pub(crate) fn part_lse(&self) -> u64 {
        self.addresses()[2]
    }
}
