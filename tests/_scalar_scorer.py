"""A scorer skeleton for the faithfulness tests: token ``v``'s embedding is the scalar ``w[v]``
and erasing it gives 0 (zero baseline), so each token's contribution to a sum is known."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxattr.results import AttributionOutput, SequenceAttribution


class ScalarTokens(struct.PyTreeNode):
    """``embed``/``baseline`` of the scorer protocol; subclasses define ``score``."""
    w: jax.Array
    fill_id: int = struct.field(pytree_node=False, default=0)

    def embed(self, ids, side):
        return self.w[ids][..., None]

    def baseline(self, ids, side):
        return jnp.zeros(ids.shape + (1,), self.w.dtype)


def decoder_output(ids_per_seq, attr_per_seq, n_prompt):
    """Decoder-only style output: target = prompt + generated ids, one column per generated
    token (step ``t`` scores ``attr[:n_prompt + t]``), NaN above each step's prefix."""
    seqs = []
    for ids, attr in zip(ids_per_seq, attr_per_seq):
        L = len(ids)
        col = np.full((L, L - n_prompt), np.nan, np.float32)
        for t in range(L - n_prompt):
            col[:n_prompt + t, t] = attr[:n_prompt + t]
        seqs.append(SequenceAttribution(
            source=None, target=[str(i) for i in ids], source_attributions=None,
            target_attributions=col, step_scores={}, attr_pos_start=n_prompt, attr_pos_end=L,
            target_ids=list(ids)))
    return AttributionOutput(seqs, {"method": "synthetic"})
