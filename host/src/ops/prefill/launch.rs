//! Launching the prefill kernels: their keys and functions (resolved once per op,
//! [`PrefillKernels`]), the Hopper tile's TMA tensor maps over ragged K/V, and the one launch
//! path for every tile ([`launch_prefill`]).
use ferrinfer_kernels::abi::{
    KvTensorMaps, PrefillFp8Params, PrefillParams, PrefillRopeParams, RopeAttn,
};
use ferrinfer_kernels::kernel_key::{KernelKey, KeyKv, PrefillForm};
use ferrinfer_kernels::math::fp8::Fp8Kind;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::runtime::{encode_rows, Gpu, Kernel, LaunchDims, RowsGeometry};

use super::policy::PrefillTile;

/// Forms of a prefill kernel, in [`form_index`] order.
const FORMS: usize = 11;

fn form_index(form: PrefillForm) -> usize {
    match form {
        PrefillForm::Rows64 => 0,
        PrefillForm::Rows128 => 1,
        PrefillForm::Rows128Wide => 2,
        PrefillForm::Hopper { persistent, tma } => 3 + 2 * persistent as usize + tma as usize,
        PrefillForm::Rows64Masked => 7,
        PrefillForm::Rows64Rope => 8,
        PrefillForm::Rows64Fp8(Fp8Kind::E4m3) => 9,
        PrefillForm::Rows64Fp8(Fp8Kind::E5m2) => 10,
    }
}

fn kv_index(kv: KeyKv) -> usize {
    match kv {
        KeyKv::Ragged => 0,
        KeyKv::Paged => 1,
    }
}

/// The prefill kernels of one op (dtype, head dim), resolved when the op is built: every tile
/// built for the head dim on the device's arch, over ragged and (with `paged`) paged K/V, and
/// for the Hopper tile its persistent (with `persistent`) and ragged TMA forms.
pub(crate) struct PrefillKernels {
    table: [[Option<Kernel>; FORMS]; 2],
}

impl PrefillKernels {
    /// Resolves the kernels (`paged`/`persistent`: also those forms).
    pub(crate) fn resolve(
        gpu: &Gpu,
        dtype: DType,
        head_dim: usize,
        paged: bool,
        persistent: bool,
    ) -> Result<Self> {
        let mut table: [[Option<Kernel>; FORMS]; 2] = Default::default();
        let kvs: &[KeyKv] = if paged { &KeyKv::ALL } else { &[KeyKv::Ragged] };
        for &tile in PrefillTile::available(head_dim, gpu.info().arch) {
            let smem = tile.smem_bytes(head_dim);
            for &kv in kvs {
                for p in [false, true] {
                    for tma in [false, true] {
                        let hopper = tile == PrefillTile::Rows128Wgmma;
                        let skip =
                            (p || tma) && !hopper || p && !persistent || tma && kv == KeyKv::Paged;
                        if skip {
                            continue;
                        }
                        let form = tile.form(p, tma);
                        let key = KernelKey::Prefill {
                            kv,
                            dtype: dtype.key(),
                            head_dim: head_dim as u32,
                            form,
                        };
                        table[kv_index(kv)][form_index(form)] = Some(gpu.kernel(key, smem)?);
                    }
                }
                // The custom-mask form of the 64-row tile (same geometry and shared memory).
                if tile == PrefillTile::Rows64 && super::mask::built_for(head_dim) {
                    let key = KernelKey::Prefill {
                        kv,
                        dtype: dtype.key(),
                        head_dim: head_dim as u32,
                        form: PrefillForm::Rows64Masked,
                    };
                    table[kv_index(kv)][form_index(PrefillForm::Rows64Masked)] =
                        Some(gpu.kernel(key, smem)?);
                }
                // The RoPE form of the 64-row tile (every head dim; Q staged too).
                if tile == PrefillTile::Rows64 {
                    let key = KernelKey::Prefill {
                        kv,
                        dtype: dtype.key(),
                        head_dim: head_dim as u32,
                        form: PrefillForm::Rows64Rope,
                    };
                    table[kv_index(kv)][form_index(PrefillForm::Rows64Rope)] =
                        Some(gpu.kernel(key, tile.rope_smem_bytes(head_dim))?);
                }
                // The fp8 forms of the 64-row tile (head dims 64 and 128).
                if tile == PrefillTile::Rows64 && fp8_built_for(head_dim) {
                    for fp8 in Fp8Kind::ALL {
                        let form = PrefillForm::Rows64Fp8(fp8);
                        let key = KernelKey::Prefill {
                            kv,
                            dtype: dtype.key(),
                            head_dim: head_dim as u32,
                            form,
                        };
                        table[kv_index(kv)][form_index(form)] =
                            Some(gpu.kernel(key, tile.fp8_smem_bytes(head_dim))?);
                    }
                }
            }
        }
        Ok(Self { table })
    }

    /// The kernel of `form` over `kv` (`KernelMissing` if the op did not resolve it).
    pub(crate) fn get(&self, kv: KeyKv, form: PrefillForm) -> Result<&Kernel> {
        self.table[kv_index(kv)][form_index(form)]
            .as_ref()
            .ok_or_else(|| Error::KernelMissing(format!("{form:?} prefill over {kv:?} K/V")))
    }
}

/// Whether the fp8 prefill forms exist at `head_dim` (64 and 128: Q's fragments stay in
/// registers there).
pub(crate) fn fp8_built_for(head_dim: usize) -> bool {
    matches!(head_dim, 64 | 128)
}

/// fp8 K/V of one launch: the format and V's scale (K's is in the logit scale).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fp8Launch {
    pub(crate) kind: Fp8Kind,
    pub(crate) v_scale: f32,
}

/// Launches the prefill kernel of `tile` over `kv` (persistent form with `persistent`; the
/// custom-mask form with `p.mask` set, the RoPE form with `rope` and the fp8 form with `fp8`,
/// 64-row tile only): the
/// Hopper tile's entries take the tensor-map block as their second parameter, and with `maps`
/// set their TMA form runs (the `cp.async` forms get zeros); the other tiles take `p` only.
///
/// # Safety
/// As [`Gpu::launch`] for the kernel's contract; `maps` describe the launch's own K/V rows;
/// a mask in `p` is a [`super::mask::DeviceMask`] checked against the launch's requests.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_prefill(
    gpu: &Gpu,
    kernels: &PrefillKernels,
    kv: KeyKv,
    tile: PrefillTile,
    persistent: bool,
    maps: Option<KvTensorMaps>,
    dims: LaunchDims,
    p: PrefillParams,
    rope: Option<RopeAttn>,
    fp8: Option<Fp8Launch>,
) -> Result<()> {
    if let Some(f) = fp8 {
        if p.mask != 0 || rope.is_some() || tile != PrefillTile::Rows64 {
            return Err(Error::unsupported(
                "prefill",
                "fp8 K/V",
                "with a custom mask, RoPE inside attention or a tile other than the 64-row one",
            ));
        }
        let k = kernels.get(kv, PrefillForm::Rows64Fp8(f.kind))?;
        let p = PrefillFp8Params {
            base: p,
            v_scale: f.v_scale,
            reserved: 0,
        };
        // SAFETY: forwarded contract; the fp8 entries take `PrefillFp8Params`.
        return unsafe { gpu.launch_kernel(k, dims, p) };
    }
    if let Some(rope) = rope {
        if p.mask != 0 || tile != PrefillTile::Rows64 {
            return Err(Error::unsupported(
                "prefill",
                "rope",
                format!(
                    "with {} (the RoPE kernel is the 64-row tile without a custom mask)",
                    if p.mask != 0 {
                        "a custom mask".to_string()
                    } else {
                        format!("the {tile:?} tile")
                    }
                ),
            ));
        }
        let k = kernels.get(kv, PrefillForm::Rows64Rope)?;
        // SAFETY: forwarded contract; the rope entries take `PrefillRopeParams`.
        return unsafe { gpu.launch_kernel(k, dims, PrefillRopeParams { base: p, rope }) };
    }
    let form = match (p.mask != 0, tile) {
        (false, _) => tile.form(persistent, maps.is_some()),
        (true, PrefillTile::Rows64) => PrefillForm::Rows64Masked,
        (true, _) => {
            return Err(Error::unsupported(
                "prefill",
                "custom mask",
                format!("with the {tile:?} tile (the masked kernel is the 64-row tile)"),
            ))
        }
    };
    let k = kernels.get(kv, form)?;
    if tile != PrefillTile::Rows128Wgmma {
        // SAFETY: forwarded contract.
        return unsafe { gpu.launch_kernel(k, dims, p) };
    }
    // SAFETY: forwarded contract; the Hopper entries take `(PrefillParams, KvTensorMaps)`.
    unsafe { gpu.launch_kernel2(k, dims, p, maps.unwrap_or_default()) }
}

/// One of ragged K or V: base address and element strides of rows and heads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RaggedRows {
    pub addr: u64,
    pub stride_n: u64,
    pub stride_h: u64,
}

/// The Hopper tile's tensor maps of ragged K and V (`rows` rows each), enabled; `None` when
/// TMA cannot describe either (the launch then runs the `cp.async` form).
pub(crate) fn ragged_tensor_maps(
    dtype: DType,
    heads: &HeadConfig,
    rows: usize,
    k: RaggedRows,
    v: RaggedRows,
) -> Result<Option<KvTensorMaps>> {
    let geometry = |r: RaggedRows| RowsGeometry {
        addr: r.addr,
        rows: rows as u64,
        heads: heads.num_kv_heads as u32,
        head_dim: heads.head_dim as u32,
        stride_n: r.stride_n,
        stride_h: r.stride_h,
    };
    let (Some(k), Some(v)) = (
        encode_rows(dtype, &geometry(k))?,
        encode_rows(dtype, &geometry(v))?,
    ) else {
        return Ok(None);
    };
    Ok(Some(KvTensorMaps {
        k,
        v,
        enabled: 1,
        reserved: [0; 3],
    }))
}
