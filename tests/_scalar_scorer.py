"""A scorer skeleton for the faithfulness tests: token ``v``'s embedding is the scalar ``w[v]``
and erasing it gives 0 (zero baseline), so each token's contribution to a sum is known."""
import jax
import jax.numpy as jnp
from flax import struct


class ScalarTokens(struct.PyTreeNode):
    """``embed``/``baseline`` of the scorer protocol; subclasses define ``score``."""
    w: jax.Array
    fill_id: int = struct.field(pytree_node=False, default=0)

    def embed(self, ids, side):
        return self.w[ids][..., None]

    def baseline(self, ids, side):
        return jnp.zeros(ids.shape + (1,), self.w.dtype)
