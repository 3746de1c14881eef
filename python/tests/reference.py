"""Float64 reference attention (numpy), written from the definitions, independent of ferrinfer.

Query ``t`` of a request with ``qo_len`` queries and ``kv_len`` keys sits at position
``kv_len - qo_len + t``; it attends key ``j`` unless ``causal`` and ``j > pos``, or a window
``w >= 0`` is set and ``j < pos - w``. Logits are ``sm_scale * q.k``, soft-capped as
``cap * tanh(logit / cap)``. ``lse`` is the base-2 log-sum-exp of the logits; with no key
attended the output row is 0 and ``lse`` is ``-inf``.
"""

import numpy as np


def f64(x):
    """Any float array (ml_dtypes bfloat16 included) as float64."""
    return np.asarray(x).astype(np.float32).astype(np.float64)


def attention(q, k, v, causal=False, sm_scale=None, soft_cap=None, window_left=-1, mask=None):
    """q ``[qo_len, Hq, D]``, k/v ``[kv_len, Hkv, D]`` (NHD) → out ``[qo_len, Hq, D]``,
    lse ``[qo_len, Hq]``. ``mask``: bool ``[qo_len, kv_len]``, ``True`` where a query may
    attend a key (combined with causal and the window)."""
    q, k, v = f64(q), f64(k), f64(v)
    lq, hq, d = q.shape
    lk, hkv, _ = k.shape
    g = hq // hkv
    scale = 1.0 / np.sqrt(d) if sm_scale is None else sm_scale
    kk = np.repeat(k, g, axis=1)  # [lk, hq, d]
    vv = np.repeat(v, g, axis=1)
    s = np.einsum("thd,jhd->thj", q, kk) * scale
    if soft_cap:
        s = soft_cap * np.tanh(s / soft_cap)
    pos = lk - lq + np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    allowed = np.ones((lq, lk), dtype=bool)
    if causal:
        allowed &= j <= pos
    if window_left is not None and window_left >= 0:
        allowed &= j >= pos - window_left
    if mask is not None:
        allowed &= np.asarray(mask, dtype=bool).reshape(lq, lk)
    s = np.where(allowed[:, None, :], s, -np.inf)
    m = s.max(axis=-1, keepdims=True) if lk else np.full((lq, hq, 1), -np.inf)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m_safe)
    denom = p.sum(axis=-1, keepdims=True)
    out = np.einsum("thj,jhd->thd", p / np.where(denom > 0, denom, 1.0), vv)
    with np.errstate(divide="ignore"):
        lse = (np.log(denom[..., 0]) + m_safe[..., 0]) / np.log(2.0)
    lse = np.where(denom[..., 0] > 0, lse, -np.inf)
    return out, lse


def merge(v_a, s_a, v_b, s_b):
    """Merge of two states (base-2 lse) in float64."""
    s_a, s_b = f64(s_a), f64(s_b)
    m = np.maximum(s_a, s_b)
    m = np.where(np.isfinite(m), m, 0.0)
    wa, wb = np.exp2(s_a - m), np.exp2(s_b - m)
    tot = wa + wb
    safe = np.where(tot > 0, tot, 1.0)
    v = (wa[..., None] * f64(v_a) + wb[..., None] * f64(v_b)) / safe[..., None]
    with np.errstate(divide="ignore"):
        s = np.where(tot > 0, np.log2(safe) + m, -np.inf)
    return v, s


def rope_llama(x, positions, rope_scale=1.0, rope_theta=1e4):
    """FlashInfer's ``ROPE_LLAMA`` of ``x [n, H, D]`` (float64): ``rotate_half`` pairs
    ``(i, i + D/2)`` of every head, token ``t`` at ``positions[t]``, rotated by the float32
    angle ``position * inv_freq[i]`` with ``inv_freq[i] = 1 / (rope_scale * theta^(2i/D))``
    (as float32), its sine and cosine in float64."""
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    half = d // 2
    inv = (1.0 / (rope_scale * rope_theta ** (2.0 * np.arange(half) / d))).astype(np.float32)
    ang = (np.asarray(positions, np.float32)[:, None] * inv[None, :]).astype(np.float64)
    s, c = np.sin(ang)[:, None, :], np.cos(ang)[:, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
