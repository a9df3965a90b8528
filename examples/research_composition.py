"""Composing attributions in JAX research code.

    python examples/research_composition.py

1. A custom target: the margin between the answer's logit and the best other logit, passed
   straight to ``model.attribute`` (any pure ``(logits, batch) -> [B, T]`` function works).
2. The gradient of an attribution with respect to the model parameters: how would each
   weight have to change so that the model relies *more* on the true cue? Attributions are
   differentiable JAX functions, so this is one ``jax.grad``.
"""
import jax
import jax.numpy as jnp

import jaxattr
from jaxattr.zoo import tasks

model = jaxattr.load_model("toy-recall")


def logit_margin(logits, batch):
    """z[y] - max_{v != y} z[v], per step: [B, T]."""
    target = jnp.take_along_axis(logits, batch.target_ids[..., None], -1)[..., 0]
    others = jnp.where(jax.nn.one_hot(batch.target_ids, logits.shape[-1]) > 0, -jnp.inf, logits)
    return target - others.max(-1)


ex = tasks.recall_examples(1, seed=11)[0]
out = model.attribute(ex["prompt"], ex["generated"], attributed_fn=logit_margin,
                      method="input_x_gradient", step_scores=("probability",))
seq = out.aggregate()[0]
print(f"{ex['prompt']!r} -> {ex['answer']!r}: share of the margin attributed to the cue "
      f"{seq.target[ex['cue_index']]!r}: {seq.target_attributions[ex['cue_index'], 0]:.2f}")

# --- gradient of an attribution w.r.t. the parameters -----------------------------------
tok = model.tokenizer
ids = jnp.asarray([tok(ex["prompt"])["input_ids"]])
answer = tok.convert_tokens_to_ids(ex["answer"])
cue = ex["cue_index"]


def cue_share(params):
    adapter = model.adapter.replace(params=params)
    emb = adapter.embed(ids)

    def score(e):
        logits = adapter.logits(target_ids=ids, target_mask=jnp.ones_like(ids), target_embeds=e)
        return jax.nn.log_softmax(logits[0, -1])[answer][None]

    attr = jnp.linalg.norm(jaxattr.input_x_gradient(score, emb)[0, 0], axis=-1)  # [L]
    return attr[cue] / attr.sum()


share, grads = jax.jit(jax.value_and_grad(cue_share))(model.params)
norms = jax.tree_util.tree_map(lambda g: float(jnp.linalg.norm(g)), grads)
flat = jax.tree_util.tree_flatten_with_path(norms)[0]
name, value = max(flat, key=lambda kv: kv[1])
print(f"cue share {float(share):.3f}; the parameter whose change moves it most: "
      f"{jax.tree_util.keystr(name)} (gradient norm {value:.3g})")
