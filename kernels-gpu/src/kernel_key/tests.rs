//! Names, parsing and coverage of the kernel keys.
use super::*;

#[test]
fn names_match_the_entry_points() {
    let key = |kv, dtype, head_dim, form| KernelKey::Prefill {
        kv,
        dtype,
        head_dim,
        form,
    };
    assert_eq!(
        &*KernelKey::Decode {
            dtype: KeyDtype::F16,
            head_dim: 128,
            group: 4
        }
        .name(),
        "decode_f16_d128_g4"
    );
    assert_eq!(
        &*KernelKey::DecodeTc {
            dtype: KeyDtype::Bf16,
            head_dim: 64
        }
        .name(),
        "decode_tc_bf16_d64"
    );
    let hpt = PrefillForm::Hopper {
        persistent: true,
        tma: true,
    };
    assert_eq!(
        &*key(KeyKv::Ragged, KeyDtype::Bf16, 128, hpt).name(),
        "prefill_ragged_bf16_d128_hpt"
    );
    assert_eq!(
        &*key(KeyKv::Paged, KeyDtype::F16, 256, PrefillForm::Rows64).name(),
        "prefill_paged_f16_d256"
    );
    assert_eq!(
        &*key(
            KeyKv::Paged,
            KeyDtype::Bf16,
            128,
            PrefillForm::Rows64Fp8(Fp8Kind::E5m2)
        )
        .name(),
        "prefill_paged_bf16_d128_fp8_e5m2"
    );
    assert_eq!(
        &*KernelKey::Merge {
            dtype: KeyDtype::F16,
            head_dim: 64,
            f32_states: true
        }
        .name(),
        "merge_f32_f16_d64"
    );
    assert_eq!(
        &*KernelKey::Copy(CopyKernel::Gather).name(),
        "gather_kv_b16"
    );
    assert_eq!(
        &*KernelKey::DecodeFp8 {
            dtype: KeyDtype::Bf16,
            fp8: Fp8Kind::E4m3,
            head_dim: 256,
            group: 8
        }
        .name(),
        "decode_fp8_e4m3_bf16_d256_g8"
    );
    assert_eq!(
        &*KernelKey::DecodeTcFp8 {
            dtype: KeyDtype::F16,
            fp8: Fp8Kind::E5m2,
            head_dim: 64
        }
        .name(),
        "decode_tc_fp8_e5m2_f16_d64"
    );
    assert_eq!(
        &*KernelKey::Copy(CopyKernel::AppendFp8(KeyDtype::F16, Fp8Kind::E5m2)).name(),
        "append_fp8_e5m2_f16"
    );
}

#[test]
fn every_name_fits_and_is_unique() {
    let mut names = std::vec::Vec::new();
    KernelKey::for_each(|k| {
        let n = k.name();
        assert_eq!(n.as_str(), std::format!("{k}"));
        names.push(std::string::String::from(n.as_str()));
    });
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count);
    // 24 decode + 24 rope decode + 48 fp8 decode + 4 tc + 8 fp8 tc + 12 merge + prefill (2
    // dtypes × ((11 ragged + 9 paged forms) × 2 head dims + 4 at D 256)) + 12 copies + 23
    // model kernels.
    assert_eq!(
        count,
        24 + 24 + 48 + 4 + 8 + 12 + 2 * (20 * 2 + 4) + 12 + 23
    );
    for (i, m) in ModelKernel::ALL.iter().enumerate() {
        assert_eq!(m.index(), i);
    }
}
