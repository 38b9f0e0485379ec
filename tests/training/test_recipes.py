"""Recipes: the dataset's default, the named variants (--recipe), and their precedence."""

import json

import pytest

from gpunet.config import RECIPES, VARIANTS, TrainConfig, resolve_config


def test_fast_cifar_recipe_is_the_named_variant():
    cfg = resolve_config("cifar10", overrides={"recipe": "fast"})
    want = VARIANTS[("cifar10", "fc", "fast")]
    assert cfg.recipe == "fast" and cfg.arch == "fc"
    assert (cfg.hidden, cfg.epochs, cfg.dropout) == (want["hidden"], want["epochs"], want["dropout"])
    assert resolve_config("cifar10").recipe == "default"
    assert resolve_config("cifar10").hidden == RECIPES[("cifar10", "fc")]["hidden"]


def test_flags_and_files_override_a_variant(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"recipe": "fast", "epochs": 3}))
    cfg = resolve_config("cifar10", config_file=str(f), overrides={"dropout": 0.0})
    assert (cfg.recipe, cfg.epochs, cfg.dropout) == ("fast", 3, 0.0)


def test_unknown_or_misplaced_recipe_is_refused():
    with pytest.raises(ValueError, match=r"recipe: expected one of \['default'\] for fer2013"):
        resolve_config("fer2013", overrides={"recipe": "fast"})
    with pytest.raises(ValueError, match="recipe: expected one of"):
        resolve_config("cifar10", overrides={"recipe": "fastest"})


def test_old_config_files_without_recipe_still_load():
    assert TrainConfig.from_dict({"dataset": "cifar10", "hidden": [8]}).recipe == "default"
