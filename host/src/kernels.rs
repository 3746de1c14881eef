//! The kernels embedded at build time (`host/build.rs` → `OUT_DIR`), and the list of entry
//! points the host may request.
//!
//! Each architecture has a PTX image (always) and a cubin (when the build found the
//! project-local `ptxas`; empty otherwise). The runtime prefers the cubin of the device's exact
//! architecture (no driver JIT at module load) and falls back to PTX.

/// PTX for sm_80 (Ampere and newer 8.x).
pub static PTX_SM80: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm80.ptx"));
/// PTX for sm_90 (Hopper).
pub static PTX_SM90: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm90.ptx"));
/// PTX for sm_90a (compute capability 9.0 exactly: everything of sm_90 plus the `wgmma`
/// kernels, which exist only for the architecture-specific target).
pub static PTX_SM90A: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm90a.ptx"));
/// cubin for sm_80, or empty when the build had no ptxas.
pub static CUBIN_SM80: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels_sm80.cubin"));
/// cubin for sm_90, or empty when the build had no ptxas.
pub static CUBIN_SM90: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels_sm90.cubin"));
/// cubin for sm_90a, or empty when the build had no ptxas.
pub static CUBIN_SM90A: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels_sm90a.cubin"));

/// A target architecture of the embedded kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `sm_80`.
    Sm80,
    /// `sm_90` (portable to every newer GPU through the driver's JIT).
    Sm90,
    /// `sm_90a`: Hopper's architecture-specific features (`wgmma`); runs on 9.0 only.
    Sm90a,
}

impl Arch {
    /// All embedded architectures.
    pub const ALL: [Arch; 3] = [Arch::Sm80, Arch::Sm90, Arch::Sm90a];

    /// The PTX target name (`sm_80`, `sm_90`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
            Arch::Sm90a => "sm_90a",
        }
    }

    /// The embedded PTX text.
    pub fn ptx(self) -> &'static str {
        match self {
            Arch::Sm80 => PTX_SM80,
            Arch::Sm90 => PTX_SM90,
            Arch::Sm90a => PTX_SM90A,
        }
    }

    /// The embedded cubin, if the build produced one.
    pub fn cubin(self) -> Option<&'static [u8]> {
        let c = match self {
            Arch::Sm80 => CUBIN_SM80,
            Arch::Sm90 => CUBIN_SM90,
            Arch::Sm90a => CUBIN_SM90A,
        };
        (!c.is_empty()).then_some(c)
    }

    /// The PTX architecture for a device of compute capability `major.minor`: 8.x → sm_80,
    /// 9.0 → sm_90a (Hopper: the `wgmma` kernels too), other 9.x and newer → sm_90 (PTX is
    /// forward compatible; `sm_90a` PTX is not); older → `None`.
    pub fn for_compute_capability(major: i32, minor: i32) -> Option<Arch> {
        match (major, minor) {
            (8, _) => Some(Arch::Sm80),
            (9, 0) => Some(Arch::Sm90a),
            (m, _) if m >= 9 => Some(Arch::Sm90),
            _ => None,
        }
    }

    /// Whether this architecture's image holds the Hopper (`wgmma`) kernels.
    pub fn has_wgmma(self) -> bool {
        self == Arch::Sm90a
    }

    /// Whether this arch's cubin runs natively on `major.minor` (same major; the cubin's minor
    /// no newer than the device's, and sm_90 cubins only on 9.0 since 9.x minors differ).
    pub fn cubin_runs_on(self, major: i32, minor: i32) -> bool {
        match self {
            Arch::Sm80 => major == 8,
            Arch::Sm90 | Arch::Sm90a => major == 9 && minor == 0,
        }
    }
}

/// Names of every `.entry` in a PTX text, in order of appearance.
pub fn entry_names(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split('(').next().unwrap_or(rest).trim())
        })
        .collect()
}

/// One kernel parameter as the PTX declares it: a by-value blob (`.param .align A .b8
/// name[N]`), or anything else (`None`).
pub type ParamBlob = Option<(usize, usize)>;

/// Each entry's parameters, in order, as `(alignment, size)` of their by-value blobs.
pub fn entry_params(ptx: &str) -> Vec<(&str, Vec<ParamBlob>)> {
    let mut out = Vec::new();
    let mut lines = ptx.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if let Some(rest) = t
            .strip_prefix(".visible .entry ")
            .or_else(|| t.strip_prefix(".entry "))
        {
            let name = rest.split('(').next().unwrap_or(rest).trim();
            let mut params = Vec::new();
            while let Some(p) = lines.next_if(|p| p.trim_start().starts_with(".param")) {
                params.push(param_blob(p.trim()));
            }
            out.push((name, params));
        }
    }
    out
}

/// `(alignment, size)` of `.param .align A .b8 name[N]`.
fn param_blob(decl: &str) -> ParamBlob {
    let rest = decl.strip_prefix(".param .align ")?;
    let (align, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix(".b8 ")?;
    let size = rest.get(rest.find('[')? + 1..rest.find(']')?)?;
    Some((align.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrinfer_kernels::config::prefill_hopper;

    #[test]
    fn param_blobs_parse() {
        let ptx = ".visible .entry k(\n\t.param .align 8 .b8 k_param_0[208],\n\t.param .align 64 \
                   .b8 k_param_1[272]\n)\n{\n}\n.visible .entry s(\n\t.param .u64 s_param_0\n)\n";
        assert_eq!(
            entry_params(ptx),
            vec![
                ("k", vec![Some((8, 208)), Some((64, 272))]),
                ("s", vec![None]),
            ]
        );
    }

    #[test]
    fn both_archs_embed_the_same_entries() {
        let a = entry_names(PTX_SM80);
        let b = entry_names(PTX_SM90);
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert!(PTX_SM80.contains(".target sm_80"));
        assert!(PTX_SM90.contains(".target sm_90"));
        // sm_90a: the same entries plus the Hopper prefill kernels (`_h`, `_ht`, persistent
        // `_hp`, `_hpt`): 2 layouts × 2 dtypes × 2 head dims × 2 forms, and TMA forms of the
        // ragged ones.
        let c = entry_names(PTX_SM90A);
        assert!(PTX_SM90A.contains(".target sm_90a"));
        let (hopper, rest): (Vec<&str>, Vec<&str>) =
            c.iter().partition(|n| prefill_hopper::is_entry(n));
        assert_eq!(rest, b);
        assert_eq!(hopper.len(), 24);
        assert!(b.iter().all(|n| !prefill_hopper::is_entry(n)));
    }

    #[test]
    fn arch_selection() {
        assert_eq!(Arch::for_compute_capability(9, 0), Some(Arch::Sm90a));
        assert_eq!(Arch::for_compute_capability(9, 1), Some(Arch::Sm90));
        assert_eq!(Arch::for_compute_capability(8, 6), Some(Arch::Sm80));
        assert_eq!(Arch::for_compute_capability(10, 0), Some(Arch::Sm90));
        assert_eq!(Arch::for_compute_capability(7, 5), None);
        assert!(Arch::Sm90.cubin_runs_on(9, 0));
        assert!(!Arch::Sm90.cubin_runs_on(10, 0));
        assert!(Arch::Sm80.cubin_runs_on(8, 9));
    }
}
