"""kernkit as a Hugging Face transformers attention implementation, on tiny randomly
initialised models built from configs (no downloads): logits, gradients and greedy
generation with the KV cache against transformers' own sdpa / eager attention."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kernkit.integrations import hf as kk_hf  # noqa: E402

NAME = kk_hf.register()


def _pair(config_cls, reference="sdpa", **cfg):
    """The same random model twice: with the reference attention and with kernkit."""
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, attention_dropout=0.0)
    base.update(cfg)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(config_cls(**base), attn_implementation=reference)
    ours = transformers.AutoModelForCausalLM.from_config(config_cls(**base), attn_implementation=NAME)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def _ids(B, S, seed=1):
    return torch.randint(3, 97, (B, S), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernkit kernels the integration calls (proves the model really uses them)."""
    counts = {"flash_attn": 0, "flash_attn_varlen": 0}
    for name in counts:
        real = getattr(kk_hf, name)

        def counted(*a, _real=real, _name=name, **k):
            counts[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(kk_hf, name, counted)
    return counts


def test_registered_name_resolves():
    from transformers import AttentionInterface
    assert AttentionInterface._global_mapping[NAME] is kk_hf.attention_forward


@pytest.mark.parametrize("S", [1, 17, 40])
def test_llama_logits_match_sdpa(S, calls):
    ref, ours = _pair(transformers.LlamaConfig)
    ids = _ids(2, S)
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    assert (a - b).abs().max() < 2e-5
    assert calls == {"flash_attn": 2, "flash_attn_varlen": 0}   # one call per layer, no dense mask


def test_llama_left_padding_matches_sdpa(calls):
    ref, ours = _pair(transformers.LlamaConfig)
    ids = _ids(3, 21)
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[0, :5] = 0      # left padding of different lengths
    mask[2, :11] = 0
    with torch.no_grad():
        a = ref(ids, attention_mask=mask).logits
        b = ours(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max() < 2e-5
    assert calls == {"flash_attn": 0, "flash_attn_varlen": 2}


def test_llama_gradients_match_sdpa():
    ref, ours = _pair(transformers.LlamaConfig)
    ids = _ids(2, 19)
    for m in (ref, ours):
        m.train()
        m(ids, labels=ids).loss.backward()
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5 * max(1.0, p.grad.abs().max().item()), name


@pytest.mark.parametrize("padded", [False, True])
def test_generation_with_kv_cache_matches_sdpa(padded, calls):
    ref, ours = _pair(transformers.LlamaConfig)
    ids = _ids(2, 9)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :4] = 0
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        a, b = ref.generate(ids, **kw), ours.generate(ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    for sa, sb in zip(a.scores, b.scores):
        assert (sa - sb).abs().max() < 1e-4
    assert calls["flash_attn_varlen" if padded else "flash_attn"] == 2 * 12   # prefill + 11 cached steps


def test_sliding_window_matches_sdpa():
    ref, ours = _pair(transformers.MistralConfig, sliding_window=6)
    ids = _ids(2, 30)
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
        full = transformers.AutoModelForCausalLM.from_config(
            transformers.MistralConfig(**{**ref.config.to_dict(), "sliding_window": None}),
            attn_implementation=NAME)
        full.load_state_dict(ref.state_dict())
        c = full.eval()(ids).logits
    assert (a - b).abs().max() < 2e-5
    assert (c - b).abs().max() > 1e-3   # the window really changes the result


def test_gemma2_softcap_and_window_match_eager():
    ref, ours = _pair(transformers.Gemma2Config, reference="eager", head_dim=16, sliding_window=5,
                      attn_logit_softcapping=2.0, final_logit_softcapping=None, query_pre_attn_scalar=16)
    ids = _ids(2, 23)
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    assert (a - b).abs().max() < 2e-5


def test_bad_mask_and_options():
    q = torch.randn(1, 2, 5, 8)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="2-D padding mask"):
        kk_hf.attention_forward(module, q, q, q, torch.ones(1, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        kk_hf.attention_forward(module, q, q, q, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="s_aux"):
        kk_hf.attention_forward(module, q, q, q, None, s_aux=torch.zeros(2))
    module.train()
    with pytest.raises(NotImplementedError, match="dropout"):
        kk_hf.attention_forward(module, q, q, q, None, dropout=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_on_cuda_kernels(gpu, dtype, calls):
    # the integration on CUDA tensors (here: the CUDA kernels under simt): padded logits, gradients
    # and cached generation against transformers' sdpa on the same weights
    ref, ours = _pair(transformers.LlamaConfig)
    ref, ours = ref.to(dtype), ours.to(dtype).to(gpu.device)
    ids = _ids(2, 13)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    tol = 2e-5 if dtype == torch.float32 else 0.1
    with torch.no_grad():
        a = ref(ids, attention_mask=mask).logits
        b = ours(ids.to(gpu.device), attention_mask=mask.to(gpu.device)).logits.cpu()
    assert (a[mask.bool()] - b[mask.bool()]).abs().max() < tol
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        ga, gb = ref.generate(ids, attention_mask=mask, **kw), ours.generate(
            ids.to(gpu.device), attention_mask=mask.to(gpu.device), **kw)
    for sa, sb in zip(ga.scores, gb.scores):
        assert (sa - sb.cpu()).abs().max() < 10 * tol
    if dtype == torch.float32:
        assert torch.equal(ga.sequences, gb.sequences.cpu())
        for m, x in ((ref, ids), (ours, ids.to(gpu.device))):
            m.train()
            m(x, labels=x).loss.backward()
        for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
            assert (p.grad - q.grad.cpu()).abs().max() <= 1e-4 * max(1.0, p.grad.abs().max().item()), name
    if gpu.session:
        names = {k.split("<")[0] for k in gpu.session.kernels}
        assert ("flash_fwd_f32_kernel" if dtype == torch.float32 else "flash_fwd_tc_kernel") in names
