"""Sensitivity audit: turning off any single feature of the native decoder makes its family's
PyTorch record fail (max |logit error| at real positions > 1e-4).

Run from the repository root with jaxattr's environment (no torch):

    PYTHONPATH=$PWD python benchmarks/native_side/sensitivity.py [family ...]

For each family it loads the committed checkpoint, perturbs one field of the static
:class:`~jaxattr.models.DecoderSpec` (or drops one group of parameters) at a time, and prints a
Markdown table row per (family, feature) with the error against ``logits_alone``. A feature
whose removal stays under the tolerance would be one the records do not test.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-4


def toggles(spec, params):
    """``{feature: (spec', params')}`` for every feature active in ``spec``."""
    out = {}
    rep = dataclasses.replace
    layers = params["layers"]

    def without(*keys):
        return {**params, "layers": {k: v for k, v in layers.items() if k not in keys}}

    if spec.rope.theta != 10000.0:
        out["rope_theta"] = (rep(spec, rope=rep(spec.rope, theta=10000.0)), params)
    if spec.rope.kind != "default":
        out[f"rope_scaling ({spec.rope.kind})"] = (
            rep(spec, rope=rep(spec.rope, kind="default")), params)
    if spec.rope_local is not None:
        out["local RoPE base"] = (rep(spec, rope_local=None), params)
    if spec.rope.dim != spec.head_dim:
        r = rep(spec.rope, dim=spec.head_dim)
        if r.kind == "longrope":   # factors per rotary pair: repeat to the full width
            sc = dict(spec.rope.scaling)
            for k in ("short_factor", "long_factor"):
                sc[k] = tuple(sc[k]) * (spec.head_dim // spec.rope.dim)
            r = rep(r, scaling=tuple(sorted(sc.items())))
        out["partial rotary"] = (rep(spec, rope=r), params)
    if 0 in spec.layer_rope:
        out["NoPE layers"] = (rep(spec, layer_rope=tuple(1 if r == 0 else r
                                                          for r in spec.layer_rope)), params)
    if any(w is not None for w in spec.layer_window):
        out["sliding windows"] = (rep(spec, layer_window=(None,) * spec.n_layers), params)
        if len(set(spec.layer_window)) > 1:
            w = next(w for w in spec.layer_window if w is not None)
            out["per-layer windows (all sliding)"] = (
                rep(spec, layer_window=(w,) * spec.n_layers), params)
    if spec.attn_softcap:
        out["attention soft-cap"] = (rep(spec, attn_softcap=None), params)
    if spec.final_softcap:
        out["final logit soft-cap"] = (rep(spec, final_softcap=None), params)
    if abs(spec.attn_scale - spec.head_dim ** -0.5) > 1e-12:
        out["query_pre_attn_scalar"] = (rep(spec, attn_scale=spec.head_dim ** -0.5), params)
    for b in spec.attn_bias:
        out[f"{b}_proj bias"] = (rep(spec, attn_bias=tuple(x for x in spec.attn_bias if x != b)),
                                 without(f"{b}_bias"))
    if spec.mlp_bias:
        out["MLP biases"] = (rep(spec, mlp_bias=False),
                             without("gate_bias", "up_bias", "down_bias"))
    if spec.qk_norm:
        out[f"q/k norm ({spec.qk_norm})"] = (rep(spec, qk_norm=None), without("q_norm", "k_norm"))
    if spec.norm_style == "gemma":   # (OLMo 2 differs from Llama only in bf16 rounding)
        out[f"RMSNorm style ({spec.norm_style})"] = (rep(spec, norm_style="llama"), params)
    for role in ("attn_out", "mlp_out"):
        if role in spec.norms:
            out[f"{role} norm"] = (rep(spec, norms=tuple(n for n in spec.norms if n != role)),
                                   without(role))
    if spec.embed_scale != 1.0:
        where = "in the lookup" if spec.embed_scale_in_lookup else "in the forward"
        out[f"embedding scale ({where})"] = (rep(spec, embed_scale=1.0), params)
    if spec.n_kv_heads not in (1, spec.n_heads):
        # GQA layout: query head h reads kv head h // g (PyTorch's repeat_kv), not h % kv
        lay = dict(layers)
        g, hd = spec.n_heads // spec.n_kv_heads, spec.head_dim
        perm = np.arange(spec.n_heads).reshape(spec.n_kv_heads, g).T.reshape(-1)
        cols = (perm[:, None] * hd + np.arange(hd)[None]).reshape(-1)
        lay["q"] = lay["q"][..., cols]
        if "q_bias" in lay:
            lay["q_bias"] = lay["q_bias"][..., cols]
        lay["o"] = lay["o"][:, cols]
        out["GQA head grouping"] = (spec, {**params, "layers": lay})
    if spec.n_experts:
        # top-k routing: renormalising the kept probabilities or not, k itself, and the expert
        # order (expert e reads router column e)
        out[f"norm_topk_prob ({spec.norm_topk_prob})"] = (
            rep(spec, norm_topk_prob=not spec.norm_topk_prob), params)
        out[f"top-{spec.experts_per_token} routing (top-1)"] = (
            rep(spec, experts_per_token=1), params)
        lay = dict(layers)
        lay["router"] = lay["router"][..., ::-1]
        out["router column order"] = (spec, {**params, "layers": lay})
    return out


def main():
    import jaxattr
    from jaxattr.models import NativeDecoder
    ckpt = os.path.join(HERE, "ckpt")
    rows = []

    @jax.jit
    def logits(fns, ids, mask):
        return fns.logits(target_ids=ids, target_mask=mask)

    for family in sys.argv[1:] or sorted(os.listdir(ckpt)):
        model = jaxattr.load_model(os.path.join(ckpt, family))
        rec = np.load(os.path.join(ckpt, family, "record.npz"))
        ids, mask = jnp.asarray(rec["ids"]), jnp.asarray(rec["mask"])
        real = rec["mask"] > 0

        def err(spec, params):
            got = np.asarray(logits(NativeDecoder(params=params, spec=spec), ids, mask))
            return float(np.abs(got - rec["logits_alone"])[real].max())

        fns = model.adapter
        rows.append((family, "(all features on)", err(fns.spec, fns.params)))
        for name, (spec, params) in toggles(fns.spec, fns.params).items():
            rows.append((family, f"without {name}", err(spec, params)))
        print(f"{family}: {len(rows)} rows so far", file=sys.stderr, flush=True)
    print("| family | variant | max abs logit error | record |")
    print("|---|---|---|---|")
    for family, name, e in rows:
        ok = e <= TOL
        print(f"| {family} | {name} | {e:.2e} | {'passes' if ok else 'FAILS'} |")
    bad = [r for r in rows if (r[1].startswith("without") and r[2] <= TOL)
           or (not r[1].startswith("without") and r[2] > TOL)]
    print(f"\n{len(rows)} rows; features whose removal the records do not catch: "
          f"{[(f, n) for f, n, _ in bad] or 'none'}")


if __name__ == "__main__":
    main()
