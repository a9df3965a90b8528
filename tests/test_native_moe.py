"""Mixture-of-experts layers of the native family (Mixtral, Qwen 3 MoE): the two formulations
against a plain NumPy per-token loop over the selected experts, gradients under jit and vmap,
the committed PyTorch checkpoints (logits and input x gradient are in
tests/test_native_reference.py, which covers every family), IG completeness, sites, and a clear
error for every refused configuration or checkpoint mismatch.

Top-k routing is discontinuous: the reference checkpoints were chosen (seeds) so that no token's
k-th and (k+1)-th router probabilities are near a tie (``router_margin`` in the record, at least
2.7e-3, about 1000x float32 rounding), so float32 cannot flip an expert choice and the
comparisons with PyTorch's float64 records are meaningful; the first test checks it."""
import copy
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr.models import (CheckpointError, NativeDecoder, UnsupportedConfigError,
                            params_from_tensors, read_tensors, spec_from_config)
from jaxattr.models.moe import moe_blocked, moe_dense, moe_mlp, moe_ragged
from jaxattr.models.spec import DecoderSpec

CKPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "native_side", "ckpt")
MOE = ["mixtral", "qwen3_moe"]


@functools.lru_cache(maxsize=None)
def _load(family):
    path = os.path.join(CKPT, family)
    return jaxattr.load_model(path), dict(np.load(os.path.join(path, "record.npz"))), \
        json.load(open(os.path.join(path, "texts.json")))


def _config(family):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(os.path.join(CKPT, family))


@jax.jit
def _logits(fns, ids, mask):
    return fns.logits(target_ids=ids, target_mask=mask)


@pytest.mark.parametrize("family", MOE)
def test_reference_cases_have_no_router_near_ties(family):
    _, rec, _ = _load(family)
    assert rec["router_margin"].shape == (3,)
    assert rec["router_margin"].min() > 1e-3


# ---------------------------------------------------------------- formulations vs NumPy loop

def _tiny(norm, *, E=4, k=2, H=8, F=6, seed=0):
    spec = DecoderSpec(model_type="mixtral", vocab_size=1, hidden_size=H, n_layers=1,
                       n_heads=1, n_kv_heads=1, head_dim=H, intermediate_size=F,
                       n_experts=E, experts_per_token=k, norm_topk_prob=norm)
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    p = {"router": jax.random.normal(ks[0], (H, E)),
         "gate": 0.5 * jax.random.normal(ks[1], (E, H, F)),
         "up": 0.5 * jax.random.normal(ks[2], (E, H, F)),
         "down": 0.5 * jax.random.normal(ks[3], (E, F, H))}
    h = jax.random.normal(ks[4], (2, 5, H))
    return spec, p, h


def _numpy_loop(p, h, k, norm):
    """One token at a time: softmax over the experts, the k largest, each selected expert's
    SwiGLU output times its (renormalised) probability."""
    p = {n: np.asarray(v, np.float64) for n, v in p.items()}
    x = np.asarray(h, np.float64).reshape(-1, h.shape[-1])
    out = np.zeros_like(x)
    for t in range(len(x)):
        z = x[t] @ p["router"]
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        chosen = np.argsort(-probs, kind="stable")[:k]
        weights = probs[chosen] / (probs[chosen].sum() if norm else 1.0)
        for e, w in zip(chosen, weights):
            g = x[t] @ p["gate"][e]
            a = g / (1 + np.exp(-g)) * (x[t] @ p["up"][e])
            out[t] += w * (a @ p["down"][e])
    return out.reshape(h.shape)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("formulation", [moe_dense, moe_ragged, moe_blocked])
def test_formulations_equal_a_numpy_loop(formulation, norm):
    spec, p, h = _tiny(norm)
    want = _numpy_loop(p, h, 2, norm)
    got = jax.jit(lambda p, h: formulation(spec, p, h, act=jax.nn.silu))(p, h)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("other", [moe_ragged, moe_blocked])
def test_gradients_agree_with_dense(other):
    spec, p, h = _tiny(True, seed=1)

    def loss(fn):
        return jax.jit(jax.grad(lambda p, h: jnp.sum(jnp.sin(fn(spec, p, h, act=jax.nn.silu))),
                                argnums=(0, 1)))

    (gp_d, gh_d), (gp_r, gh_r) = loss(moe_dense)(p, h), loss(other)(p, h)
    np.testing.assert_allclose(np.asarray(gh_d), np.asarray(gh_r), atol=1e-5, rtol=1e-5)
    for name in p:
        np.testing.assert_allclose(np.asarray(gp_d[name]), np.asarray(gp_r[name]), atol=1e-5,
                                   rtol=1e-5)
    # finite differences on the input (no expert choice flips for this small step)
    fn = jax.jit(lambda h: jnp.sum(jnp.sin(moe_dense(spec, p, h, act=jax.nn.silu))))
    d = jax.random.normal(jax.random.PRNGKey(3), h.shape)
    eps = 1e-3
    fd = (fn(h + eps * d) - fn(h - eps * d)) / (2 * eps)
    np.testing.assert_allclose(float(fd), float(jnp.vdot(gh_d, d)), rtol=1e-2)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_vmaps_cotangents_like_a_loop(impl):
    """Attribution vmaps one-hot cotangents (and IG steps) through the forward: the vmapped
    VJP equals a Python loop of VJPs."""
    spec, p, h = _tiny(False, seed=2)
    spec = dataclasses.replace(spec, moe_impl=impl)
    f = lambda h: moe_mlp(spec, p, h, act=jax.nn.silu)
    cts = jax.random.normal(jax.random.PRNGKey(4), (3,) + h.shape)
    _, vjp = jax.vjp(f, h)
    batched = jax.jit(jax.vmap(lambda c: vjp(c)[0]))(cts)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(vjp(cts[i])[0]),
                                   atol=1e-6, rtol=1e-6)
    steps = jnp.stack([h, 0.5 * h, -h])
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(steps)),
                               np.stack([np.asarray(f(s)) for s in steps]), atol=1e-6)


def test_ragged_under_vmap_is_refused_or_right():
    """Why ``"dense"`` is the default: JAX 0.10.2 has no batching rule for ``ragged_dot`` with
    unbatched expert weights, and says so (``NotImplementedError`` naming ``ragged_dot``). A
    JAX that can vmap it must give what a loop over the batch gives (then ``"ragged"`` can
    serve attribution too, where its lowering skips the unselected experts)."""
    spec, p, h = _tiny(True)
    hs = jnp.stack([h, -0.5 * h])
    fn = functools.partial(moe_ragged, spec, p, act=jax.nn.silu)
    try:
        batched = jax.vmap(fn)(hs)
    except NotImplementedError as e:
        assert "ragged_dot" in str(e)
        return
    np.testing.assert_allclose(np.asarray(batched), np.stack([np.asarray(fn(x)) for x in hs]),
                               atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("impl", ["ragged", "blocked"])
@pytest.mark.parametrize("family", MOE)
def test_other_formulations_equal_pytorch_too(family, impl):
    model, rec, _ = _load(family)
    fns = model.adapter
    assert fns.spec.n_experts == 4
    ragged = NativeDecoder(params=fns.params, spec=dataclasses.replace(fns.spec,
                                                                       moe_impl=impl))
    got = np.asarray(_logits(ragged, jnp.asarray(rec["ids"]), jnp.asarray(rec["mask"])))
    real = rec["mask"] > 0
    np.testing.assert_allclose(got[real], rec["logits_batch"][real], atol=1e-4, rtol=0)


def test_mixtral_checkpoint_is_bf16_and_loads_to_float32():
    from safetensors import safe_open
    with safe_open(os.path.join(CKPT, "mixtral", "model.safetensors"), "np") as f:
        assert f.get_slice("model.layers.0.block_sparse_moe.experts.3.w2.weight") \
            .get_dtype() == "BF16"
    model, _, _ = _load("mixtral")
    assert model.params["layers"]["gate"].shape == (3, 4, 32, 48)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(model.params))


def _with_spec(model, **changes):
    """``model`` with spec fields changed (same parameters)."""
    new = copy.copy(model)
    new.adapter = NativeDecoder(params=model.adapter.params,
                                spec=dataclasses.replace(model.adapter.spec, **changes))
    return new


@pytest.mark.parametrize("family", MOE)
def test_integrated_gradients_complete_when_routing_is_continuous(family):
    """With every expert selected (k = E) the routing never switches and the MoE MLP is smooth:
    IG meets its completeness check through the expert layers, as on dense models."""
    model, _, texts = _load(family)
    model = _with_spec(model, experts_per_token=4)
    out = model.attribute(texts["prompts"][:2], texts["texts"][:2],
                          method="integrated_gradients", attributed_fn="logprob", n_steps=64,
                          show_progress=False, prefix_groups=1)
    for seq in out.sequence_attributions:
        delta, change = jaxattr.model.completeness(seq)
        assert np.all(np.abs(delta) <= 1e-2 * np.maximum(np.abs(change), 1e-3))


def _experts_along(fns, ids, xs):
    """Every layer's selected experts ``[n_alpha, layers, L, k]`` for embeddings ``xs``,
    recomputed from the captured residual stream (independently of the MoE forward)."""
    from jaxattr.models.decoder import rms_norm
    from jaxattr.models.moe import route
    spec, layers = fns.spec, fns.params["layers"]
    n = spec.n_layers
    sites = tuple(f"blocks.{l}.{k}" for l in range(n) for k in ("resid_pre", "attn_out"))

    def one(x):
        c = fns.forward(target_ids=ids, target_mask=jnp.ones_like(ids), target_embeds=x,
                        capture=sites)["captured"]
        out = []
        for l in range(n):
            h = rms_norm(c[f"blocks.{l}.resid_pre"] + c[f"blocks.{l}.attn_out"],
                         layers["mlp_in"][l], spec)
            out.append(jnp.sort(route(spec, layers["router"][l], h)[1][0], axis=-1))
        return jnp.stack(out)

    return np.asarray(jax.lax.map(one, xs))


def test_integrated_gradients_gap_is_the_routing_jumps():
    """Top-k routing is discontinuous: along IG's straight path an expert choice can switch,
    and the score jumps there. IG integrates the gradient, which does not see the jumps, so
    its completeness gap Σ attributions − (s(x) − s(b)) equals minus the sum of the jumps.
    The jumps are measured here from the score on a fine grid of the path, at the cells where
    the routing (recomputed from captured activations) changes."""
    model, rec, _ = _load("mixtral")
    fns = model.adapter
    n = int(rec["length"][1])
    ids = jnp.asarray(rec["ids"][1:2, :n])
    x = fns.embed(ids)
    b = jnp.broadcast_to(fns.embed(jnp.full((1, 1), model.pad_token_id)), x.shape)
    pos, tok = n - 2, int(rec["ids"][1, n - 1])

    def score(x):
        logits = fns.logits(target_ids=ids, target_mask=jnp.ones_like(ids), target_embeds=x)
        return jax.nn.log_softmax(logits[0, pos])[tok][None]

    attr, delta = jaxattr.integrated_gradients(score, x, b, n_steps=256,
                                               return_convergence_delta=True)
    grid = jnp.linspace(0.0, 1.0, 1001)
    xs = b[None] + grid[:, None, None, None] * (x - b)[None]
    s = np.asarray(jax.lax.map(jax.jit(score), xs))[:, 0]
    direction = x - b
    g = np.asarray(jax.lax.map(jax.jit(lambda y: jnp.vdot(jax.grad(lambda z: score(z)[0])(y),
                                                          direction)), xs))
    experts = _experts_along(fns, ids, xs)
    switch = np.any(experts[1:] != experts[:-1], axis=(1, 2, 3))
    step = float(grid[1])
    smooth = 0.5 * (g[1:] + g[:-1]) * step          # trapezoid of the directional derivative
    jumps = (np.diff(s) - smooth)[switch]
    assert switch.sum() >= 2 and np.abs(jumps.sum()) > 0.05     # the path does switch
    # measured: gap 1.091, jumps -1.089 (47 switching cells of 1000)
    assert abs(float(delta[0]) + jumps.sum()) <= 0.02 * np.abs(jumps.sum()) + 2e-3
    # off the switching cells the trapezoid explains the score's change (no hidden jump)
    assert np.abs(np.diff(s) - smooth)[~switch].max() < 1e-4


def test_mlp_out_site_is_the_moe_output():
    """Captured sites satisfy the residual identity resid_post = resid_pre + attn_out +
    mlp_out, in the scanned path and in a layer run on its own (patched)."""
    model, rec, _ = _load("mixtral")
    fns = model.adapter
    ids, mask = jnp.asarray(rec["ids"]), jnp.asarray(rec["mask"])
    kinds = ("resid_pre", "attn_out", "mlp_out", "resid_post")
    sites = tuple(f"blocks.1.{k}" for k in kinds)
    for patch in (None, {"blocks.1.attn_out": lambda v: v}):
        c = fns.forward(target_ids=ids, target_mask=mask, capture=sites, patch=patch)["captured"]
        pre, attn, mlp, post = (np.asarray(c[s]) for s in sites)
        np.testing.assert_allclose(post, pre + attn + mlp, atol=1e-5)
        assert np.abs(mlp).max() > 0.1
    zero = fns.forward(target_ids=ids, target_mask=mask,
                       patch={"blocks.2.mlp_out": jnp.zeros_like})["logits"]
    assert np.abs(np.asarray(zero) - rec["logits_batch"]).max() > 1e-2


def test_router_probs_site():
    """``blocks.{l}.router_probs`` is the router's softmax (recomputed here in NumPy from the
    captured residual stream), and patching it steers the routing: a one-hot on expert 0 makes
    the MLP output expert 0's SwiGLU alone (Mixtral renormalises: weight 1 on expert 0, 0 on
    the runner-up)."""
    model, rec, _ = _load("mixtral")
    fns = model.adapter
    assert "blocks.1.router_probs" in model.sites()
    assert "blocks.1.router_probs" not in _load_dense_sites()
    ids, mask = jnp.asarray(rec["ids"]), jnp.asarray(rec["mask"])
    sites = ("blocks.1.resid_pre", "blocks.1.attn_out", "blocks.1.router_probs",
             "blocks.1.mlp_out")
    L = fns.params["layers"]
    eps = fns.spec.norm_eps

    def mlp_in(c):
        x = np.asarray(c["blocks.1.resid_pre"] + c["blocks.1.attn_out"], np.float64)
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * np.asarray(L["mlp_in"][1])

    c = fns.forward(target_ids=ids, target_mask=mask, capture=sites)["captured"]
    z = mlp_in(c) @ np.asarray(L["router"][1], np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert c["blocks.1.router_probs"].shape == ids.shape + (4,)
    np.testing.assert_allclose(np.asarray(c["blocks.1.router_probs"]), probs, atol=1e-5)

    onehot = jnp.zeros(ids.shape + (4,)).at[..., 0].set(1.0)
    c = fns.forward(target_ids=ids, target_mask=mask, capture=sites,
                    patch={"blocks.1.router_probs": lambda v: onehot})["captured"]
    h = mlp_in(c)
    g = h @ np.asarray(L["gate"][1, 0], np.float64)
    want = (g / (1 + np.exp(-g)) * (h @ np.asarray(L["up"][1, 0], np.float64))) \
        @ np.asarray(L["down"][1, 0], np.float64)
    np.testing.assert_allclose(np.asarray(c["blocks.1.mlp_out"]), want, atol=1e-5)


def _load_dense_sites():
    return jaxattr.load_model(os.path.join(CKPT, "mistral")).sites()


def test_deeplift_rescale_refuses_moe():
    model, _, texts = _load("mixtral")
    with pytest.raises(ValueError, match="mixture-of-experts"):
        model.attribute(texts["prompts"][:1], texts["texts"][:1], method="deeplift",
                        show_progress=False)


# ---------------------------------------------------------------- refusals

def _qwen3_moe(**changes):
    config = copy.deepcopy(_config("qwen3_moe"))
    for k, v in changes.items():
        setattr(config, k, v)
    return config


def test_mixed_dense_and_sparse_layers_are_refused_naming_mlp_only_layers():
    with pytest.raises(UnsupportedConfigError, match=r"mlp_only_layers.*layers \[1\]"):
        spec_from_config(_qwen3_moe(mlp_only_layers=[1]))


def test_mixed_dense_and_sparse_layers_are_refused_naming_decoder_sparse_step():
    with pytest.raises(UnsupportedConfigError, match=r"decoder_sparse_step.*layers \[0, 2\]"):
        spec_from_config(_qwen3_moe(decoder_sparse_step=2))


def test_top_k_larger_than_the_experts_is_refused():
    with pytest.raises(UnsupportedConfigError, match="num_experts_per_tok"):
        spec_from_config(_qwen3_moe(num_experts_per_tok=5))


def test_no_experts_is_the_dense_qwen3_computation():
    spec = spec_from_config(_qwen3_moe(num_experts=0))
    assert spec.n_experts == 0 and spec.intermediate_size == 48


def test_router_jitter_noise_is_training_only():
    config = _config("mixtral")
    noisy = copy.deepcopy(config)
    noisy.router_jitter_noise = 0.1
    assert spec_from_config(noisy) == spec_from_config(config)


def test_qwen2_moe_is_refused_naming_the_shared_expert(tmp_path):
    from safetensors.numpy import save_file
    from transformers import Qwen2MoeConfig
    Qwen2MoeConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1, num_experts=2).save_pretrained(tmp_path)
    save_file({"model.norm.weight": np.ones(8, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedConfigError, match="shared_expert_intermediate_size"):
        jaxattr.load_model(str(tmp_path))


@functools.lru_cache(maxsize=None)
def _tensors(family):
    return read_tensors(os.path.join(CKPT, family))


@pytest.mark.parametrize("case", ["missing-expert", "leftover-expert", "router-shape",
                                  "dense-mlp-leftover"])
def test_moe_checkpoint_mismatch_is_refused(case):
    family = "qwen3_moe" if case == "dense-mlp-leftover" else "mixtral"
    spec = spec_from_config(_config(family))
    tensors = dict(_tensors(family))
    moe = "model.layers.1.block_sparse_moe."
    if case == "missing-expert":
        del tensors[moe + "experts.2.w3.weight"]
        match = "lacks.*layers.1.block_sparse_moe.experts.2.w3.weight"
    elif case == "leftover-expert":
        tensors[moe + "experts.4.w1.weight"] = tensors[moe + "experts.3.w1.weight"]
        match = "does not use.*experts.4.w1.weight"
    elif case == "router-shape":
        tensors[moe + "gate.weight"] = jnp.zeros((5, 32))
        match = "block_sparse_moe.gate.weight has shape"
    else:
        tensors["model.layers.0.mlp.gate_proj.weight"] = jnp.zeros((48, 32))
        match = "does not use.*layers.0.mlp.gate_proj.weight"
    with pytest.raises(CheckpointError, match=match):
        params_from_tensors(spec, tensors)
