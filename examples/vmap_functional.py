"""Vectorising attribution with ``jax.vmap`` on the functional API.

    python examples/vmap_functional.py

The functional core takes any score function. Here the score is the log-probability of the
answer at the last position of a recall prompt, as a function of the prompt's token
embeddings; ``jax.vmap`` attributes a whole batch of prompts in one compiled call.
"""
import jax
import jax.numpy as jnp
import numpy as np

import jaxattr
from jaxattr.zoo import tasks

model = jaxattr.load_model("toy-recall")
adapter, tok = model.adapter, model.tokenizer
examples = tasks.recall_examples(32, seed=3, n_facts=(2,))     # equal lengths: stackable
ids = jnp.asarray([tok(e["prompt"])["input_ids"] for e in examples])          # [N, L]
answers = jnp.asarray([tok.convert_tokens_to_ids(e["answer"]) for e in examples])
embeds = adapter.embed(ids)                                                   # [N, L, H]


def score(emb, row_ids, answer):
    """log p(answer | prompt) as a function of the embeddings ``emb [L, H]`` -> ``[1]``."""
    logits = adapter.logits(target_ids=row_ids[None], target_mask=jnp.ones_like(row_ids)[None],
                            target_embeds=emb[None])
    return jax.nn.log_softmax(logits[0, -1])[answer][None]


@jax.jit
def attribute_all(embeds, ids, answers):
    one = lambda e, i, a: jaxattr.input_x_gradient(lambda x: score(x, i, a), e)[0]  # [L, H]
    return jax.vmap(one)(embeds, ids, answers)                                     # [N, L, H]


attr = attribute_all(embeds, ids, answers)
per_token = jnp.linalg.norm(attr, axis=-1)                                          # [N, L]
top = np.asarray(jnp.argmax(per_token, axis=-1))
hits = sum(int(t) == e["cue_index"] for t, e in zip(top, examples))
print(f"attributed {attr.shape[0]} prompts in one vmapped call; the top token is the true "
      f"cue in {hits}/{len(examples)}")
# The vmapped program is the one-prompt program applied to each prompt:
loop = jnp.stack([jaxattr.input_x_gradient(lambda x: score(x, i, a), e)[0]
                  for e, i, a in zip(embeds[:4], ids[:4], answers[:4])])
print(f"max |vmapped - one prompt at a time| = {float(jnp.abs(attr[:4] - loop).max()):.1e}")
