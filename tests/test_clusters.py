"""--clusters: k-means pseudo-labels for unlabelled images, and a conditional model that samples them by size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from test_cli_errors import assert_one_error
from test_conventions import assert_same_weights
from test_streaming import png_folder

from sagan_cli.checkpoint import load_tensors, read_checkpoint_info
from sagan_cli.clusters import LABELS_TENSOR, cluster_images, discriminator_features, kmeans, recluster
from sagan_cli.errors import EXIT_USAGE, UsageError
from sagan_cli.model import Discriminator, ModelConfig
from sagan_cli.sampling import check_class, sample_labels
from sagan_cli.train import preview_labels
from sagan_cli.walk import parse_classes


def three_blobs(sizes: tuple[int, int, int] = (5, 30, 12)) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 8, 8): a dark, a mid-grey and a bright group with small noise, and each image's group."""
    rng = torch.Generator().manual_seed(0)
    groups = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])  # (N,)
    levels = torch.tensor([20.0, 128.0, 235.0])[groups]  # (N,)
    noise = torch.randint(-10, 11, (len(groups), 1, 8, 8), generator=rng)
    return (levels.view(-1, 1, 1, 1) + noise).to(torch.uint8), groups


def test_kmeans_finds_separated_groups_and_numbers_them_largest_first() -> None:
    images, groups = three_blobs()
    labels, counts = cluster_images(images, 3, seed=0)
    assert counts == (30, 12, 5)
    # Cluster 0 is the largest group (mid-grey, group 1), cluster 1 the bright (group 2), cluster 2 the dark (0).
    assert torch.equal(labels, torch.tensor([2, 0, 1])[groups])
    for seed in (1, 2, 3):  # other seeds pick other first centres, and find the same partition with the same numbers
        assert torch.equal(cluster_images(images, 3, seed=seed)[0], labels)


def test_kmeans_is_deterministic_for_a_seed_and_gives_every_row_a_cluster() -> None:
    features = torch.rand(500, 6, generator=torch.Generator().manual_seed(0))
    first, again = kmeans(features, 7, seed=4), kmeans(features, 7, seed=4)
    assert torch.equal(first, again) and first.shape == (500,)
    assert int(first.min()) >= 0 and int(first.max()) <= 6
    with pytest.raises(ValueError, match="k must lie in 1..500"):
        kmeans(features, 501, seed=0)


def test_labels_are_drawn_in_proportion_to_the_class_weights() -> None:
    clustered = ModelConfig(num_classes=3, class_weights=(1, 0, 3))
    labels = sample_labels(20_000, clustered, seed=0)
    assert labels is not None
    shares = torch.bincount(labels, minlength=3).float() / 20_000
    assert shares[1] == 0  # an empty cluster is never drawn
    assert abs(float(shares[0]) - 0.25) < 0.02 and abs(float(shares[2]) - 0.75) < 0.02
    # A fixed class wins over the weights; no weights keeps the uniform draw of every earlier version.
    assert torch.equal(sample_labels(4, clustered, 0, 1), torch.ones(4, dtype=torch.int64))
    assert torch.equal(
        sample_labels(50, ModelConfig(num_classes=3), 0),
        torch.randint(3, (50,), generator=torch.Generator().manual_seed(1_000_003)),
    )


def test_class_refuses_an_empty_cluster_whose_embedding_never_saw_an_image() -> None:
    clustered = ModelConfig(num_classes=3, class_weights=(1, 0, 3))
    check_class(2, clustered)
    check_class(1, ModelConfig(num_classes=3))  # models without cluster sizes: every class in range is fine
    with pytest.raises(UsageError, match="--class 1 is an empty cluster"):
        check_class(1, clustered)
    # interpolate --classes A,B walks between two class embeddings: an untrained one is refused the same way.
    assert parse_classes("2,0", clustered) == (2, 0)
    with pytest.raises(UsageError, match="--classes 0,1: class 1 is an empty cluster"):
        parse_classes("0,1", clustered)


def test_preview_grid_shows_every_class_in_turn_but_no_empty_cluster() -> None:
    assert preview_labels(ModelConfig(num_classes=3), 5).tolist() == [0, 1, 2, 0, 1]
    assert preview_labels(ModelConfig(num_classes=3, class_weights=(1, 0, 3)), 5).tolist() == [0, 2, 0, 2, 0]
    assert preview_labels(ModelConfig(), 5) is None


def test_class_weights_round_trip_and_stay_out_of_other_models_configs() -> None:
    clustered = ModelConfig(num_classes=3, class_weights=(5, 0, 2))
    assert ModelConfig.from_json(clustered.to_json()) == clustered
    assert "class_weights" not in ModelConfig(num_classes=10).to_json()  # what earlier versions wrote and read
    for bad in ((1, 2), (1, -1, 2), (0, 0, 0)):
        with pytest.raises(ValueError, match="class_weights"):
            ModelConfig(num_classes=3, class_weights=bad)


def test_a_clustered_run_trains_records_its_clusters_samples_them_and_resumes(tmp_path: Path) -> None:
    folder = png_folder(tmp_path / "pngs", count=24)
    flags = [*TINY_TRAIN_FLAGS, "--dataset", folder, "--image-size", "28", "--channels", "1", "--out", tmp_path]
    result = run_cli("train", *flags, "--clusters", "3", "--name", "k3", "--max-steps", "2")
    assert result.exit_code == 0, result.stderr
    assert "clustered 24 images into 3 clusters" in result.stderr
    checkpoint = tmp_path / "k3" / "checkpoints" / "final.safetensors"
    info = read_checkpoint_info(checkpoint)
    assert info.train is not None and info.train.clusters == 3
    assert info.model.num_classes == 3 and sum(info.model.class_weights) == 24
    saved = json.loads((tmp_path / "k3" / "config.json").read_text())
    assert saved["clusters"] == 3 and saved["model"]["class_weights"] == list(info.model.class_weights)
    # Samples: every cluster drawable by --class, none outside them.
    out = tmp_path / "one.png"
    assert run_cli("sample", checkpoint, "-n", "4", "--class", "2", "-o", out).exit_code == 0 and out.exists()
    assert_one_error(run_cli("sample", checkpoint, "--class", "3", "-o", tmp_path / "x.png"), EXIT_USAGE, "0..2")
    # Resuming clusters the same images again, finds the same clusters, and trains on.
    resumed = run_cli("train", "--resume", tmp_path / "k3", "--max-steps", "4")
    assert resumed.exit_code == 0, resumed.stderr
    assert read_checkpoint_info(checkpoint).step == 4
    # Its config file starts a new run the same way (the cluster sizes in it are measured again, not copied).
    again = run_cli("train", "--config", tmp_path / "k3" / "config.json", "--out", tmp_path, "--name", "again")
    assert again.exit_code == 0, again.stderr
    assert read_checkpoint_info(tmp_path / "again" / "checkpoints" / "final.safetensors").model == info.model


def test_clusters_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    folder = png_folder(tmp_path / "pngs", count=10)
    shape = ["--image-size", "28", "--channels", "1", "--batch-size", "4"]
    flags = [*TINY_TRAIN_FLAGS, "--dataset", folder, *shape, "--out", tmp_path]
    assert_one_error(run_cli("train", *flags, "--clusters", "11"), EXIT_USAGE, "--clusters 11", "10 images")
    assert_one_error(run_cli("train", *flags, "--clusters", "-1"), EXIT_USAGE, "--clusters")
    assert_one_error(
        run_cli("train", *flags, "--clusters", "2", "--data-mode", "stream"), EXIT_USAGE, "--data-mode memory"
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--conditional", "--clusters", "5", "--out", tmp_path),
        EXIT_USAGE,
        "drop --conditional",
    )
    assert not any(tmp_path.glob("*/config.json"))  # nothing was started


def test_clustered_runs_train_with_the_conditional_models_rates_and_mode_seeking() -> None:
    """At the unconditional rates without mode seeking, a clustered G collapsed within each cluster (results.md)."""
    from sagan_cli.config import LR_UNCONDITIONAL, MODE_SEEKING_CONDITIONAL, TrainConfig
    from sagan_cli.runs import resolve_new

    clustered = resolve_new({"dataset": "mnist", "clusters": 7}, {}, False, check_disk=False).config
    assert clustered.model.num_classes == 7 and clustered.mode_seeking == MODE_SEEKING_CONDITIONAL
    assert (clustered.lr_g, clustered.lr_d) == (TrainConfig().lr_g, TrainConfig().lr_d) != LR_UNCONDITIONAL
    given = resolve_new(
        {"dataset": "mnist", "clusters": 7, "lr_g": 4e-4, "mode_seeking": 0.0}, {}, None, check_disk=False
    )
    assert (given.config.lr_g, given.config.mode_seeking) == (4e-4, 0.0)  # given values win


def test_unlabelled_runs_train_on_30_clusters_by_default_and_clusters_0_is_the_plain_model(tmp_path: Path) -> None:
    """Clusters lifted digits-IS from 8.2 to 9.4-9.6 and lowered emoji-FID on two emoji folders (results.md)."""
    from sagan_cli.config import CLUSTERS_UNLABELLED, LR_UNCONDITIONAL, MODE_SEEKING_CONDITIONAL, TrainConfig
    from sagan_cli.runs import resolve_new

    no_labels = resolve_new({"dataset": "mnist"}, {}, False, check_disk=False)  # --no-conditional
    assert no_labels.config.clusters == no_labels.config.model.num_classes == CLUSTERS_UNLABELLED == 30
    assert (no_labels.config.lr_g, no_labels.config.lr_d) == (TrainConfig().lr_g, TrainConfig().lr_d)
    plain = no_labels.plain  # what it trains if its data cannot be clustered
    assert plain is not None and plain.clusters == plain.model.num_classes == 0
    assert (plain.lr_g, plain.lr_d, plain.mode_seeking) == (*LR_UNCONDITIONAL, 0.0)
    folder = resolve_new({"dataset": str(png_folder(tmp_path / "pngs", count=3))}, {}, None, check_disk=False)
    assert folder.config.clusters == CLUSTERS_UNLABELLED and folder.plain is not None
    assert (folder.config.lr_g, folder.config.lr_d) == LR_UNCONDITIONAL  # the rates that won on the emoji
    assert (folder.config.mode_seeking, folder.config.augment) == (MODE_SEEKING_CONDITIONAL, "translation")
    tuned = resolve_new({"dataset": "mnist", "recluster_every": 200}, {}, False, check_disk=False)
    assert tuned.config.recluster_every == 200 and tuned.plain is not None and tuned.plain.recluster_every == 0
    labelled = resolve_new({"dataset": "mnist"}, {}, None, check_disk=False)
    assert labelled.config.clusters == 0 and labelled.config.model.num_classes == 10 and labelled.plain is None
    asked = resolve_new({"dataset": "mnist", "clusters": 0}, {}, False, check_disk=False)
    assert asked.config.model.num_classes == 0 and asked.plain is None
    assert asked.config.to_dict()["clusters"] == 0  # so --config of its config.json trains the plain model again
    older = asked.config.to_dict()
    del older["clusters"]  # a plain run's config.json from before the default: it resumes plain
    assert TrainConfig.from_dict(older).clusters == TrainConfig.from_dict(older).model.num_classes == 0
    (tmp_path / "plain.json").write_text(asked.config.to_json())
    again = run_cli("train", "--config", tmp_path / "plain.json", "--print-config")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["model"]["num_classes"] == 0


def test_data_too_small_or_streamed_trains_the_plain_model_and_says_so(tmp_path: Path) -> None:
    from sagan_cli.runs import apply_clusters, resolve_new
    from sagan_cli.streaming import StreamedData

    folder = png_folder(tmp_path / "pngs", count=24)
    flags = [*TINY_TRAIN_FLAGS, "--dataset", folder, "--image-size", "28", "--channels", "1", "--out", tmp_path]
    result = run_cli("train", *flags, "--name", "small", "--max-steps", "1")
    assert result.exit_code == 0, result.stderr
    assert "training the plain unconditional model" in result.stderr and "24 images, fewer than 3,000" in result.stderr
    saved = json.loads((tmp_path / "small" / "config.json").read_text())
    assert (saved["clusters"], saved["model"]["num_classes"], saved["lr_g"]) == (0, 0, 4e-4)
    assert read_checkpoint_info(tmp_path / "small" / "checkpoints" / "final.safetensors").model.num_classes == 0
    # Streamed data is never clustered by default, however large (an asked-for --clusters is refused instead).
    plan = resolve_new({"dataset": str(folder)}, {"image_size": 28, "channels": 1}, None, check_disk=False)
    streamed = StreamedData([folder / f"{i}.png" for i in range(5000)], 1, 28, str(folder), "")
    lines: list[str] = []
    fallen = apply_clusters(plan, streamed, lines.append)
    assert fallen.config == plan.plain and fallen.config.model.num_classes == 0
    assert any("is streamed from disk" in line and "--data-mode memory" in line for line in lines)


def test_clustered_runs_recluster_by_default_and_their_configs_say_so_when_they_do_not(tmp_path: Path) -> None:
    from sagan_cli.config import RECLUSTER_EVERY_CLUSTERS, RECLUSTER_UNTIL_CLUSTERS, TrainConfig
    from sagan_cli.runs import resolve_new

    clustered = resolve_new({"dataset": "mnist", "clusters": 7}, {}, False, check_disk=False).config
    assert clustered.recluster_every == RECLUSTER_EVERY_CLUSTERS == 400
    assert clustered.to_dict()["recluster_until"] == clustered.recluster_until == RECLUSTER_UNTIL_CLUSTERS
    plain = resolve_new({"dataset": "mnist", "clusters": 0}, {}, False, check_disk=False).config
    assert plain.recluster_every == 0 and "recluster_every" not in plain.to_dict()  # as earlier versions wrote
    assert "recluster_until" not in plain.to_dict()
    # Turned off, a clustered run's file keeps the 0 (and a conditional run's its mode seeking 0): read back
    # through --config they would otherwise get the new-run defaults.
    once = resolve_new({"dataset": "mnist", "clusters": 7, "recluster_every": 0}, {}, False, check_disk=False).config
    assert once.to_dict()["recluster_every"] == 0
    no_ms = resolve_new({"dataset": "mnist", "mode_seeking": 0.0}, {}, None, check_disk=False).config
    assert no_ms.to_dict()["mode_seeking"] == 0.0
    (tmp_path / "once.json").write_text(once.to_json())
    result = run_cli("train", "--config", tmp_path / "once.json", "--print-config")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["recluster_every"] == 0
    assert TrainConfig.from_dict(json.loads(once.to_json())) == once


def test_reclustering_starts_from_the_current_clusters_and_keeps_their_numbers() -> None:
    # Three well-separated groups of feature rows; the current clusters number them 2, 0, 1 and have
    # misplaced four rows. Re-clustering puts those rows back and keeps every group's number.
    rng = torch.Generator().manual_seed(0)
    groups = torch.cat([torch.full((n,), g) for g, n in enumerate((10, 25, 15))])  # (N,)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    features = centres[groups] + 0.1 * torch.randn(len(groups), 2, generator=rng)  # (N, 2)
    numbered = torch.tensor([2, 0, 1])[groups]
    current = numbered.clone()
    current[[0, 11, 12, 40]] = torch.tensor([0, 1, 2, 0])
    assert torch.equal(recluster(features, current, 3), numbered)
    # A cluster with no rows now stays empty rather than stealing another's number.
    assert torch.equal(recluster(features, numbered, 4), numbered)


def test_discriminator_features_are_unit_rows_and_leave_d_as_it_was() -> None:
    torch.manual_seed(0)
    discriminator = Discriminator(ModelConfig(image_size=28, channels=1, d_width=8, num_classes=3)).train()
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}  # spectral-norm vectors included
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    features = discriminator_features(discriminator, images, torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        feature_map = discriminator.eval().features(images.float() / 127.5 - 1)  # (5, C, 7, 7)
    discriminator.train()
    assert features.shape == (5, feature_map.shape[1] * 4 * 4)  # the 7x7 map pooled to 4x4
    assert torch.allclose(features.norm(dim=1), torch.ones(5))
    assert discriminator.training
    assert all(torch.equal(before[k], v) for k, v in discriminator.state_dict().items())


def reclustered_run_flags(tmp_path: Path, until: str) -> list[str | Path]:
    """A tiny run on 24 grey PNGs in 3 clusters, re-clustered every 2 steps up to `until` of the run."""
    folder = png_folder(tmp_path / "pngs", count=24)
    shape = ["--dataset", folder, "--image-size", "28", "--channels", "1", "--out", tmp_path]
    return [*TINY_TRAIN_FLAGS, *shape, "--clusters", "3", "--recluster-every", "2", "--recluster-until", until]


def test_a_reclustered_run_logs_stores_its_clusters_and_resumes_exactly(tmp_path: Path) -> None:
    flags = reclustered_run_flags(tmp_path, until="1")
    whole = run_cli("train", *flags, "--name", "whole", "--max-steps", "5")
    assert whole.exit_code == 0, whole.stderr
    assert "step 2: re-clustered 24 images on D's features" in whole.stderr
    assert "step 4: re-clustered" in whole.stderr
    final = tmp_path / "whole" / "checkpoints" / "final.safetensors"
    stored = load_tensors(final, "clusters")["labels"]
    assert LABELS_TENSOR == "clusters.labels" and stored.shape == (24,)
    info = read_checkpoint_info(final)
    assert info.model.class_weights == tuple(int(c) for c in torch.bincount(stored.long(), minlength=3))
    # Stopped after step 3 (one re-clustering done) and resumed: the same weights and clusters as in one go.
    part = run_cli("train", *flags, "--name", "part", "--max-steps", "3")
    assert part.exit_code == 0, part.stderr
    resumed = run_cli("train", "--resume", tmp_path / "part", "--max-steps", "5")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming with the 3 clusters stored in final.safetensors" in resumed.stderr
    assert_same_weights(final, tmp_path / "part" / "checkpoints" / "final.safetensors")


def test_recluster_until_stops_reclustering_after_that_fraction_of_the_run(tmp_path: Path) -> None:
    result = run_cli("train", *reclustered_run_flags(tmp_path, until="0.5"), "--name", "half", "--max-steps", "7")
    assert result.exit_code == 0, result.stderr
    assert "step 2: re-clustered" in result.stderr  # 2/7 of the run
    assert "step 4: re-clustered" not in result.stderr and "step 6: re-clustered" not in result.stderr
    config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert (config["recluster_every"], config["recluster_until"]) == (2, 0.5)


def test_recluster_every_needs_clusters(tmp_path: Path) -> None:
    flags = [*TINY_TRAIN_FLAGS, "--out", tmp_path]
    assert_one_error(
        run_cli("train", *flags, "--recluster-every", "100"), EXIT_USAGE, "--recluster-every 100", "--clusters"
    )
    assert_one_error(
        run_cli("train", *flags, "--clusters", "3", "--recluster-every", "-1"), EXIT_USAGE, "--recluster-every"
    )
    for bad in ("0", "1.5"):
        assert_one_error(
            run_cli("train", *flags, "--clusters", "3", "--recluster-until", bad),
            EXIT_USAGE,
            f"--recluster-until {bad}",
        )
    assert not any(tmp_path.glob("*/config.json"))
