"""Quantizers of the stage-1 tokenizer: cosine NormEMA VQ (assignment, straight-through, k-means init,
EMA, padding, eval, dead-code restart, multi-process all-reduce, state dict, dtypes) and FSQ."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fmrilm.configuration_fmrilm import FmriTokenizerConfig
from fmrilm.quantization_fmri_tokenizer import (
    FiniteScalarQuantizer,
    NormEMAVectorQuantizer,
    QuantizerOutput,
    build_quantizer,
)


def _unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _vq_with_codebook(codebook: torch.Tensor, **kwargs) -> NormEMAVectorQuantizer:
    """A VQ whose codebook is set by hand (no k-means), in training mode."""
    quantizer = NormEMAVectorQuantizer(codebook.shape[0], codebook.shape[1], kmeans_init=False, **kwargs)
    quantizer.code_vectors.copy_(codebook)
    return quantizer.train()


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def _assert_same_buffers(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


# ---------------------------------------------------------------------------------------------
# Assignment and straight-through
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_assignment_equals_brute_force_argmax_for_every_chunk_size(chunk_size):
    torch.manual_seed(0)
    quantizer = NormEMAVectorQuantizer(37, 8, kmeans_init=False, chunk_size=chunk_size).eval()
    z = torch.randn(3, 50, 8) * 5.0
    reference = (F.normalize(z.double(), dim=-1) @ quantizer.codebook.double().T).argmax(dim=-1)
    codes = quantizer.assign(z)
    assert codes.dtype == torch.long and codes.shape == (3, 50)
    assert torch.equal(codes, reference)
    assert torch.equal(quantizer(z).codes, reference)


def test_straight_through_gradient_and_no_codebook_gradient():
    torch.manual_seed(1)
    quantizer = NormEMAVectorQuantizer(16, 6, kmeans_init=False)
    z = F.normalize(torch.randn(10, 6), dim=-1).requires_grad_()
    upstream = torch.randn(10, 6)
    codebook_before = quantizer.codebook.clone()
    output = quantizer(z)
    # Forward: the code vectors (of the codebook before this step's EMA update).
    torch.testing.assert_close(output.quantized, codebook_before[output.codes], rtol=0, atol=1e-6)
    (output.quantized * upstream).sum().backward()
    # Backward: identity to the normalised input, i.e. for a unit input the tangent projection of
    # the upstream gradient (the radial part has no effect on a normalised vector).
    expected = upstream - (upstream * z.detach()).sum(-1, keepdim=True) * z.detach()
    torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=1e-6)
    assert list(quantizer.parameters()) == []
    assert not quantizer.codebook.requires_grad and quantizer.codebook.grad is None


def test_commitment_loss_is_weighted_mse_over_valid_positions_and_reaches_the_input():
    codebook = _unit([1.0, 0.0], [0.0, 1.0])
    quantizer = _vq_with_codebook(codebook, commitment_weight=0.25).eval()
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0], [-7.0, 1.0]], requires_grad=True)
    mask = torch.tensor([True, True, False])
    output = quantizer(z, mask)
    # Row 0: unit (0.6, 0.8) -> code (0, 1): squared error (0.36 + 0.04) / 2 = 0.2; row 1: exact.
    torch.testing.assert_close(output.commitment_loss, torch.tensor(0.25 * (0.2 + 0.0) / 2))
    output.commitment_loss.backward()
    assert z.grad[0].abs().sum() > 0 and torch.equal(z.grad[2], torch.zeros(2))


def test_perplexity_and_used_codes_count_valid_positions_only():
    codebook = _unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    quantizer = _vq_with_codebook(codebook).eval()
    z = codebook[[0, 0, 0, 1, 2, 2]]
    mask = torch.tensor([True, True, True, True, False, False])
    output = quantizer(z, mask)
    probabilities = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(output.perplexity, torch.exp(-(probabilities * probabilities.log()).sum()))
    assert int(output.used_codes) == 2
    uniform = quantizer(codebook)
    torch.testing.assert_close(uniform.perplexity, torch.tensor(3.0))
    assert int(uniform.used_codes) == 3
    nothing_valid = quantizer(z, torch.zeros(6, dtype=torch.bool))
    assert float(nothing_valid.perplexity) == 1.0 and int(nothing_valid.used_codes) == 0
    assert float(nothing_valid.commitment_loss) == 0.0
    assert isinstance(output, QuantizerOutput)


# ---------------------------------------------------------------------------------------------
# k-means initialisation
# ---------------------------------------------------------------------------------------------


def _mixture(n_clusters: int, per_cluster: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=generator), dim=-1) * 3.0
    points = centres.repeat_interleave(per_cluster, 0) + spread * torch.randn(
        n_clusters * per_cluster, dim, generator=generator
    )
    return F.normalize(centres, dim=-1), points[torch.randperm(len(points), generator=generator)]


def test_kmeans_init_places_unit_codes_on_the_clusters_of_the_first_batch():
    centres, points = _mixture(n_clusters=4, per_cluster=100, dim=8, spread=0.1, seed=0)
    torch.manual_seed(0)
    quantizer = NormEMAVectorQuantizer(32, 8, kmeans_iters=10, dead_code_steps=0).train()
    assert not bool(quantizer.initialized)
    quantizer(points)
    codebook = quantizer.codebook
    assert bool(quantizer.initialized)
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(32))
    similarity = codebook @ centres.T  # (codes, clusters)
    assert similarity.max(dim=1).values.min() > 0.95  # every code sits on a cluster
    assert similarity.max(dim=0).values.min() > 0.99  # every cluster has a code
    # Deterministic given torch's RNG state.
    torch.manual_seed(0)
    again = NormEMAVectorQuantizer(32, 8, kmeans_iters=10, dead_code_steps=0).train()
    again(points)
    assert torch.equal(again.codebook, codebook)


def test_kmeans_init_samples_with_replacement_when_the_batch_is_smaller_than_the_codebook():
    torch.manual_seed(3)
    rows = F.normalize(torch.randn(5, 4), dim=-1)
    quantizer = NormEMAVectorQuantizer(16, 4, kmeans_iters=3, dead_code_steps=0).train()
    quantizer(rows)
    best_match = (quantizer.codebook @ rows.T).max(dim=1).values
    torch.testing.assert_close(best_match, torch.ones(16))


def test_kmeans_init_ignores_padding_and_waits_for_a_batch_with_valid_rows():
    centres, points = _mixture(n_clusters=2, per_cluster=50, dim=6, spread=0.05, seed=1)
    padding_direction = -(centres[0] + centres[1])
    padding = padding_direction.expand(40, 6) * 10.0
    torch.manual_seed(0)
    quantizer = NormEMAVectorQuantizer(8, 6, dead_code_steps=0).train()
    quantizer(padding, torch.zeros(40, dtype=torch.bool))
    assert not bool(quantizer.initialized)
    z = torch.cat([points, padding])
    mask = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(40, dtype=torch.bool)])
    quantizer(z, mask)
    assert bool(quantizer.initialized)
    assert (quantizer.codebook @ F.normalize(padding_direction, dim=0)).max() < 0.5
    assert (quantizer.codebook @ centres.T).max(dim=1).values.min() > 0.98


# ---------------------------------------------------------------------------------------------
# EMA update, padding, eval mode
# ---------------------------------------------------------------------------------------------


def test_ema_update_equals_a_hand_computed_update():
    codebook = _unit([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    decay = 0.9
    quantizer = _vq_with_codebook(codebook, decay=decay, dead_code_steps=0)
    z = torch.tensor([[2.0, 0.2], [1.0, -0.1], [0.1, 3.0]])
    output = quantizer(z)
    assert output.codes.tolist() == [0, 0, 1]

    def normalise(v):
        norm = math.hypot(*v)
        return [x / norm for x in v]

    a, b, c = (normalise(row) for row in z.tolist())
    mean_0 = normalise([a[0] + b[0], a[1] + b[1]])
    expected_0 = normalise([decay * 1.0 + (1 - decay) * mean_0[0], decay * 0.0 + (1 - decay) * mean_0[1]])
    expected_1 = normalise([decay * 0.0 + (1 - decay) * c[0], decay * 1.0 + (1 - decay) * c[1]])
    expected = torch.tensor([expected_0, expected_1, [-1.0, 0.0]])
    torch.testing.assert_close(quantizer.codebook, expected, rtol=0, atol=1e-6)
    assert quantizer.steps_since_used.tolist() == [0, 0, 1]
    torch.testing.assert_close(quantizer.usage_ema, (1 - decay) * torch.tensor([2 / 3, 1 / 3, 0.0]))


def test_padding_never_changes_the_codebook_the_statistics_or_the_losses():
    torch.manual_seed(5)
    codebook = F.normalize(torch.randn(6, 4), dim=-1)
    valid = torch.randn(2, 7, 4)
    padding = torch.randn(2, 3, 4) * 100.0
    plain = _vq_with_codebook(codebook, dead_code_steps=2)
    padded = _vq_with_codebook(codebook, dead_code_steps=2)
    mask = torch.cat([torch.ones(2, 7, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    for _ in range(2):  # includes a step with restarts, which must draw from valid rows only
        torch.manual_seed(11)
        expected = plain(valid)
        torch.manual_seed(11)
        got = padded(torch.cat([valid, padding], dim=1), mask.long())  # integer 0/1 masks are accepted
        _assert_same_buffers(_buffers(plain), _buffers(padded))
        torch.testing.assert_close(got.commitment_loss, expected.commitment_loss)
        torch.testing.assert_close(got.perplexity, expected.perplexity)
        assert torch.equal(got.used_codes, expected.used_codes)
        assert torch.equal(got.codes[:, :7], expected.codes)


def test_eval_mode_never_changes_buffers():
    torch.manual_seed(2)
    for quantizer in (NormEMAVectorQuantizer(8, 4), NormEMAVectorQuantizer(8, 4, kmeans_init=False, dead_code_steps=1)):
        quantizer.eval()
        before = _buffers(quantizer)
        for _ in range(3):
            quantizer(torch.randn(20, 4))
        _assert_same_buffers(before, _buffers(quantizer))


# ---------------------------------------------------------------------------------------------
# Dead-code restart
# ---------------------------------------------------------------------------------------------


def test_dead_code_restart_after_exactly_dead_code_steps_from_batch_rows():
    codebook = _unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0])
    quantizer = _vq_with_codebook(codebook, dead_code_steps=3)
    batch = torch.tensor([[1.0, 0.1, 0.0], [0.9, -0.1, 0.05], [0.1, 1.0, 0.0], [0.0, 0.8, -0.1]])
    for step in (1, 2):
        quantizer(batch)
        assert quantizer.steps_since_used.tolist() == [0, 0, step]
        assert torch.equal(quantizer.codebook[2], codebook[2])  # not before dead_code_steps
    quantizer(batch)
    assert quantizer.steps_since_used.tolist() == [0, 0, 0]
    restarted = quantizer.codebook[2]
    assert not torch.allclose(restarted, codebook[2])
    torch.testing.assert_close(restarted.norm(), torch.tensor(1.0))
    assert (F.normalize(batch, dim=-1) @ restarted).max() > 0.999  # re-seeded from this batch


def test_dead_code_steps_zero_disables_restarts():
    codebook = _unit([1.0, 0.0], [-1.0, 0.0])
    quantizer = _vq_with_codebook(codebook, dead_code_steps=0)
    for _ in range(5):
        quantizer(torch.tensor([[1.0, 0.2], [1.0, -0.2]]))
    assert quantizer.steps_since_used.tolist() == [0, 5]
    assert torch.equal(quantizer.codebook[1], codebook[1])


# ---------------------------------------------------------------------------------------------
# Multi-process all-reduce (2 gloo processes on CPU)
# ---------------------------------------------------------------------------------------------

K, D = 12, 5


def _distributed_data():
    generator = torch.Generator().manual_seed(7)
    batches = [torch.randn(2, 2, 10, D, generator=generator) for _ in range(3)]  # (step)[rank] (2, 10, D)
    masks = [torch.rand(2, 2, 10, generator=generator) > 0.3 for _ in range(3)]
    masks[2][1] = False  # rank 1 has only padding in the last step
    return batches, masks


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        batches, masks = _distributed_data()
        torch.manual_seed(0)
        ema = NormEMAVectorQuantizer(K, D, decay=0.8, kmeans_init=False, dead_code_steps=0).train()
        for z, mask in zip(batches, masks):
            ema(z[rank], mask[rank])
        # Different RNG on each rank on purpose: k-means init and restarts must still agree.
        torch.manual_seed(100 + rank)
        restarting = NormEMAVectorQuantizer(K, D, decay=0.8, kmeans_iters=2, dead_code_steps=1).train()
        codebooks, codes = [], []
        for z, mask in zip(batches, masks):
            codes.append(restarting(z[rank], mask[rank]).codes)
            codebooks.append(restarting.codebook.clone())
        torch.save({"ema": _buffers(ema), "codebooks": codebooks, "codes": codes}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_update_like_one_process_on_the_union(tmp_path):
    # spawn, not fork: a forked child of a process that has run torch's OpenMP pool can hang.
    torch.multiprocessing.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    batches, masks = _distributed_data()

    # EMA statistics summed across processes: same codebook as one process on the union.
    torch.manual_seed(0)
    single = NormEMAVectorQuantizer(K, D, decay=0.8, kmeans_init=False, dead_code_steps=0).train()
    for z, mask in zip(batches, masks):
        single(torch.cat([z[0], z[1]]), torch.cat([mask[0], mask[1]]))
    for rank in ranks:
        for name, value in _buffers(single).items():
            torch.testing.assert_close(rank["ema"][name], value, rtol=0, atol=1e-6)

    # k-means init and dead-code restarts: identical on both ranks, new codes from the batch.
    restarted_codes = 0
    for step, (z, mask) in enumerate(zip(batches, masks)):
        assert torch.equal(ranks[0]["codebooks"][step], ranks[1]["codebooks"][step])
        used = torch.unique(torch.cat([ranks[r]["codes"][step][mask[r]] for r in range(2)]))
        unused = torch.ones(K, dtype=torch.bool)
        unused[used] = False
        valid_rows = F.normalize(torch.cat([z[r][mask[r]] for r in range(2)]), dim=-1)
        if unused.any():
            restarted = ranks[0]["codebooks"][step][unused]
            assert (restarted @ valid_rows.T).max(dim=1).values.min() > 0.99
            restarted_codes += len(restarted)
    assert restarted_codes > 0


# ---------------------------------------------------------------------------------------------
# State dict, dtypes, bad input
# ---------------------------------------------------------------------------------------------


def test_state_dict_round_trip_restores_codebook_and_statistics():
    torch.manual_seed(4)
    trained = NormEMAVectorQuantizer(10, 4, dead_code_steps=2).train()
    for _ in range(3):
        trained(torch.randn(30, 4))
    state = trained.state_dict()
    assert set(state) == {"code_vectors", "initialized", "steps_since_used", "usage_ema"}
    torch.manual_seed(99)
    restored = NormEMAVectorQuantizer(10, 4, dead_code_steps=2)
    restored.load_state_dict(state)
    _assert_same_buffers(_buffers(trained), _buffers(restored))
    z = torch.randn(50, 4)
    assert torch.equal(restored.assign(z), trained.assign(z))
    restored.train()(torch.randn(30, 4))
    assert bool(restored.initialized)  # no second k-means after loading
    assert float(trained.ema_perplexity) > 1.0


def test_buffers_stay_float32_under_bf16_autocast_and_module_casts():
    torch.manual_seed(6)
    quantizer = NormEMAVectorQuantizer(16, 8, dead_code_steps=1).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = torch.nn.Linear(8, 8)(torch.randn(40, 8))
        assert z.dtype == torch.bfloat16
        output = quantizer(z)
    assert output.quantized.dtype == torch.bfloat16 and output.commitment_loss.dtype == torch.float32
    codebook = quantizer.codebook.clone()
    quantizer.to(torch.bfloat16)
    assert quantizer.code_vectors.dtype == torch.float32 and quantizer.usage_ema.dtype == torch.float32
    assert torch.equal(quantizer.codebook, codebook)  # no round trip through bf16
    assert quantizer(torch.randn(5, 8, dtype=torch.bfloat16)).quantized.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda q: q(torch.randn(3, 5)), ValueError, r"\(\.\.\., 4\)"),
        (lambda q: q(torch.ones(3, 4, dtype=torch.long)), ValueError, "floating-point"),
        (lambda q: q(torch.tensor([[1.0, float("nan"), 0.0, 0.0]])), ValueError, "NaN"),
        (lambda q: q(torch.randn(2, 3, 4), torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask shape"),
        (lambda q: q(torch.randn(2, 3, 4), torch.ones(2, 3)), ValueError, "boolean"),
        (lambda q: q([[0.0] * 4]), TypeError, "torch.Tensor"),
        (lambda q: q.lookup(torch.tensor([0, 8])), ValueError, r"\[0, 8\)"),
        (lambda q: q.lookup(torch.tensor([0.0])), ValueError, "integer"),
        (lambda q: q.assign(torch.ones(2, 4, dtype=torch.int32)), ValueError, "floating-point"),
        (lambda q: q.assign(torch.randn(2, 3)), ValueError, r"\(\.\.\., 4\)"),
    ],
)
def test_vq_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call(NormEMAVectorQuantizer(8, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"codebook_size": 0}, "codebook_size"),
        ({"dim": 2.5}, "dim"),
        ({"decay": 1.0}, "decay"),
        ({"commitment_weight": -1.0}, "commitment_weight"),
        ({"kmeans_iters": -1}, "kmeans_iters"),
        ({"dead_code_steps": -3}, "dead_code_steps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_vq_bad_settings_are_refused(kwargs, message):
    arguments = {"codebook_size": 8, "dim": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        NormEMAVectorQuantizer(arguments.pop("codebook_size"), arguments.pop("dim"), **arguments)


# ---------------------------------------------------------------------------------------------
# Finite scalar quantization
# ---------------------------------------------------------------------------------------------


def _identity_fsq(levels: list[int]) -> FiniteScalarQuantizer:
    """FSQ whose input projection is the identity, so inputs are the per-dimension scalars."""
    quantizer = FiniteScalarQuantizer(levels, len(levels))
    with torch.no_grad():
        quantizer.project_in.weight.copy_(torch.eye(len(levels)))
        quantizer.project_in.bias.zero_()
    return quantizer


def _reference_bound(h: torch.Tensor, levels: list[int], eps: float = 1e-3) -> torch.Tensor:
    """Mentzer et al.'s bound, written out per dimension (even levels shifted by half a level)."""
    columns = []
    for i, n in enumerate(levels):
        half = (n - 1) * (1 - eps) / 2
        offset = 0.5 if n % 2 == 0 else 0.0
        shift = math.atanh(offset / half) if offset < half else 0.0
        columns.append(torch.tanh(h[..., i] + shift) * half - offset)
    return torch.stack(columns, dim=-1)


def test_fsq_codes_round_trip_and_range():
    torch.manual_seed(0)
    quantizer = FiniteScalarQuantizer([8, 8, 8, 6, 5], 16)
    assert quantizer.codebook_size == 15_360
    z = torch.randn(4, 30, 16) * 3.0
    output = quantizer(z)
    assert output.codes.dtype == torch.long and output.codes.shape == (4, 30)
    assert int(output.codes.min()) >= 0 and int(output.codes.max()) < 15_360
    assert torch.equal(quantizer.assign(z), output.codes)
    torch.testing.assert_close(quantizer.lookup(output.codes), output.quantized)
    assert float(output.commitment_loss) == 0.0
    codebook = quantizer.codebook
    assert codebook.shape == (15_360, 16) and not codebook.requires_grad
    torch.testing.assert_close(codebook[output.codes], output.quantized)


def test_fsq_levels_digits_and_mixed_radix_codes():
    levels = [8, 5, 3, 2]
    quantizer = _identity_fsq(levels)
    sweep = torch.linspace(-6.0, 6.0, 2001)[:, None].expand(-1, 4)
    codes = quantizer.assign(sweep)
    digits = [(codes // math.prod(levels[:i])) % n for i, n in enumerate(levels)]
    for n, digit in zip(levels, digits):
        assert torch.equal(torch.unique(digit), torch.arange(n))  # every level reached, none outside
    big = 50.0
    assert int(quantizer.assign(torch.tensor([big, -big, big, big]))) == 7 + 0 * 8 + 2 * 40 + 1 * 120
    assert int(quantizer.assign(torch.tensor([-big, -big, -big, -big]))) == 0
    # 0 maps to the centre level, L // 2 (the half-level shift of even levels).
    assert int(_identity_fsq([8, 5, 6, 3]).assign(torch.zeros(4))) == 4 + 2 * 8 + 3 * 40 + 1 * 240


def test_fsq_straight_through_gradient_matches_the_unrounded_path():
    torch.manual_seed(1)
    levels = [8, 6, 5, 2]
    quantizer = FiniteScalarQuantizer(levels, 10)
    z = torch.randn(7, 10, requires_grad=True)
    upstream = torch.randn(7, 10)
    (quantizer(z).quantized * upstream).sum().backward()
    got = z.grad.clone()
    z.grad = None
    half_widths = torch.tensor([n // 2 for n in levels], dtype=torch.float32)
    bounded = _reference_bound(quantizer.project_in(z), levels)
    torch.testing.assert_close(
        quantizer.project_out(torch.round(bounded) / half_widths), quantizer(z).quantized, rtol=0, atol=1e-6
    )
    (quantizer.project_out(bounded / half_widths) * upstream).sum().backward()
    torch.testing.assert_close(got, z.grad)
    assert got.abs().sum() > 0 and quantizer.project_in.weight.grad is not None


def test_fsq_statistics_mask_state_dict_and_autocast():
    torch.manual_seed(2)
    quantizer = _identity_fsq([5, 5])
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    output = quantizer(z, torch.tensor([True, True, True, False]))
    assert int(output.used_codes) == 2
    probabilities = torch.tensor([2 / 3, 1 / 3])
    torch.testing.assert_close(output.perplexity, torch.exp(-(probabilities * probabilities.log()).sum()))
    state = quantizer.state_dict()
    assert set(state) == {"project_in.weight", "project_in.bias", "project_out.weight", "project_out.bias"}
    restored = FiniteScalarQuantizer([5, 5], 2)
    restored.load_state_dict(state)
    assert torch.equal(restored(z).quantized, output.quantized)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = quantizer(z.bfloat16())
    assert half.quantized.dtype == torch.bfloat16 and torch.equal(half.codes, output.codes)


@pytest.mark.parametrize(
    "levels, dim, message",
    [([], 4, "non-empty"), ([8, 1], 4, ">= 2"), ([8, 2.5], 4, "integers"), ([8, 5], 0, "dim")],
)
def test_fsq_bad_settings_are_refused(levels, dim, message):
    with pytest.raises(ValueError, match=message):
        FiniteScalarQuantizer(levels, dim)


def test_fsq_bad_input_is_refused():
    quantizer = FiniteScalarQuantizer([5, 4], 6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        quantizer(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        quantizer.lookup(torch.tensor([20]))
    with pytest.raises(ValueError, match="mask shape"):
        quantizer(torch.randn(3, 6), torch.ones(4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# build_quantizer
# ---------------------------------------------------------------------------------------------


def test_build_quantizer_follows_the_config():
    config = FmriTokenizerConfig.preset("tiny", ema_decay=0.95, commitment_weight=0.5, dead_code_steps=7)
    vq = build_quantizer(config)
    assert isinstance(vq, NormEMAVectorQuantizer)
    assert (vq.codebook_size, vq.dim, vq.decay, vq.commitment_weight, vq.dead_code_steps) == (64, 16, 0.95, 0.5, 7)
    fsq = build_quantizer(FmriTokenizerConfig.preset("tiny", quantizer="fsq", fsq_levels=[7, 5, 5, 5, 5]))
    assert isinstance(fsq, FiniteScalarQuantizer)
    assert (fsq.codebook_size, fsq.dim) == (4375, 16)
    with pytest.raises(ValueError, match="'vq' or 'fsq'"):
        build_quantizer(SimpleNamespace(quantizer="pq"))
