"""Which native op serves a CUDA decode (on the CPU, with the native ops replaced by
recorders): query groups up to 16 on the decode op, larger ones on the prefill op with one
query row per request (``ferrinfer._decode_op``). ``test_cuda.py`` runs both on a GPU."""

import numpy as np

from ferrinfer import _decode_op, _tensor


class Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.calls = args, kwargs, []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a, k))


def test_groups_above_16_decode_on_the_prefill_op(monkeypatch):
    monkeypatch.setattr(_decode_op._native, "CudaBatchDecode", Recorder)
    monkeypatch.setattr(_decode_op._native, "CudaBatchPrefill", Recorder)
    opts = (None, None, None)
    small = _decode_op.native(0, (32, 2, 128), "float16", opts, None, None, "float16")
    assert isinstance(small, Recorder)  # group 16: the decode op itself
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
