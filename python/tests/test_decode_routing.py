"""Which native op serves a CUDA decode (on the CPU, with the native ops replaced by
recorders): the decode op where it takes the geometry, the prefill op with one query row per
request where it refuses it (``ferrinfer._decode_op``). ``test_cuda.py`` runs both on a GPU."""

import pytest

import numpy as np

from ferrinfer import _decode_op, _tensor


class Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.calls = args, kwargs, []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a, k))


class Decode(Recorder):
    """The decode op's refusal of groups above 16, as the native one's."""

    def __init__(self, device, hq, hkv, *args, **kwargs):
        if hq // hkv > 16:
            raise NotImplementedError(f"batch_decode: group size {hq // hkv} (supported: 1..=16)")
        super().__init__(device, hq, hkv, *args, **kwargs)


class Prefill(Recorder):
    def __init__(self, device, hq, hkv, *args, **kwargs):
        if hq // hkv > 32:
            raise NotImplementedError(f"batch_prefill: group size {hq // hkv} (supported: 1..=32)")
        super().__init__(device, hq, hkv, *args, **kwargs)


def test_refused_geometries_decode_on_the_prefill_op(monkeypatch):
    monkeypatch.setattr(_decode_op._native, "CudaBatchDecode", Decode)
    monkeypatch.setattr(_decode_op._native, "CudaBatchPrefill", Prefill)
    opts = (None, None, None)
    small = _decode_op.native(0, (32, 2, 128), "float16", opts, None, None, "float16")
    assert isinstance(small, Decode)  # group 16: the decode op itself
    big = _decode_op.native(0, (48, 2, 128), "float16", opts, (8, 512), None, "float16")
    assert isinstance(big, _decode_op._PrefillDecode)
    prefill = big._op
    # Non-causal (the query is its context's last position); graph limits: one row per request.
    assert prefill.args[:6] == (0, 48, 2, 128, "float16", False)
    assert prefill.kwargs["graph"] == (8, 8, 512, 0)
    last = np.array([3, 16, 1], np.int32)
    big.plan(7, "ws", "indptr", "indices", _tensor.view(last, "last_page_len"), 16)
    name, args, _ = prefill.calls[-1]
    assert name == "plan_paged" and args[0] == 7 and args[1] == "ws"
    qo = args[2][-1]  # the descriptor's array
    assert np.array_equal(qo, np.arange(4, dtype=np.int32))
    assert args[3:] == ("indptr", "indices", args[5], 16, None)
    big.run(7, "q", "k", "v", "NHD", "out", None, k_scale=0.5)
    assert prefill.calls[-1] == ("run_paged", (7, "q", "k", "v", "NHD", "out", None),
                                 {"k_scale": 0.5, "v_scale": None})
    # Beyond both: the decode op's own refusal.
    with pytest.raises(NotImplementedError, match="batch_decode"):
        _decode_op.native(0, (66, 2, 128), "float16", opts, None, None, "float16")
