"""Training options chosen for short runs: linear learning-rate decay at the end, DiffAugment of D's input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from test_cli_errors import assert_one_error

from sagan_cli.augment import augment, color, cutout, parse_policy, translate
from sagan_cli.checkpoint import read_checkpoint_info
from sagan_cli.errors import EXIT_USAGE


def test_translation_shifts_each_image_whole_and_repeats_its_edges() -> None:
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    shifted = translate(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    for original, moved in zip(images, shifted, strict=True):
        # Some shift (dy, dx) in [-1, 1]^2 (1/8 of 8 px) with clamped indices reproduces the output exactly.
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(
                moved, original[:, (torch.arange(8) - dy).clamp(0, 7)][:, :, (torch.arange(8) - dx).clamp(0, 7)]
            )
        ]
        assert matches


def test_translation_passes_gradients_to_the_generator() -> None:
    fake = torch.randn(3, 3, 8, 8, requires_grad=True)
    translate(fake, torch.Generator().manual_seed(1)).sum().backward()
    assert fake.grad is not None and float(fake.grad.sum()) == 3 * 3 * 8 * 8  # each output pixel reads one input


def test_cutout_sets_one_half_side_square_to_zero_and_keeps_the_rest() -> None:
    images = torch.rand(16, 3, 8, 8) + 1  # all > 0, so every 0 in the output was erased
    out = cutout(images, torch.Generator().manual_seed(0))
    erased = out == 0  # (B, C, H, W)
    assert torch.equal(out[~erased], images[~erased])
    assert torch.equal(erased, erased[:, :1].expand_as(erased))  # the same pixels in every channel
    for mask in erased[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        # One axis-aligned box, at most 4x4 (half of 8), clipped only by the image's edges.
        assert 0 < int(mask.sum()) == len(rows) * len(cols) <= 16
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        assert len(rows) == 4 or 0 in rows or 7 in rows
        assert len(cols) == 4 or 0 in cols or 7 in cols


def test_color_jitters_each_image_by_its_own_draws_and_passes_gradients() -> None:
    flat = torch.zeros(4, 3, 8, 8, requires_grad=True)  # a grey image stays flat: brightness moves it
    out = color(flat, torch.Generator().manual_seed(0))
    per_image = out.detach().flatten(1)
    assert torch.equal(per_image, per_image[:, :1].expand_as(per_image))  # still flat
    assert len(set(per_image[:, 0].tolist())) == 4 and per_image.abs().max() <= 0.5 * 1.5
    out.sum().backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


def test_a_policy_applies_its_operations_in_diffaugments_order_whatever_the_order_given() -> None:
    assert parse_policy("none") == ()
    assert parse_policy("cutout,color,translation") == ("color", "translation", "cutout")
    images = torch.randn(4, 3, 8, 8)
    by_hand = torch.Generator().manual_seed(3)
    expected = cutout(translate(images, by_hand), by_hand)  # translation first, then cutout, from one generator
    assert torch.equal(augment(images, "cutout,translation", torch.Generator().manual_seed(3)), expected)
    for bad in ("flip", "translation,flip", "translation,translation", ""):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_lr_decay_ends_at_zero_and_augmented_training_runs(tmp_path: Path) -> None:
    options = ["--lr-decay", "0.5", "--augment", "color,translation,cutout"]
    result = run_cli("train", *TINY_TRAIN_FLAGS, *options, "--out", tmp_path, "--name", "d")
    assert result.exit_code == 0, result.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d" / "checkpoints" / "step_000002.safetensors"), "pt") as f:
        meta = f.metadata()
    assert read_checkpoint_info(tmp_path / "d" / "checkpoints" / "final.safetensors").step == 4
    assert '"augment": "color,translation,cutout"' in meta["train_config"] and '"lr_decay": 0.5' in meta["train_config"]


def test_bad_values_of_the_new_options_are_refused(tmp_path: Path) -> None:
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--lr-decay", "1.5", "--out", tmp_path), EXIT_USAGE, "--lr-decay"
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--augment", "flip", "--out", tmp_path), EXIT_USAGE, "--augment 'flip'"
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--augment", "translation,flip", "--out", tmp_path),
        EXIT_USAGE,
        "translation,cutout",
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--gamma-lr-mult", "-1", "--out", tmp_path), EXIT_USAGE, "--gamma-lr-mult"
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--attn-res", "7", "--out", tmp_path), EXIT_USAGE, "--attention-in d"
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--attention-in", "gd", "--out", tmp_path), EXIT_USAGE, "--attention-in"
    )
    assert list(tmp_path.iterdir()) == []


def test_lr_decay_is_constant_then_linear_to_zero_by_steps_or_by_minutes() -> None:
    from sagan_cli.config import TrainConfig
    from sagan_cli.model import ModelConfig
    from sagan_cli.train import _set_learning_rates, build_state

    model = ModelConfig(g_width=4, d_width=4, z_dim=4, attention=False)
    config = TrainConfig(max_steps=100, lr_decay=0.25, lr_g=1e-3, lr_d=2e-3, model=model)
    state = build_state(config, torch.device("cpu"))
    rates = []
    for step in (0, 75, 90, 100):
        state.step = step
        _set_learning_rates(state, config)
        rates.append((state.optimizer_g.param_groups[0]["lr"], state.optimizer_d.param_groups[0]["lr"]))
    assert rates == [(1e-3, 2e-3), (1e-3, 2e-3), (pytest.approx(4e-4), pytest.approx(8e-4)), (0.0, 0.0)]
    timed = config.with_overrides(max_minutes=1.0)  # a time budget that ends first sets the pace
    state.step, state.train_seconds = 10, 54.0
    _set_learning_rates(state, timed)
    assert state.optimizer_g.param_groups[0]["lr"] == pytest.approx(4e-4)


def test_gamma_lr_mult_moves_only_the_attention_gates_faster() -> None:
    from sagan_cli.config import TrainConfig
    from sagan_cli.model import ModelConfig
    from sagan_cli.train import _set_learning_rates, build_state

    model = ModelConfig(g_width=4, d_width=4, z_dim=4)
    plain = build_state(TrainConfig(lr_g=1e-3, lr_d=2e-3, model=model), torch.device("cpu"))
    config = TrainConfig(lr_g=1e-3, lr_d=2e-3, gamma_lr_mult=10, lr_decay=0.5, max_steps=100, model=model)
    fast = build_state(config, torch.device("cpu"))
    for state in (plain, fast):
        for network, optimizer in ((state.generator, state.optimizer_g), (state.discriminator, state.optimizer_d)):
            for param in network.parameters():
                param.grad = torch.ones_like(param)  # Adam's first step moves every parameter by its rate
            optimizer.step()
    g_gate, d_gate = fast.generator.attention["14"].gamma.detach(), fast.discriminator.attention["14"].gamma.detach()
    assert float(g_gate) == pytest.approx(-1e-2, rel=1e-3) and float(d_gate) == pytest.approx(-2e-2, rel=1e-3)
    assert float(plain.generator.attention["14"].gamma.detach()) == pytest.approx(-1e-3, rel=1e-3)
    # Everything else moves as without the option.
    assert torch.equal(fast.generator.out_conv.bias, plain.generator.out_conv.bias)
    fast.step = 75  # half way through the decay: gates and weights keep their ratio
    _set_learning_rates(fast, config)
    assert [group["lr"] for group in fast.optimizer_g.param_groups] == [pytest.approx(5e-4), pytest.approx(5e-3)]


def test_gamma_lr_mult_and_one_network_attention_train_and_resume(tmp_path: Path) -> None:
    options = ["--gamma-lr-mult", "10", "--attention-in", "d", "--attn-res", "7"]
    result = run_cli("train", *TINY_TRAIN_FLAGS, *options, "--out", tmp_path, "--name", "g")
    assert result.exit_code == 0, result.stderr
    final = tmp_path / "g" / "checkpoints" / "final.safetensors"
    info = read_checkpoint_info(final)
    assert info.model.attention_in == "d" and info.model.attn_resolutions == (7,)
    resumed = run_cli("train", "--resume", final, "--max-steps", "6")
    assert resumed.exit_code == 0, resumed.stderr
    assert read_checkpoint_info(final).step == 6


def test_mode_seeking_punishes_a_generator_that_ignores_its_latent_within_a_class() -> None:
    from sagan_cli.losses import mode_seeking

    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    varied = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    collapsed = varied.clone()
    collapsed[1:3] = collapsed[0]  # class 0: one image for three latents
    collapsed[4:6] = collapsed[3]
    assert float(mode_seeking(collapsed, z, labels)) > 1000 * float(mode_seeking(varied, z, labels))
    # Only pairs of the same class count: making the two classes differ from each other does not help.
    across = collapsed.clone()
    across[3:] += 5.0
    assert float(mode_seeking(across, z, labels)) == pytest.approx(float(mode_seeking(collapsed, z, labels)))
    # Without labels every pair counts, and the term equals 1 / (mean pixel gap / mean latent gap).
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    ratio = sum(float((varied[i] - varied[j]).abs().mean() / (z[i] - z[j]).abs().mean()) for i, j in pairs) / 15
    assert float(mode_seeking(varied, z, None)) == pytest.approx(1 / (ratio + 1e-5), rel=1e-4)


def test_mode_seeking_is_zero_when_no_two_samples_share_a_class() -> None:
    from sagan_cli.losses import mode_seeking

    images = torch.rand(3, 1, 4, 4, requires_grad=True)
    term = mode_seeking(images, torch.randn(3, 2), torch.tensor([0, 1, 2]))
    assert float(term.detach()) == 0.0
    term.backward()  # still part of the graph, with a zero gradient
    assert images.grad is not None and float(images.grad.abs().sum()) == 0.0


def test_mode_seeking_gives_g_a_gradient_that_spreads_a_collapsed_class() -> None:
    from sagan_cli.losses import mode_seeking

    images = torch.zeros(4, 1, 2, 2)
    images[1] += 0.01  # two nearly identical images per class
    images[3] += 0.01
    images.requires_grad_(True)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    mode_seeking(images, z, torch.tensor([0, 0, 1, 1])).backward()
    assert images.grad is not None
    step = images.detach() - 0.001 * images.grad  # gradient descent on the term pushes each pair apart
    gap = images.detach()
    assert float((step[1] - step[0]).abs().mean()) > float((gap[1] - gap[0]).abs().mean())


def test_mode_seeking_trains_and_is_recorded_and_refused_when_negative(tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--mode-seeking", "0.5", "--out", tmp_path, "--name", "m")
    assert result.exit_code == 0, result.stderr
    config = read_checkpoint_info(tmp_path / "m" / "checkpoints" / "final.safetensors").train
    assert config is not None and config.mode_seeking == 0.5
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--mode-seeking", "-1", "--out", tmp_path), EXIT_USAGE, "--mode-seeking"
    )


def test_r1_penalty_is_the_squared_input_gradient_of_the_real_scores_only() -> None:
    from sagan_cli.losses import r1_penalty

    weight = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]], requires_grad=True)  # D(x) = <w, x>: input gradient w
    inputs = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    scores = (inputs * weight).flatten(1).sum(1) * torch.tensor([1.0, 1.0, 3.0, 3.0])  # the fakes (rows 2, 3) differ
    penalty = r1_penalty(scores[:2], inputs)
    assert float(penalty.detach()) == pytest.approx(1 + 4 + 0.25)  # |w|^2, the fake rows not counted
    penalty.backward()  # kept in the graph, so D's step descends it: d|w|^2/dw = 2w
    assert weight.grad is not None and torch.allclose(weight.grad, 2 * weight.detach())


def _d_input_gradient_norm(r1: float) -> float:
    """|grad_x D(x)|^2 on the real images after one training step from the same start with --r1 r1."""
    from sagan_cli.config import TrainConfig
    from sagan_cli.data import ImageData, to_model_range
    from sagan_cli.model import ModelConfig
    from sagan_cli.train import build_state, train_step

    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageData(images, None, 0, "noise", "random pixels")
    config = TrainConfig(batch_size=8, lr_d=1e-2, r1=r1, model=ModelConfig(g_width=4, d_width=4, z_dim=8))
    state = build_state(config, torch.device("cpu"))  # D with self-attention at 14x14: the penalty's path through it
    train_step(state, data, config, torch.device("cpu"))  # step 0: a penalised step
    real = to_model_range(images).requires_grad_(True)
    (grad,) = torch.autograd.grad(state.discriminator(real, None).sum(), real)
    return float(grad.square().flatten(1).sum(1).mean())


def test_an_r1_step_flattens_d_around_the_real_images() -> None:
    assert _d_input_gradient_norm(r1=100.0) < 0.5 * _d_input_gradient_norm(r1=0.0)


def test_r1_trains_through_attention_is_recorded_and_refused_when_negative(tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--attention", "--r1", "0.5", "--out", tmp_path, "--name", "r")
    assert result.exit_code == 0, result.stderr
    config = read_checkpoint_info(tmp_path / "r" / "checkpoints" / "final.safetensors").train
    assert config is not None and config.r1 == 0.5 and config.model.attention and config.model.attention_in == "both"
    assert_one_error(run_cli("train", *TINY_TRAIN_FLAGS, "--r1", "-1", "--out", tmp_path), EXIT_USAGE, "--r1")


def test_new_conditional_runs_seek_modes_by_default_and_older_runs_keep_training_without() -> None:
    from sagan_cli.config import MODE_SEEKING_CONDITIONAL, TrainConfig
    from sagan_cli.runs import resolve_new

    conditional = resolve_new({"dataset": "mnist", "download": False}, {}, None, check_disk=False).config
    unconditional = resolve_new(
        {"dataset": "mnist", "download": False, "clusters": 0}, {}, False, check_disk=False
    ).config
    chosen = resolve_new({"dataset": "mnist", "mode_seeking": 0.0}, {}, None, check_disk=False).config
    assert conditional.model.num_classes == 10 and conditional.mode_seeking == MODE_SEEKING_CONDITIONAL > 0
    assert unconditional.mode_seeking == 0 and chosen.mode_seeking == 0
    assert '"mode_seeking": 0.3' in conditional.to_json()
    # A config written before the option existed has no key: it resumes as it trained, without the term.
    older = conditional.to_dict()
    del older["mode_seeking"]
    assert TrainConfig.from_dict(older).mode_seeking == 0


def test_new_unconditional_runs_get_the_faster_learning_rates_unless_given() -> None:
    from sagan_cli.config import LR_UNCONDITIONAL, TrainConfig
    from sagan_cli.runs import resolve_new

    conditional = resolve_new({"dataset": "mnist", "download": False}, {}, None, check_disk=False).config
    unconditional = resolve_new(
        {"dataset": "mnist", "download": False, "clusters": 0}, {}, False, check_disk=False
    ).config
    chosen = resolve_new({"dataset": "mnist", "lr_g": 1e-4, "clusters": 0}, {}, False, check_disk=False).config
    assert (conditional.lr_g, conditional.lr_d) == (TrainConfig().lr_g, TrainConfig().lr_d)
    assert (unconditional.lr_g, unconditional.lr_d) == LR_UNCONDITIONAL != (conditional.lr_g, conditional.lr_d)
    assert (chosen.lr_g, chosen.lr_d) == (1e-4, LR_UNCONDITIONAL[1])  # a given rate wins; the other keeps its default
    # What a run trained with is in its config, so a resumed unconditional run keeps its own rates.
    assert TrainConfig.from_dict(unconditional.to_dict()).lr_g == LR_UNCONDITIONAL[0]


def test_a_long_run_on_a_small_folder_is_told_once_that_d_may_memorise_it(tmp_path: Path) -> None:
    from PIL import Image

    from sagan_cli.config import TrainConfig
    from sagan_cli.train_hooks import MEMORISATION_EPOCHS, memorisation_note

    folder = tmp_path / "eight"
    folder.mkdir()
    for i in range(8):
        Image.new("L", (28, 28), 20 + 30 * i).save(folder / f"{i}.png")
    quiet = ["--log-every", "100", "--sample-every", "100", "--save-every", "100"]
    # Folders are augmented by default; a user who turned it off is told.
    flags = [*TINY_TRAIN_FLAGS, *quiet, "--max-steps", str(MEMORISATION_EPOCHS + 2), "--dataset", folder]
    flags += ["--augment", "none"]
    result = run_cli("train", *flags, "--image-size", "28", "--channels", "1", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "seen 50 times" in line]  # batch 8 of 8: at step 50
    assert len(notes) == 1 and "8 training images" in notes[0] and "--augment translation" in notes[0]
    assert memorisation_note(TrainConfig(augment="translation"), 2, tmp_path)[0] is None  # already augmenting
    assert memorisation_note(TrainConfig(), 10_000, tmp_path)[0] == 7813  # the bundled digits: past step 2,800
    assert memorisation_note(TrainConfig(d_steps=2), 10_000, tmp_path)[0] == 3907  # two real batches a step
