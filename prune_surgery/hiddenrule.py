"""The residual-stream rule that keeps hidden pruning exact with every eps unchanged.

One factor per tensor role, derived from the table's `norm`, `residual`, `embed_scale` and
tying marks; the plan multiplies each written tensor by it.
"""

from __future__ import annotations

from .arch import Architecture, TensorRole


def hidden_factor(arch: Architecture, role: TensorRole, hidden_scale: float, tied: bool) -> float | None:
    """The factor that keeps hidden pruning exact for this tensor, or None.

    Every eps stays as it is; instead the residual stream is scaled by c = sqrt(d'/d)
    (`hidden_scale` is 1/c): an RMSNorm over the d' kept channels of c*x then equals
    c * RMSNorm(x) over d with x's pruned channels zero.  So what adds into the stream
    (`residual: write`: embeddings, o_proj, down_proj, their biases) is multiplied by c,
    what reads it raw (`residual: read`, OLMo's projections) by 1/c, and a norm that
    reads it (`norm: true`, `norm: final`) has its weight (or 1 + w) multiplied by 1/c; a
    norm whose output adds into the stream (`norm: post`) reads c * y and writes c * norm(y)
    unchanged.  `embed_scale` (the model multiplies by sqrt(hidden_size), which becomes
    sqrt(d')) adds 1/c.  A tied lm_head is the embedding: it carries the embedding's factor,
    which what feeds the lm_head (`norm: final`, `feeds_head`: a LayerNorm bias) divides out.
    """
    if hidden_scale == 1.0:
        return None
    factor = stream_factor(role, hidden_scale)
    if role.norm_final and tied:
        head = next((r for r in arch.roles.values() if r.tied_to), None)
        if head is not None and head.tied_to in arch.roles:
            factor /= stream_factor(arch.roles[head.tied_to], hidden_scale)
    return None if factor == 1.0 else factor


def stream_factor(role: TensorRole, inverse_c: float) -> float:
    """The residual-stream rule's factor for one tensor (see hidden_factor), before tying."""
    factor = inverse_c if role.norm else 1.0
    factor *= {"write": 1 / inverse_c, "read": inverse_c}.get(role.residual, 1.0)
    return factor * inverse_c if role.embed_scale else factor
