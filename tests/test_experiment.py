"""Experiment-level behaviour that needs real (tiny) artefacts: a world, a pretrained model and a teacher cache."""
from pathlib import Path

import pytest
import torch
import yaml

from dive_nb.experiment import finetune_many, stage_pretrain, stage_teacher, stage_world

SMOKE = Path(__file__).parent / "smoke_params.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    params = yaml.safe_load(SMOKE.read_text())
    world = stage_world(params, d / "world")
    pre = stage_pretrain(params, world, d / "pretrained")
    teacher = stage_teacher(params, world, pre, d / "teacher")
    return params, world, pre, teacher, d


def _weights(run_dir):
    return torch.load(Path(run_dir) / "model.pt", weights_only=True)


def test_finetune_many_two_workers_equal_one(tiny):
    "Two spawned workers (one thread each) train exactly what one process trains, seed by seed."
    params, world, pre, teacher, d = tiny
    one = finetune_many(params, world, pre, teacher, [("dive", s, d / "one" / f"dive-{s}", {}) for s in (0, 1)], workers=1)
    two = finetune_many(params, world, pre, teacher, [("dive", s, d / "two" / f"dive-{s}", {}) for s in (0, 1)], workers=2)
    assert [Path(p).name for p in one] == [Path(p).name for p in two] == ["dive-0", "dive-1"]
    for a, b in zip(one, two):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a} and {b} differ"
    # and the two seeds really are different runs (the comparison above could not pass vacuously)
    w0, w1 = _weights(one[0]), _weights(one[1])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
