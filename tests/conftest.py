"""Shared fixtures: tiny random Hugging Face checkpoints built on the fly (no downloads)."""

from __future__ import annotations

import pytest
import torch
import transformers

import tests.typecheck  # noqa: F401  (the checker --jaxtyping-packages names; imported before mmlens)

from mmlens import HookedVLM
from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_llava_config

# The test models are tiny: one thread is fastest and immune to oversubscription on shared cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """``make(**tiny_llava_config_kwargs) -> directory`` holding a saved random checkpoint (cached)."""
    made: dict[tuple, str] = {}

    def make(seed: int = 0, **kwargs) -> str:
        key = (seed, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in made:
            path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_llava_config(**kwargs), seed)
            made[key] = str(path)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_pair(checkpoint_factory):
    """(HookedVLM, Hugging Face model) for the default tiny Llama + CLIP checkpoint."""
    path = checkpoint_factory(n_kv_heads=2)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    return HookedVLM.from_pretrained(path), hf


@pytest.fixture(autouse=True)
def _no_leaked_hooks(request):
    """Every test must leave models without hooks."""
    yield
    if "tiny_pair" in request.fixturenames:
        model = request.getfixturevalue("tiny_pair")[0]
        leaked = [name for name, hp in model.hook_dict.items() if hp.has_hooks()]
        model.reset_hooks(including_permanent=True)
        assert not leaked, f"hooks leaked: {leaked[:5]}"


def make_batch(cfg, batch: int = 2, n_text: int = 10, pad: tuple[int, ...] = (), seed: int = 0):
    """Random prompts with one image each, the image after 3 text tokens; ``pad[i]`` left-pads row i."""
    g = torch.Generator().manual_seed(seed)
    n_img = cfg.image_seq_length
    length = n_text + n_img
    ids = torch.randint(cfg.image_token_index + 1, cfg.decoder.d_vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        p = pad[i] if i < len(pad) else 0
        ids[i, :p] = 0
        mask[i, :p] = 0
        ids[i, p + 3 : p + 3 + n_img] = cfg.image_token_index
    px = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    return ids, px, mask
