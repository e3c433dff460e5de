"""`sagan attention`: the maps are the weights the forward really used; figure, JSON, queries and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from eval_support import read_png, untrained_checkpoint
from PIL import Image

from sagan_cli.attention_maps import Query, capturing, default_queries, generator_attention
from sagan_cli.checkpoint import load_generator
from sagan_cli.model import Discriminator, Generator, ModelConfig, SelfAttention

TINY = {"g_width": 8, "d_width": 8, "z_dim": 16}


def _gated_model(network: type, **config: object) -> torch.nn.Module:
    """A tiny G or D whose attention gates are open (at init gamma = 0 hides what attention does)."""
    torch.manual_seed(0)
    model = network(ModelConfig(**{**TINY, **config})).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SelfAttention):
                module.gamma.fill_(0.8)
    return model


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("network", [Generator, Discriminator])
def test_captured_weights_are_the_softmax_the_forward_used(
    network: type, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SelfAttention, "fused", fused)  # the fused kernel, or the written-out softmax(Q K^T) V
    model = _gated_model(network, attn_resolutions=(14, 28) if network is Generator else (14,))
    inputs = (torch.randn(2, 16),) if network is Generator else (torch.rand(2, 1, 28, 28) * 2 - 1,)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        layer.register_forward_hook(lambda module, args, out, size=size: seen.__setitem__(size, (args[0], out)))
        for size, layer in (
            (int(n.rsplit(".", 1)[-1]), m) for n, m in model.named_modules() if isinstance(m, SelfAttention)
        )
    ]
    with torch.no_grad(), capturing(model) as layers:
        model(*inputs)
        captured = {size: layer.weights for size, layer in layers.items()}
    for hook in hooks:
        hook.remove()
    assert sorted(captured) == sorted(seen) and captured
    for size, weights in captured.items():
        layer, (x, out) = layers[size], seen[size]
        n = size * size
        assert weights.shape == (2, n, n)
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, n))  # every query's map sums to 1
        with torch.no_grad():
            q = layer.query(x).reshape(2, -1, n)  # (B, C/8, N)
            k = layer.key(x).reshape(2, -1, n)
            v = layer.value(x).reshape(2, -1, n)
            torch.testing.assert_close(weights, (q.transpose(1, 2) @ k).softmax(-1))  # the paper's softmax(f^T g)
            # The layer's real output is rebuilt from these weights: they are the ones it used.
            rebuilt = x + layer.gamma * layer.out((v @ weights.transpose(1, 2)).reshape(2, -1, size, size))
        torch.testing.assert_close(out, rebuilt, rtol=1e-5, atol=1e-5)
    assert all(layer.weights is None and not layer.capture_weights for layer in layers.values())  # switched off after


def test_capture_does_not_change_the_output() -> None:
    generator = _gated_model(Generator)
    z = torch.randn(3, 16)
    with torch.no_grad():
        plain = generator(z)
        with capturing(generator):
            captured = generator(z)
    assert torch.equal(plain, captured)


def test_query_points_map_to_the_cell_under_them() -> None:
    assert Query(0, 0).grid(28, 14) == (0, 0)
    assert Query(27, 0).grid(28, 14) == (13, 0)
    assert Query(5, 9).grid(28, 14) == (2, 4)
    assert Query(5, 9).grid(28, 7) == (1, 2)
    assert Query(31, 16).grid(32, 16) == (15, 8)


def test_default_queries_spread_over_the_object_and_one_on_the_background() -> None:
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[:, 6:22, 10:18] = 255  # a bright bar on black
    queries = default_queries(image)
    assert len(queries) == 5 and len(set(queries)) == 5
    on_bar = [6 <= q.y < 22 and 10 <= q.x < 18 for q in queries]
    assert on_bar == [True, True, True, True, False]
    assert {q.y for q in queries[:4]} & {6, 7} and {q.y for q in queries[:4]} & {20, 21}  # both ends of the bar


def test_generator_figure_with_queries(tiny_checkpoint: Path, tmp_path: Path) -> None:
    figure = tmp_path / "attn.png"
    result = run_cli("attention", tiny_checkpoint, "--seed", 3, "--query", "5,9", "--query", "27,0", "-o", figure)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(figure)
    with Image.open(figure) as picture:
        assert picture.format == "PNG" and picture.width > 300
        text = picture.text
    assert text["seed"] == "3" and text["checkpoint"] == str(tiny_checkpoint) and text["queries"] == "5,9;27,0"
    again = run_cli("attention", tiny_checkpoint, "--seed", 3, "-o", figure)
    assert again.exit_code == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_json_maps_schema_and_values(tiny_checkpoint: Path) -> None:
    result = run_cli("attention", tiny_checkpoint, "--seed", 3, "--query", "5,9,27,0", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["network"] == "G" and payload["seed"] == 3 and payload["image_size"] == 28
    maps = payload["maps"]
    assert [(m["layer"], m["query"]) for m in maps] == [
        ("G14", {"image": [5, 9], "grid": [2, 4]}),
        ("G14", {"image": [27, 0], "grid": [13, 0]}),
    ]
    # The same weights the library captures from the forward that draws `sagan sample --seed 3`'s image.
    captured = generator_attention(load_generator(tiny_checkpoint)[0], seed=3).layers[0].weights
    for record in maps:
        assert record["feature_size"] == [14, 14]
        weights = torch.tensor(record["map"])
        assert weights.shape == (14, 14)
        assert abs(float(weights.sum()) - 1.0) < 1e-4
        column, row = record["query"]["grid"]
        torch.testing.assert_close(weights.flatten(), captured[row * 14 + column])


def test_generated_image_is_sagan_samples(tiny_checkpoint: Path, tmp_path: Path) -> None:
    sample = tmp_path / "s.png"
    assert run_cli("sample", tiny_checkpoint, "-n", 1, "--seed", 5, "-o", sample).exit_code == 0
    image = generator_attention(load_generator(tiny_checkpoint)[0], seed=5).image
    assert torch.equal(image, read_png(sample)[:, 2:30, 2:30])


def test_discriminator_attention_on_a_given_image(tiny_checkpoint: Path, tmp_path: Path) -> None:
    picture = tmp_path / "big.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture)  # other size and mode: converted as training data is
    result = run_cli(
        "attention", tiny_checkpoint, "--image", picture, "--query", "14,14", "--json", "-o", tmp_path / "d.png"
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["network"] == "D" and payload["image"] == str(picture) and payload["seed"] is None
    assert [m["layer"] for m in payload["maps"]] == ["D14"]
    assert Image.open(tmp_path / "d.png").text["image"] == str(picture)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--query", "28,3"], "outside the 28x28 image"),
        (["--query", "3"], "is not X,Y"),
        (["--image", "missing.png"], "is not a file"),
        (["--image", "x.png", "--seed", "1"], "drop one of them"),
        (["--class", "1"], "unconditional"),
    ],
)
def test_bad_input_is_one_line(tiny_checkpoint: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("attention", tiny_checkpoint, *args, "-o", tmp_path / "a.png")
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a.png").exists()


def test_model_without_attention_is_a_one_line_error(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    checkpoint = untrained_checkpoint(tmp_path_factory, "tiny-noattn", attention=False)
    result = run_cli("attention", checkpoint, "-o", tmp_path / "a.png")
    assert result.exit_code == 2
    assert "no self-attention layers" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a.png").exists()


def test_maps_of_a_network_without_attention_are_a_one_line_error(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    checkpoint = untrained_checkpoint(tmp_path_factory, "tiny-g-only", attention_in="g")
    result = run_cli("attention", checkpoint, "--image", checkpoint, "-o", tmp_path / "a.png")
    assert result.exit_code == 2
    assert "only in G" in result.stderr and "drop --image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "a.png").exists()
