"""Tests for sagan_cli.digits: shapes, the shipped weights' accuracy, determinism."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from sagan_cli.data import resize_images
from sagan_cli.digits import (
    FEATURE_DIM,
    NUM_CLASSES,
    DigitsClassifier,
    digits_weights_path,
    fit_to_classifier,
    load_digits_classifier,
    uint8_to_model_input,
)
from sagan_cli.idx import load_bundled_mnist


@pytest.fixture(scope="module")
def classifier() -> DigitsClassifier:
    return load_digits_classifier()


def test_output_shapes() -> None:
    torch.manual_seed(0)
    model = DigitsClassifier()
    features, logits = model(torch.rand(5, 1, 28, 28) * 2 - 1)
    assert features.shape == (5, FEATURE_DIM)
    assert logits.shape == (5, NUM_CLASSES)
    assert bool((features >= 0).all())  # penultimate activations are post-ReLU


def test_rejects_wrong_input_shape() -> None:
    with pytest.raises(ValueError, match="28, 28"):
        DigitsClassifier()(torch.zeros(2, 3, 28, 28))


def test_uint8_to_model_input() -> None:
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255
    x = uint8_to_model_input(images)
    assert x.shape == (1, 1, 28, 28)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


def test_weights_file_is_small_safetensors() -> None:
    path = digits_weights_path()
    assert path.is_file()
    assert path.stat().st_size < 2_000_000
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["train_images"] == "60000"
    assert float(meta["test_accuracy"]) >= 0.99


def test_loaded_in_eval_mode(classifier: DigitsClassifier) -> None:
    assert not classifier.training
    assert not any(p.requires_grad for p in classifier.parameters())


def test_shipped_classifier_accuracy(classifier: DigitsClassifier) -> None:
    images, labels = load_bundled_mnist()
    correct = 0
    with torch.no_grad():
        for start in range(0, images.shape[0], 2000):
            _, logits = classifier(uint8_to_model_input(images[start : start + 2000]))
            correct += int((logits.argmax(1) == labels[start : start + 2000]).sum())
    assert correct / images.shape[0] >= 0.99


def test_features_deterministic_in_eval(classifier: DigitsClassifier) -> None:
    images, _ = load_bundled_mnist()
    x = uint8_to_model_input(images[:64])
    with torch.no_grad():
        f1, l1 = classifier(x)
        f2, l2 = classifier(x)
        f3, _ = classifier(x[:8])  # batch composition must not matter in eval mode
    assert torch.equal(f1, f2) and torch.equal(l1, l2)
    assert torch.allclose(f1[:8], f3, atol=1e-5)


@pytest.mark.parametrize("size", [32, 64])
def test_digits_trained_at_other_sizes_are_still_recognised(classifier: DigitsClassifier, size: int) -> None:
    # What `sagan evaluate --extractor digits` does for a 1-channel model trained at 32 or 64 px:
    # the data pipeline's resize up, then fit_to_classifier back down to 28x28.
    images, labels = load_bundled_mnist()
    images, labels = images[:2000], labels[:2000]
    resized = resize_images(images.unsqueeze(1), 1, size)  # (N, 1, size, size) uint8
    assert resized.shape[-1] == size
    with torch.no_grad():
        _, logits = classifier(fit_to_classifier(uint8_to_model_input(resized)))
    assert float((logits.argmax(1) == labels).float().mean()) >= 0.98


def test_fit_to_classifier_leaves_28px_alone_and_rejects_rgb() -> None:
    x = torch.rand(2, 1, 28, 28)
    assert fit_to_classifier(x) is x
    with pytest.raises(ValueError, match="grey"):
        fit_to_classifier(torch.rand(2, 3, 64, 64))
