"""Tests for jetscan.core.models.registry: names, ModelInfo, hyperparameter checks, optimizers."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jetscan.core.errors import ConfigError, JetscanError  # noqa: E402
from jetscan.core.models import (  # noqa: E402
    CnnAE,
    JetModel,
    ModelInfo,
    available_models,
    build_model,
    default_hyper,
    make_optimizer,
    register,
)
from jetscan.core.models import registry  # noqa: E402

ALL = ("cnn_ae", "deeptop_minimal", "dense_ae", "image_ae", "lola_ae", "lola_tagger",
       "macaluso_shih", "pca")


def test_available_models_lists_every_model_sorted():
    assert available_models() == ALL
    assert available_models("tagger") == ("deeptop_minimal", "lola_tagger", "macaluso_shih")
    assert available_models("autoencoder") == ("cnn_ae", "dense_ae", "image_ae", "lola_ae")
    assert available_models("pca") == ("pca",)
    with pytest.raises(ConfigError, match="kind must be one of tagger, autoencoder, pca"):
        available_models("gan")


@pytest.mark.parametrize("name", ALL)
def test_model_info_fields(name):
    module, info = build_model(name)
    assert isinstance(module, JetModel) and isinstance(info, ModelInfo)
    assert info.name == name and info.kind in ("tagger", "autoencoder", "pca")
    assert "arXiv:" in info.paper and "arXiv:" in type(module).__doc__
    assert info.representation in ("heimel40", "ms37x4", "lola40")
    assert info.n_params == sum(p.numel() for p in module.parameters())
    assert dict(info.hyper) == default_hyper(name)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    if info.kind == "pca":
        assert info.optimizer is None and info.batch_size is None
    else:
        assert info.optimizer in ("sgd", "adadelta", "adam") and info.batch_size > 0
        assert info.optimizer_settings["lr"] == info.hyper["lr"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"
    with pytest.raises(TypeError):
        info.hyper["lr"] = 1.0
    assert info.as_dict()["input_shape"] == list(info.input_shape)


def test_paper_defaults_in_model_info():
    _, deeptop = build_model("deeptop_minimal")
    assert (deeptop.optimizer, deeptop.optimizer_settings["lr"], deeptop.batch_size, deeptop.loss) == (
        "sgd", 0.003, 1000, "mse_softmax")
    assert deeptop.input_shape == (40, 40)
    _, ms = build_model("macaluso_shih")
    assert (ms.optimizer, ms.optimizer_settings["lr"], ms.batch_size, ms.loss) == (
        "adadelta", 0.3, 128, "cross_entropy")
    assert ms.input_shape == (4, 37, 37) and ms.representation == "ms37x4"
    _, ms1 = build_model("macaluso_shih", channels=1)
    assert ms1.input_shape == (37, 37) and ms1.representation == "ms37"
    assert build_model("cnn_ae")[1].hyper["bottleneck"] == 6
    assert build_model("dense_ae")[1].hyper["bottleneck"] == 6
    assert build_model("pca")[1].hyper["bottleneck"] == 6
    assert build_model("image_ae")[1].loss == "pixel_sse"
    _, lola = build_model("lola_ae")
    assert lola.input_shape == (40, 4) and lola.loss == "p4_sse"


def test_hyperparameters_reach_module_and_info():
    module, info = build_model("cnn_ae", bottleneck=np.int64(9), lr=3e-4, batch_size=64)
    assert info.hyper["bottleneck"] == 9 and type(info.hyper["bottleneck"]) is int
    assert module.encoder[-1].out_features == 9
    assert info.optimizer_settings["lr"] == 3e-4 and info.batch_size == 64


def test_config_mapping_form():
    module, info = build_model({"name": "image_ae", "bottleneck": 12})
    assert info.hyper["bottleneck"] == 12
    _, info = build_model({"name": "image_ae", "bottleneck": 12}, bottleneck=14)
    assert info.hyper["bottleneck"] == 14
    with pytest.raises(ConfigError, match="needs a 'name' key"):
        build_model({"bottleneck": 12})


def test_unknown_model_lists_registered_names():
    with pytest.raises(ConfigError) as err:
        build_model("cnn-ae")
    msg = str(err.value)
    assert "unknown model 'cnn-ae'" in msg and "did you mean 'cnn_ae'" in msg
    for name in ALL:
        assert name in msg
    with pytest.raises(ConfigError, match="registered models: cnn_ae, deeptop_minimal"):
        build_model("transformer")
    assert isinstance(err.value, ValueError) and isinstance(err.value, JetscanError)


def test_unknown_hyperparameter_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        build_model("cnn_ae", bottlenek=6)
    msg = str(err.value)
    assert "cnn_ae.bottlenek: unknown hyperparameter (got 6)" in msg
    assert "bottleneck=6" in msg and "filters=128" in msg


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        ("cnn_ae", "bottleneck", -3, "cnn_ae.bottleneck: must be a positive integer (got -3)"),
        ("cnn_ae", "bottleneck", 0, "cnn_ae.bottleneck: must be a positive integer (got 0)"),
        ("cnn_ae", "bottleneck", 2.5, "cnn_ae.bottleneck: must be a positive integer (got 2.5)"),
        ("cnn_ae", "bottleneck", True, "cnn_ae.bottleneck: must be a positive integer (got True)"),
        ("cnn_ae", "bottleneck", "6", "cnn_ae.bottleneck: must be a positive integer (got '6')"),
        ("cnn_ae", "image_size", 42,
         "cnn_ae.image_size: must be an integer multiple of 4, at least 4 (got 42)"),
        ("image_ae", "image_size", 41,
         "image_ae.image_size: must be an integer multiple of 2, at least 2 (got 41)"),
        ("macaluso_shih", "lr", 0, "macaluso_shih.lr: must be a finite number > 0 (got 0)"),
        ("macaluso_shih", "lr", math.nan, "macaluso_shih.lr: must be a finite number > 0 (got nan)"),
        ("macaluso_shih", "anneal_factor", 1.5,
         "macaluso_shih.anneal_factor: must be a number strictly between 0 and 1 (got 1.5)"),
        ("deeptop_minimal", "batch_size", -1000,
         "deeptop_minimal.batch_size: must be a positive integer (got -1000)"),
        ("lola_tagger", "train_metric", 1, "lola_tagger.train_metric: must be True or False (got 1)"),
        ("lola_tagger", "n_combinations", -1,
         "lola_tagger.n_combinations: must be a non-negative integer (got -1)"),
        ("lola_ae", "momentum_scale", -2.0,
         "lola_ae.momentum_scale: must be a finite number > 0 (got -2.0)"),
        ("pca", "bottleneck", 2000, "pca.bottleneck: must be at most image_size**2 = 1600 (got 2000)"),
    ],
)
def test_impossible_hyperparameters_raise_config_error(name, key, value, message):
    with pytest.raises(ConfigError) as err:
        build_model(name, **{key: value})
    assert str(err.value) == message


def test_every_broken_rule_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        build_model("cnn_ae", bottleneck=-3, lr=-1.0)
    assert str(err.value) == (
        "cnn_ae.bottleneck: must be a positive integer (got -3); "
        "cnn_ae.lr: must be a finite number > 0 (got -1.0)"
    )


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"cnn_ae.bottleneck: must be a positive integer \(got 0\)"):
        CnnAE(bottleneck=0)


def test_make_optimizer_follows_the_papers():
    m, info = build_model("deeptop_minimal")
    opt, sched = make_optimizer(m, info)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.003 and sched is None
    m, info = build_model("macaluso_shih", lr=0.2)
    opt, sched = make_optimizer(m)
    assert isinstance(opt, torch.optim.Adadelta) and opt.param_groups[0]["lr"] == 0.2
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for _ in range(4):  # validation loss stuck: the annealing halves the rate
        sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    m, info = build_model("image_ae")
    assert isinstance(make_optimizer(m, info)[0], torch.optim.Adam)
    m, info = build_model("pca")
    with pytest.raises(ConfigError, match="pca is fitted, not trained"):
        make_optimizer(m, info)


def test_register_checks_names_and_classes(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register("toy")
    class Toy(JetModel):
        """A toy (arXiv:0000.00000)."""

        KIND = "tagger"
        PAPER = "nobody, arXiv:0000.00000"
        RULES = {"width": registry.positive_int}

        def __init__(self, *, width=3):
            super().__init__()
            self._configure(width=width)
            self.lin = torch.nn.Linear(width, 2)

        @property
        def input_shape(self):
            return (self.hyper["width"],)

    module, info = build_model("toy", width=5)
    assert info.n_params == 12 and "toy" in available_models()
    with pytest.raises(ConfigError, match="toy.width: must be a positive integer"):
        build_model("toy", width=0)
    with pytest.raises(ConfigError, match="the name 'cnn_ae' is taken"):
        register("cnn_ae")(Toy)
    with pytest.raises(TypeError, match="JetModel subclasses"):
        register("plain")(torch.nn.Linear)

    class NoRule(JetModel):
        KIND, PAPER, RULES = "tagger", "x", {}

        def __init__(self, *, width=3):
            super().__init__()

    with pytest.raises(TypeError, match="without a rule"):
        register("no_rule")(NoRule)


@pytest.mark.parametrize("name", ALL)
def test_models_are_device_agnostic(name):
    """Everything moves with ``.to(device)``: on the meta device, forward gives shapes only."""
    module, info = build_model(name)
    x = torch.rand(3, *info.input_shape)
    if name == "pca":
        module.fit(torch.rand(8, *info.input_shape))
        return  # fit state is checked on the host; the projection itself is covered elsewhere
    module = module.to("meta")
    out = module(x.to("meta"))
    assert out.device.type == "meta"
    assert out.shape == ((3, 2) if info.kind == "tagger" else x.shape)


def test_models_import_without_ray_dask_or_horovod():
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ray", "dask", "horovod", "distributed"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        torch.set_num_threads(1)
        from jetscan.core.models import available_models, build_model
        for name in available_models():
            build_model(name)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("name", ["cnn_ae", "pca", "lola_tagger", "macaluso_shih"])
def test_models_and_infos_pickle(name):
    """Models and ModelInfo travel to Ray workers and into checkpoints: they must pickle."""
    import pickle

    module, info = build_model(name)
    again = pickle.loads(pickle.dumps(module))
    assert again.hyper == module.hyper and again.info == info
    info2 = pickle.loads(pickle.dumps(info))
    assert info2 == info and hash(info2) == hash(info)
    for a, b in zip(module.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
