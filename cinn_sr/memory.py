"""Memory-saving training of SRFlow: the flow backpropagates by inversion and the encoder
trunk is gradient-checkpointed, so the stored activations do not grow with K, L or the
number of RRDB blocks.

`set_memory_saving(model, True)` makes every `nll`/`encode` under grad run the flow through
`cinn_sr.blocks.MemorySavingFlow` (same values and gradients; each flow node's input is
reconstructed from its output in the backward pass) and checkpoints each RRDB block of the
encoder trunk. Passes without grad (validation, sampling) are unchanged.
"""

from __future__ import annotations

from cinn_sr.blocks import MemorySavingFlow
from cinn_sr.model import SRFlow


def set_memory_saving(model: SRFlow, on: bool = True) -> None:
    """Switch memory-saving training on or off for `model`."""
    model.memory_saving = MemorySavingFlow(model.flow) if on else None
    model.encoder.checkpoint_trunk = on
