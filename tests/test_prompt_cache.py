"""Cross-attention K/V per prompt: the stock computation, with the text projected once per prompt."""

import copy

import torch

from headforcing.models.specs import TINY, build_transformer
from headforcing.engine.prompt_cache import install_prompt_cache


def test_same_outputs_and_one_projection_per_prompt():
    stock = build_transformer(TINY, seed=2)
    cached = copy.deepcopy(stock)
    install_prompt_cache(cached)
    calls = []
    for block in cached.blocks:
        block.attn2.to_k.register_forward_hook(lambda *a: calls.append(1))
    prompts = [torch.randn(1, TINY.text_len, TINY.transformer["text_dim"]) for _ in range(2)]
    x = torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        for prompt in (prompts[0], prompts[0], prompts[1], prompts[1], prompts[0]):
            for t in (900.0, 0.0):
                args = dict(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=prompt, return_dict=False)
                a, b = stock(**args)[0], cached(**args)[0]
                assert (a - b).abs().max() < 1e-6
            x = x + 0.1
    assert len(calls) == 2 * len(cached.blocks)  # two prompts, both still held (newest 2): one projection each
    assert cached.state_dict().keys() == stock.state_dict().keys()


def test_training_bypasses_the_cache():
    model = build_transformer(TINY, seed=2).requires_grad_(True)
    install_prompt_cache(model)
    prompt = torch.randn(1, TINY.text_len, TINY.transformer["text_dim"])
    x = torch.randn(1, 16, 3, 4, 4)
    for _ in range(2):  # a second backward through a cached tensor would fail
        out = model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=prompt, return_dict=False)[0]
        out.square().mean().backward()
    assert model.condition_embedder.text_embedder.linear_1.weight.grad is not None
