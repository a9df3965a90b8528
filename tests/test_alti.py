"""ALTI (:mod:`jaxattr.alti`).

Independent truths: a numpy ALTI written from the parameters (each head's ``W_V`` / ``W_O``,
the input norm, the captured attention pattern and layer inputs) with explicit loops over
positions and tokens, on a tiny GPT-2 (fused ``c_attn``, LayerNorm, biases) and a native
Llama checkpoint (grouped-query heads, RMSNorm, biases); its own decomposition is first checked
to rebuild the model's ``attn_out``. Also: rows sum to 1, are >= 0 and causal; the vmapped
program equals a loop of one forward per token; padding and batching change nothing; clear
errors where ALTI does not apply.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.alti import alti_contributions, alti_scores
from jaxattr.testing import make_model

from _tiny_models import tiny_model

TEXT = "The cat sat on the mat"


@functools.lru_cache(maxsize=None)
def _model(arch):
    if arch != "gpt2":
        return tiny_model(arch)
    model, tok = make_model(arch)
    if arch == "gpt2":  # a stronger attention output (tokens really mix) and nonzero biases
        params = jax.tree_util.tree_map(np.asarray, model.params)
        rng = np.random.default_rng(0)
        for block in params["transformer"]["h"].values():
            attn = block["attn"]
            attn["c_proj"]["kernel"] = attn["c_proj"]["kernel"] * 6.0
            for name in ("c_attn", "c_proj"):
                b = attn[name]["bias"]
                attn[name]["bias"] = (0.3 * rng.standard_normal(b.shape)).astype(b.dtype)
        model.params = params
    return jaxattr.load_model(model, tokenizer=tok)


def _ids(model, text=TEXT):
    ids = jnp.asarray([model.tokenizer(text)["input_ids"]], jnp.int32)
    return ids, jnp.ones_like(ids)


_contrib = jax.jit(alti_contributions, static_argnames=("token_batch_size",))
_scores = jax.jit(alti_scores, static_argnames=("token_batch_size",))


# ------------------------------------------------------------------ numpy reference
def _layer_norm(x, scale, bias, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _rms_norm(x, w, eps):
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def _gpt2_layer(model, l, x):
    """``(v [L, heads, d], w_o [heads, d, H], b_o [H])`` of GPT-2 block ``l`` at inputs x."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                               model.adapter.params["transformer"]["h"][str(l)])
    cfg = model.adapter.hf_model.config
    H, nh = cfg.n_embd, cfg.n_head
    h = _layer_norm(x, p["ln_1"]["scale"], p["ln_1"]["bias"], cfg.layer_norm_epsilon)
    qkv = h @ p["attn"]["c_attn"]["kernel"].T + p["attn"]["c_attn"]["bias"]  # Flax Conv1D
    v = qkv[:, 2 * H:].reshape(len(x), nh, H // nh)
    w_o = p["attn"]["c_proj"]["kernel"].T.reshape(nh, H // nh, H)
    return v, w_o, p["attn"]["c_proj"]["bias"]


def _llama_layer(model, l, x):
    spec = model.adapter.spec
    p = {k: np.asarray(a[l], np.float64) for k, a in model.adapter.params["layers"].items()}
    h = _rms_norm(x, p["attn_in"], spec.norm_eps)
    v = (h @ p["v"] + p["v_bias"]).reshape(len(x), spec.n_kv_heads, spec.head_dim)
    v = v[:, np.arange(spec.n_heads) // (spec.n_heads // spec.n_kv_heads)]  # head -> kv head
    w_o = p["o"].reshape(spec.n_heads, spec.head_dim, spec.hidden_size)
    return v, w_o, p["o_bias"]


def _reference(model, ids, mask):
    """Per-layer ALTI matrices ``[layers, L, L]`` and their rollout, with loops."""
    fns = model.adapter
    n = sum(1 for s in fns.sites() if s.endswith(".resid_post"))
    cap = jax.jit(lambda i, m: fns.forward(
        target_ids=i, target_mask=m, capture=tuple(
            f"blocks.{l}.{k}" for l in range(n)
            for k in ("resid_pre", "attn_pattern", "attn_out")))["captured"])(ids, mask)
    layer = _llama_layer if hasattr(fns, "spec") else _gpt2_layer
    L = ids.shape[1]
    mats = []
    for l in range(n):
        x = np.asarray(cap[f"blocks.{l}.resid_pre"][0], np.float64)
        a = np.asarray(cap[f"blocks.{l}.attn_pattern"][0], np.float64)   # [heads, L, L]
        v, w_o, b_o = layer(model, l, x)
        t = np.zeros((L, L, x.shape[-1]))
        for i in range(L):
            for j in range(L):
                for h in range(a.shape[0]):
                    t[i, j] += a[h, i, j] * (v[j, h] @ w_o[h])
        # the reference's decomposition rebuilds the model's attention output
        np.testing.assert_allclose(t.sum(1) + b_o, cap[f"blocks.{l}.attn_out"][0],
                                   atol=2e-5, rtol=1e-4)
        c = np.zeros((L, L))
        for i in range(L):
            y = x[i] + t[i].sum(0) + b_o
            for j in range(i + 1):
                tj = t[i, j] + (x[i] if i == j else 0.0)
                c[i, j] = max(0.0, np.abs(y).sum() - np.abs(y - tj).sum())
            c[i] /= c[i].sum()
        mats.append(c)
    roll = mats[0]
    for c in mats[1:]:
        roll = c @ roll
    return np.stack(mats), roll


@pytest.mark.parametrize("arch", ["gpt2", "native:llama"])
def test_equals_a_numpy_reference_from_the_parameters(arch):
    model = _model(arch)
    ids, mask = _ids(model)
    want_layers, want = _reference(model, ids, mask)
    got_layers = np.asarray(_contrib(model.adapter, target_ids=ids, target_mask=mask))[0]
    got = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask))[0]
    off = ~np.eye(want.shape[0], dtype=bool)
    assert want_layers[:, off].max() > 0.02   # tokens do mix: the test can see a wrong share
    np.testing.assert_allclose(got_layers, want_layers, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # defining properties: >= 0, rows sum to 1, nothing from later tokens
    L = got.shape[0]
    assert got.min() >= 0 and got_layers.min() >= 0
    np.testing.assert_allclose(got.sum(-1), np.ones(L), atol=1e-5)
    np.testing.assert_allclose(got_layers.sum(-1), np.ones(got_layers.shape[:2]), atol=1e-5)
    above = np.triu(np.ones((L, L), bool), 1)
    assert np.all(got[above] == 0) and np.all(got_layers[:, above] == 0)


def test_vmapped_program_equals_a_loop_over_tokens():
    """One forward per kept token (a Python loop) gives the same per-layer matrices; so does
    the chunked program (``token_batch_size``)."""
    model = _model("native:llama")
    fns = model.adapter
    ids, mask = _ids(model)
    n, L = fns.spec.n_layers, ids.shape[1]
    clean = jax.jit(lambda: fns.forward(target_ids=ids, target_mask=mask, capture=tuple(
        f"blocks.{l}.{k}" for l in range(n) for k in ("resid_pre", "attn_out")))["captured"])()
    restore = {f"blocks.{l}.resid_pre": (lambda _, v=clean[f"blocks.{l}.resid_pre"]: v)
               for l in range(1, n)}
    run = jax.jit(lambda keep: fns.forward(
        target_ids=ids, target_mask=mask, capture=tuple(f"blocks.{l}.attn_out" for l in range(n)),
        patch=dict(restore, **{f"blocks.{l}.value": lambda v: v * keep[None, :, None]
                               for l in range(n)}))["captured"])
    bias = run(jnp.zeros(L))
    per_token = [run(jnp.arange(L) == j) for j in range(L)]
    got = np.asarray(_contrib(fns, target_ids=ids, target_mask=mask))[0]
    for l in range(n):
        s = f"blocks.{l}.attn_out"
        x = np.asarray(clean[f"blocks.{l}.resid_pre"][0], np.float64)
        y = x + np.asarray(clean[s][0], np.float64)
        for i in range(L):
            row = []
            for j in range(i + 1):
                t = np.asarray(per_token[j][s][0, i] - bias[s][0, i], np.float64)
                t = t + (x[i] if i == j else 0.0)
                row.append(max(0.0, np.abs(y[i]).sum() - np.abs(y[i] - t).sum()))
            row = np.asarray(row) / np.sum(row)
            np.testing.assert_allclose(got[l, i, :i + 1], row, atol=1e-5)
    chunked = np.asarray(_contrib(fns, target_ids=ids, target_mask=mask, token_batch_size=3))[0]
    np.testing.assert_allclose(chunked, got, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "native:llama"])
def test_batch_invariance_through_attribute(arch):
    """method="alti": each step's row sums to 1 over the tokens its query sees, and a
    sequence alone equals the same sequence in a padded batch."""
    model = _model(arch)
    assert "alti" in jaxattr.list_methods()
    prompts, texts = ["The cat", "Kim has"], [TEXT, "Kim has a red ball and a cup"]
    out = model.attribute(prompts, texts, method="alti", show_progress=False)
    for i in range(2):
        a = out[i].target_attributions  # [L, T, 1]
        assert a.shape[-1] == 1
        np.testing.assert_allclose(np.nansum(a, axis=0), np.ones(a.shape[1:]), rtol=1e-5)
        alone = model.attribute(prompts[i], texts[i], method="alti",
                                show_progress=False)[0].target_attributions
        np.testing.assert_array_equal(np.isnan(a), np.isnan(alone))
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(alone), atol=1e-5)
    # the step's row is the rollout row of the position predicting it
    ids, mask = _ids(model)
    full = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask))[0]
    first = out[0].target_attributions[..., 0]                 # [L, T]
    start = out[0].attr_pos_start
    for t in range(first.shape[1]):
        q = start + t - 1
        np.testing.assert_allclose(first[:q + 1, t], full[q, :q + 1], atol=1e-6)


def test_padded_rows_change_nothing_in_the_function():
    """Right padding inside ``alti_scores``: the real block equals the unpadded result."""
    model = _model("gpt2")
    ids, mask = _ids(model)
    pad = jnp.concatenate([ids, jnp.zeros((1, 3), ids.dtype)], 1)
    pmask = jnp.concatenate([mask, jnp.zeros((1, 3), mask.dtype)], 1)
    L = ids.shape[1]
    alone = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask))[0]
    padded = np.asarray(_scores(model.adapter, target_ids=pad, target_mask=pmask))[0]
    np.testing.assert_allclose(padded[:L, :L], alone, atol=1e-6)
    assert np.all(padded[:L, L:] == 0)


def test_clear_errors():
    with pytest.raises(ValueError, match="decoder-only.*attention_rollout"):
        _model("marian").attribute("a b", "c d", method="alti")
    gemma2 = _model("native:gemma2")
    with pytest.raises(ValueError, match="post-attention norm"):
        alti_scores(gemma2.adapter, target_ids=jnp.ones((1, 3), jnp.int32),
                    target_mask=jnp.ones((1, 3)))
    # and the refusal is needed: there the attention output does not split over the tokens
    whole, parts = _splits_over_tokens(gemma2)
    assert np.abs(whole - parts).max() > 0.1 * np.abs(whole).max()
    with pytest.raises(ValueError, match="`layer` does not apply"):
        _model("gpt2").attribute("The cat", TEXT, method="alti", layer="blocks.0.attn_out")


def _splits_over_tokens(model):
    """Per-layer ``(attn_out − b, Σ_j T(·, j))`` from forwards that keep all value rows, none,
    or one (each layer's input clean): ALTI's premise, linearity in the values."""
    fns = model.adapter
    ids, mask = _ids(model)
    n = sum(1 for s in fns.sites() if s.endswith(".resid_post"))
    L = ids.shape[1]
    outs = tuple(f"blocks.{l}.attn_out" for l in range(n))

    @jax.jit
    def run(keep):
        clean = fns.forward(target_ids=ids, target_mask=mask, capture=tuple(
            f"blocks.{l}.resid_pre" for l in range(n)))["captured"]
        patch = {f"blocks.{l}.resid_pre": (lambda _, v=clean[f"blocks.{l}.resid_pre"]: v)
                 for l in range(1, n)}
        patch.update({f"blocks.{l}.value": lambda v: v * keep[None, :, None].astype(v.dtype)
                      for l in range(n)})
        out = fns.forward(target_ids=ids, target_mask=mask, capture=outs, patch=patch)
        return jnp.stack([out["captured"][s][0] for s in outs]).astype(jnp.float32)

    bias = run(jnp.zeros(L))
    whole = run(jnp.ones(L)) - bias
    parts = jax.vmap(lambda j: run(jnp.arange(L) == j) - bias)(jnp.arange(L)).sum(0)
    return np.asarray(whole), np.asarray(parts)


@pytest.mark.parametrize("arch", ["gptj", "bloom", "native:qwen3"])
def test_every_layout_splits_over_tokens_and_rows_sum_to_one(arch):
    """GPT-J (parallel attention and MLP), Bloom (fused per-head qkv, residual added inside its
    attention module) and native Qwen 3 (per-head q/k norms): the attention output is the
    sum of the per-token terms plus the bias, and ALTI's rows are distributions."""
    model = _model(arch)
    whole, parts = _splits_over_tokens(model)
    np.testing.assert_allclose(parts, whole, atol=1e-5 * max(1.0, np.abs(whole).max()))
    ids, mask = _ids(model)
    got = np.asarray(_scores(model.adapter, target_ids=ids, target_mask=mask))[0]
    assert got.min() >= 0
    np.testing.assert_allclose(got.sum(-1), np.ones(got.shape[0]), atol=1e-5)
    assert np.all(np.triu(got, 1) == 0)
