"""FlexSelect's training-free rule at AdaptToken's budget (README "Baselines"): the same group
passes and attention ranking (method.md steps 2-3), but every group the same share of ``B``
(step 5 with all weights equal, so ``B_g = B / G`` up to one token by largest remainder,
capped at ``N_g`` with the overflow re-spread equally). The answer entropy is still computed
and reported (step 4) but weighs nothing. Steps 6-7 as AdaptToken."""
from __future__ import annotations

from . import Context, Selection, adapttoken


def check(cfg) -> None:
    """Lite (step 8) stops on the entropy signal, which FlexSelect switches off.

    Raises:
        ValueError: naming ``method`` when ``lite`` is on.
    """
    if cfg.lite:
        raise ValueError("method: 'flexselect' switches the entropy signal off, so lite does not apply")


def select(ctx: Context) -> Selection:
    """AdaptToken's selection with equal group weights (module docstring)."""
    return adapttoken.select(ctx, entropy_weighted=False)
