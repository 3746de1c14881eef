//! Static checks of the PTX embedded in the host crate (`ferrinfer::kernels::PTX_SM80/90`),
//! runnable on any machine (no GPU, no driver):
//!
//! - no `trap` instruction anywhere (a panic path left in device code: an index that could be
//!   out of bounds, an `unwrap`, an overflow check...);
//! - every `.entry` takes exactly one by-value parameter blob whose size is `size_of` the ABI
//!   struct its family is launched with (`decode_fp8_*`, `decode_tc_fp8_*` → `DecodeFp8Params`,
//!   `decode_rope_*` → `DecodeRopeParams`, `prefill_*_rope` → `PrefillRopeParams`,
//!   `prefill_*_fp8_*` → `PrefillFp8Params`,
//!   `append_fp8_*` →
//!   `AppendFp8Params`, other `decode_*` and `decode_merge_*` → `DecodeParams`,
//!   `prefill_*` → `PrefillParams`, `merge_*` → `MergeParams`,
//!   `append_kv_*`/`gather_kv_*` → `AppendParams`, `selftest_*` → `SelfTestParams`,
//!   `util_spin` → `SpinParams`; the model kernels `rms_norm`/`add_rms_norm` → `NormParams`,
//!   `qkv_rope_append_*` → `RopeAppendParams`, other `qkv_rope_*` → `RopeParams`, `gather_rows` → `GatherParams`, `silu_and_mul` →
//!   `SiluMulParams`, `to_f32_*` → `ConvertParams`, `argmax` → `ArgmaxParams`, `gemv_*` →
//!   `GemvParams`); an entry of
//!   no known family fails, so each new family gets its line in `expected_param_size`. The Hopper prefill entries take a second blob, their TMA
//!   tensor maps (`KvTensorMaps`), declared 64-byte aligned;
//! - with `ptxas` present (`.tools/cuda/nvidia/cu13/bin/ptxas` from scripts/install-ptxas.sh, or
//!   `FERRINFER_PTXAS`): each PTX assembles for its architecture, and no function spills or has
//!   a stack frame. Registers, spills, stack frame and static shared memory are printed per
//!   kernel (`cargo test --release --test ptx_check -- --nocapture`, or scripts/ptx-check.sh).
//!
//! Without ptxas the ptxas checks print `skipped: ptxas not installed (run
//! scripts/install-ptxas.sh)` and pass, unless `FERRINFER_REQUIRE_PTXAS=1` (scripts/test.sh sets
//! it, having installed ptxas) turns that into a failure.
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrinfer::kernels::{entry_names, entry_params, Arch};
use ferrinfer::kernels_abi::abi::{
    AppendFp8Params, AppendParams, ArgmaxParams, ConvertParams, DecodeFp8Params, DecodeParams,
    DecodeRopeParams, GatherParams, GemvParams, KvTensorMaps, MergeParams, NormParams,
    PrefillFp8Params, PrefillParams, PrefillRopeParams, RopeAppendParams, RopeParams,
    SelfTestParams, SiluMulParams, SpinParams,
};
use ferrinfer::kernels_abi::config::prefill_hopper;
use ferrinfer::kernels_abi::kernel_key::KernelKey;

/// The project-local ptxas, relative to the workspace root.
const LOCAL_PTXAS: &str = ".tools/cuda/nvidia/cu13/bin/ptxas";

/// The ABI struct size each kernel family must take, by entry-name prefix.
fn expected_param_size(entry: &str) -> Option<(&'static str, usize)> {
    use std::mem::size_of;
    // The RoPE prefill forms are named by a suffix (`prefill_<kv>_<dtype>_d<D>_rope`).
    if entry.starts_with("prefill_") && entry.ends_with("_rope") {
        return Some(("PrefillRopeParams", size_of::<PrefillRopeParams>()));
    }
    // So are the fp8 prefill forms (`prefill_<kv>_<dtype>_d<D>_fp8_<format>`).
    if entry.starts_with("prefill_") && entry.contains("_fp8_") {
        return Some(("PrefillFp8Params", size_of::<PrefillFp8Params>()));
    }
    // First match wins: the fp8 and RoPE families before the prefixes they extend.
    const FAMILIES: [(&str, &str, usize); 20] = [
        (
            "decode_rope_",
            "DecodeRopeParams",
            size_of::<DecodeRopeParams>(),
        ),
        (
            "decode_fp8_",
            "DecodeFp8Params",
            size_of::<DecodeFp8Params>(),
        ),
        (
            "decode_tc_fp8_",
            "DecodeFp8Params",
            size_of::<DecodeFp8Params>(),
        ),
        (
            "append_fp8_",
            "AppendFp8Params",
            size_of::<AppendFp8Params>(),
        ),
        // `decode_*` and `decode_merge_*` (batch decode and its split-KV merge).
        ("decode_", "DecodeParams", size_of::<DecodeParams>()),
        ("prefill_", "PrefillParams", size_of::<PrefillParams>()),
        ("merge_", "MergeParams", size_of::<MergeParams>()),
        ("append_kv_", "AppendParams", size_of::<AppendParams>()),
        ("gather_kv_", "AppendParams", size_of::<AppendParams>()),
        ("selftest_", "SelfTestParams", size_of::<SelfTestParams>()),
        ("util_spin", "SpinParams", size_of::<SpinParams>()),
        // The model kernels (`host/src/ops/model/`).
        ("rms_norm", "NormParams", size_of::<NormParams>()),
        ("add_rms_norm", "NormParams", size_of::<NormParams>()),
        (
            "qkv_rope_append_",
            "RopeAppendParams",
            size_of::<RopeAppendParams>(),
        ),
        ("qkv_rope_", "RopeParams", size_of::<RopeParams>()),
        ("gather_rows", "GatherParams", size_of::<GatherParams>()),
        ("silu_and_mul", "SiluMulParams", size_of::<SiluMulParams>()),
        ("to_f32_", "ConvertParams", size_of::<ConvertParams>()),
        ("argmax", "ArgmaxParams", size_of::<ArgmaxParams>()),
        ("gemv_", "GemvParams", size_of::<GemvParams>()),
    ];
    FAMILIES
        .iter()
        .find(|(prefix, _, _)| entry.starts_with(prefix))
        .map(|&(_, ty, size)| (ty, size))
}

/// `(line number, enclosing entry, line)` of every `trap` instruction in `ptx`.
///
/// Matches the instruction itself (optionally predicated: `@%p1 trap;`), never names or
/// comments that merely contain the letters.
fn trap_sites(ptx: &str) -> Vec<(usize, String, String)> {
    let mut sites = Vec::new();
    let mut current = String::from("<module scope>");
    for (i, line) in ptx.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let t = code.trim_start();
        if let Some(rest) = t
            .strip_prefix(".visible .entry ")
            .or_else(|| t.strip_prefix(".entry "))
            .or_else(|| t.strip_prefix(".visible .func "))
            .or_else(|| t.strip_prefix(".func "))
        {
            current = rest.split('(').next().unwrap_or(rest).trim().to_string();
        }
        for stmt in code.split(';') {
            let mut s = stmt.trim();
            // Drop a label on the same line (`$L__BB0_3: trap`) and a guard predicate.
            if let Some((label, rest)) = s.split_once(':') {
                if !label.contains(char::is_whitespace) {
                    s = rest.trim_start();
                }
            }
            if s.starts_with('@') {
                s = s
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, r)| r.trim_start());
            }
            let opcode = s.split(|c: char| c.is_whitespace()).next().unwrap_or("");
            if opcode == "trap" {
                sites.push((i + 1, current.clone(), line.trim().to_string()));
            }
        }
    }
    sites
}

#[test]
fn trap_matcher_matches_the_instruction_only() {
    let ptx = ".visible .entry k(\n\t.param .u64 k_param_0\n)\n{\n\ttrap;\n\t@%p1 trap;\n\
               \t@!%p2 bra $L__trap_0;\n\tcall.uni trap_handler;\n\t// trap; in a comment\n\
               $L__BB0_1: trap;\n\tret;\n}\n";
    let sites = trap_sites(ptx);
    let lines: Vec<usize> = sites.iter().map(|s| s.0).collect();
    assert_eq!(lines, vec![5, 6, 10], "{sites:?}");
    assert!(sites.iter().all(|s| s.1 == "k"));
}

#[test]
fn no_trap_instructions() {
    let mut failures = Vec::new();
    for arch in Arch::ALL {
        for (line, entry, text) in trap_sites(arch.ptx()) {
            failures.push(format!("{}: line {line} in {entry}: {text}", arch.name()));
        }
    }
    assert!(
        failures.is_empty(),
        "the PTX contains `trap` (a panic path left in device code; look for indexing, \
         unwrap, overflow or division checks in these kernels):\n  {}",
        failures.join("\n  ")
    );
}

/// Every kernel key the host can resolve (`ferrinfer_kernels::kernel_key`) names an entry of
/// every image that should hold it — the Hopper prefill forms only sm_90a, where they must be,
/// and no other — and every attention, merge and KV-copy entry of an image is such a key.
#[test]
fn every_kernel_key_is_an_entry() {
    let mut failures = Vec::new();
    let mut keys = Vec::new();
    KernelKey::for_each(|k| keys.push(k));
    for arch in Arch::ALL {
        let entries: std::collections::HashSet<&str> =
            entry_names(arch.ptx()).into_iter().collect();
        for k in &keys {
            let want = !k.sm90a_only() || arch == Arch::Sm90a;
            if entries.contains(&*k.name()) != want {
                failures.push(format!(
                    "{}: {k} ({k:?}) {}",
                    arch.name(),
                    if want { "missing" } else { "present" }
                ));
            }
        }
        let names: std::collections::HashSet<String> =
            keys.iter().map(|k| k.name().to_string()).collect();
        for e in &entries {
            let family = ["decode_", "prefill_", "merge_", "append_kv_", "gather_kv_"]
                .iter()
                .any(|p| e.starts_with(p));
            if family && !names.contains(*e) {
                failures.push(format!("{}: entry {e} has no kernel key", arch.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn entry_param_blobs_match_abi_structs() {
    let mut failures = Vec::new();
    for arch in Arch::ALL {
        let ptx = arch.ptx();
        let entries = entry_params(ptx);
        assert!(
            !entries.is_empty(),
            "{}: the PTX has no .entry",
            arch.name()
        );
        assert_eq!(entries.len(), entry_names(ptx).len());
        for (entry, params) in entries {
            let (first, rest) = params
                .split_first()
                .map_or((None, &[][..]), |(f, r)| (*f, r));
            // The Hopper prefill's tensor maps: TMA reads them in place, 64-byte aligned.
            let want_rest: &[Option<(usize, usize)>] = if prefill_hopper::is_entry(entry) {
                &[Some((64, std::mem::size_of::<KvTensorMaps>()))]
            } else {
                &[]
            };
            if rest != want_rest {
                failures.push(format!(
                    "{}: {entry}: parameters after the first are {rest:?}, expected \
                     {want_rest:?} (align, bytes)",
                    arch.name()
                ));
            }
            let size = first.map(|(_, n)| n);
            match (expected_param_size(entry), size) {
                (None, _) => failures.push(format!(
                    "{}: {entry}: unknown kernel family; add its ABI struct to \
                     expected_param_size() in tests/ptx_check.rs",
                    arch.name()
                )),
                (Some((ty, _)), None) => failures.push(format!(
                    "{}: {entry}: expected one by-value `.param .b8 [..]` blob ({ty}), found \
                     another parameter list",
                    arch.name()
                )),
                (Some((ty, want)), Some(got)) if got != want => failures.push(format!(
                    "{}: {entry}: parameter blob is {got} bytes, size_of::<{ty}>() is {want}",
                    arch.name()
                )),
                _ => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel parameter ABI mismatch:\n  {}",
        failures.join("\n  ")
    );
}

/// ptxas's `-v` report for one function.
#[derive(Debug, Default, Clone)]
struct FnReport {
    name: String,
    entry: bool,
    registers: Option<u32>,
    barriers: u32,
    stack_frame: u64,
    spill_stores: u64,
    spill_loads: u64,
    smem: u64,
}

/// The number right before `unit` in `text` (`"0 bytes stack frame"`, "stack frame" → 0).
fn number_before(text: &str, unit: &str) -> Option<u64> {
    let at = text.find(unit)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

/// Parses `ptxas -v` output (stderr) into per-function reports, in ptxas's order.
fn parse_ptxas_v(out: &str) -> Vec<FnReport> {
    let mut reports: Vec<FnReport> = Vec::new();
    let quoted = |s: &str| s.split('\'').nth(1).map(str::to_string);
    let find = |reports: &mut Vec<FnReport>, name: &str| -> usize {
        if let Some(i) = reports.iter().position(|r| r.name == name) {
            return i;
        }
        reports.push(FnReport {
            name: name.to_string(),
            ..FnReport::default()
        });
        reports.len() - 1
    };
    let mut last: Option<usize> = None;
    for line in out.lines() {
        let body = line.trim_start_matches("ptxas info    :").trim();
        if let Some(rest) = body.strip_prefix("Compiling entry function") {
            if let Some(name) = quoted(rest) {
                let i = find(&mut reports, &name);
                reports[i].entry = true;
                last = Some(i);
            }
        } else if let Some(rest) = body.strip_prefix("Function properties for ") {
            let i = find(&mut reports, rest.trim());
            last = Some(i);
        } else if body.contains("bytes stack frame") {
            if let Some(i) = last {
                let r = &mut reports[i];
                r.stack_frame = number_before(body, "bytes stack frame").unwrap_or(0);
                r.spill_stores = number_before(body, "bytes spill stores").unwrap_or(0);
                r.spill_loads = number_before(body, "bytes spill loads").unwrap_or(0);
            }
        } else if body.starts_with("Used ") && body.contains("registers") {
            if let Some(i) = last {
                let r = &mut reports[i];
                r.registers = number_before(body, "registers").map(|n| n as u32);
                r.barriers = number_before(body, "barriers").unwrap_or(0) as u32;
                r.smem = number_before(body, "bytes smem").unwrap_or(0);
            }
        }
    }
    reports
}

#[test]
fn ptxas_report_parser() {
    let out = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'k1' for 'sm_90'\n\
        ptxas info    : Function properties for k1\n\
        \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
        ptxas info    : Used 251 registers, used 1 barriers, 16384 bytes smem, 496 bytes cmem[0]\n\
        ptxas info    : Compile time = 147.165 ms\n\
        ptxas info    : Function properties for helper\n\
        \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
        ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
        ptxas info    : Function properties for k2\n\
        \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
        ptxas info    : Used 48 registers, used 0 barriers\n";
    let r = parse_ptxas_v(out);
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].name.as_str(), r[0].entry), ("k1", true));
    assert_eq!(r[0].registers, Some(251));
    assert_eq!((r[0].barriers, r[0].smem), (1, 16384));
    assert_eq!(
        (r[0].stack_frame, r[0].spill_stores, r[0].spill_loads),
        (8, 4, 12)
    );
    assert_eq!((r[1].name.as_str(), r[1].entry), ("helper", false));
    assert_eq!(
        (r[2].registers, r[2].smem, r[2].stack_frame),
        (Some(48), 0, 0)
    );
}

fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `FERRINFER_PTXAS` if set, else the project-local ptxas, if it exists.
fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRINFER_PTXAS") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let p = workspace_root().join(LOCAL_PTXAS);
    p.is_file().then_some(p)
}

fn ptxas_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_ptxas();
    if found.is_none() {
        if std::env::var("FERRINFER_REQUIRE_PTXAS").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: FERRINFER_REQUIRE_PTXAS=1 but ptxas is not installed at {} \
                 (run scripts/install-ptxas.sh, or set FERRINFER_PTXAS)",
                workspace_root().join(LOCAL_PTXAS).display()
            );
        }
        println!("{test}: skipped: ptxas not installed (run scripts/install-ptxas.sh)");
    }
    found
}

/// Assembles `arch`'s embedded PTX with `ptxas -v`, prints the per-kernel table, and fails on a
/// rejected PTX, a spill or a stack frame.
fn check_with_ptxas(arch: Arch) {
    let test = format!("ptxas_{}", arch.name().replace('_', ""));
    let Some(ptxas) = ptxas_or_skip(&test) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "ferrinfer-ptx-check-{}-{}",
        std::process::id(),
        arch.name()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let ptx_path = dir.join(format!("kernels_{}.ptx", arch.name()));
    let cubin_path = dir.join(format!("kernels_{}.cubin", arch.name()));
    std::fs::write(&ptx_path, arch.ptx()).expect("write PTX to temp file");
    let out = Command::new(&ptxas)
        .arg(format!("-arch={}", arch.name()))
        .arg("-v")
        .arg(&ptx_path)
        .arg("-o")
        .arg(&cubin_path)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", ptxas.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{test}: ptxas rejected the embedded {} PTX ({}):\n{stdout}{stderr}",
        arch.name(),
        out.status
    );
    report_and_check(&test, arch, &ptxas, &format!("{stdout}{stderr}"));
}

fn report_and_check(test: &str, arch: Arch, ptxas: &Path, out: &str) {
    let reports = parse_ptxas_v(out);
    let entries = entry_names(arch.ptx());
    println!(
        "{test}: {} ({} entries) assembled by {}",
        arch.name(),
        entries.len(),
        ptxas.display()
    );
    println!(
        "  {:<36} {:>5} {:>6} {:>11} {:>12} {:>11} {:>15}",
        "function", "regs", "bars", "stack (B)", "spill st (B)", "spill ld (B)", "static smem (B)"
    );
    let mut sorted = reports.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for r in &sorted {
        println!(
            "  {:<36} {:>5} {:>6} {:>11} {:>12} {:>11} {:>15}{}",
            r.name,
            r.registers.map_or("-".to_string(), |n| n.to_string()),
            r.barriers,
            r.stack_frame,
            r.spill_stores,
            r.spill_loads,
            r.smem,
            if r.entry { "" } else { "  (device function)" }
        );
    }
    for line in out.lines().filter(|l| l.contains("warning")) {
        println!("  {line}");
    }

    let mut failures = Vec::new();
    for e in &entries {
        if !reports.iter().any(|r| r.entry && r.name == *e) {
            failures.push(format!("{e}: no ptxas -v report (parser out of date?)"));
        }
    }
    for r in &reports {
        let cap = local_memory_allowance(arch, &r.name);
        if r.spill_stores > cap || r.spill_loads > cap || r.stack_frame > cap {
            failures.push(format!(
                "{}: {} bytes stack frame, {} bytes spill stores, {} bytes spill loads",
                r.name, r.stack_frame, r.spill_stores, r.spill_loads
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{test}: {} kernels use local memory (spills or a stack frame):\n  {}",
        arch.name(),
        failures.join("\n  ")
    );
}

/// Local-memory bytes a kernel may use (each of stack frame, spill stores, spill loads). Zero
/// everywhere except three measured cases, capped so that they cannot grow unnoticed:
/// - on sm_80 only, ptxas spills a few values of the wide-tile prefill at D = 128
///   (`prefill_*_d128_m2`: 128 f32 accumulators + 64 scores per lane at the 255-register
///   limit; 0 bytes on sm_90, the target the tile was tuned on and the only one measured):
///   8 bytes (paged) until session 6, then 24–60 as the paged copies' row lookup and the
///   persistent kernel's parameters (`PrefillParams::units`) moved the allocation;
/// - the persistent Hopper prefill (`prefill_*_hp`, `_hpt`, sm_90a): one value kept across
///   the consumers' unit loop (8–16 bytes, stored once at the start, loaded once at the end;
///   224 registers after `setmaxnreg`, the producer has 56). The merged `_h`/`_ht` kernels
///   spill nothing;
/// - RoPE decode at group 8 on sm_80 (`decode_rope_f16_d128_g8`: 8 bytes; eight query rows
///   and eight key vectors of f32 plus the lane's eight frequencies at the 255-register
///   limit; 0 bytes on sm_90, the GPUs ferrinfer is measured on).
fn local_memory_allowance(arch: Arch, name: &str) -> u64 {
    let sm80_wide =
        arch == Arch::Sm80 && name.starts_with("prefill_") && name.ends_with("_d128_m2");
    let hopper_persistent = arch == Arch::Sm90a
        && name.starts_with("prefill_")
        && (name.ends_with("_hp") || name.ends_with("_hpt"));
    let sm80_rope_g8 =
        arch == Arch::Sm80 && name.starts_with("decode_rope_") && name.ends_with("_g8");
    if sm80_wide {
        64
    } else if sm80_rope_g8 {
        8
    } else if hopper_persistent {
        16
    } else {
        0
    }
}

#[test]
fn ptxas_sm80() {
    check_with_ptxas(Arch::Sm80);
}

#[test]
fn ptxas_sm90() {
    check_with_ptxas(Arch::Sm90);
}

#[test]
fn ptxas_sm90a() {
    check_with_ptxas(Arch::Sm90a);
}

/// The Hopper prefill kernels carry `.maxntid` (written by `host/build.rs`) equal to their block
/// size: `setmaxnreg` is ignored without a register cap at entry, and a launch with more
/// threads than declared would fail.
#[test]
fn hopper_prefill_entries_declare_their_block_size() {
    let ptx = Arch::Sm90a.ptx();
    let want = format!(
        ".maxntid {}, 1, 1",
        ferrinfer::kernels_abi::config::prefill_hopper::THREADS
    );
    let mut seen = 0;
    let mut lines = ptx.lines();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix(".visible .entry ") else {
            continue;
        };
        let name = rest.split('(').next().unwrap_or(rest).trim();
        let body_start: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "{").collect();
        let declared = body_start.iter().any(|l| l.trim() == want);
        assert_eq!(
            declared,
            prefill_hopper::is_entry(name),
            "{name}: `{want}` expected only on the Hopper prefill entries"
        );
        seen += declared as usize;
    }
    assert_eq!(seen, 24);
}
