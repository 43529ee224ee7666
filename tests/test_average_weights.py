"""tools/average_weights.py: the weighted mean of one cut's models, refused for models that differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tool_modules import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("average_weights")


def _shifted(src: Path, dst: Path, by: float) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file({k: v + by if v.is_floating_point() else v for k, v in tensors.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "slim.json").write_text(json.dumps({"kept_layers": [0, 2]}))
    return dst


def test_the_mean_of_two_models_and_its_record(tool, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _shifted(tiny_llama, tmp_path / "a", 0.0), _shifted(tiny_llama, tmp_path / "b", 1.0)
    result = tool.main([str(a), str(b), "--weights", "3,1", "--out", str(tmp_path / "soup")])
    assert result["weights"] == [0.75, 0.25]
    ta, soup = load_file(str(a / "model.safetensors")), load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert soup.keys() == ta.keys()
    for name, tensor in soup.items():
        assert torch.allclose(tensor.float(), ta[name].float() + 0.25, atol=1e-2), name
    record = json.loads((tmp_path / "soup" / "slim.json").read_text())
    assert record["kept_layers"] == [0, 2] and record["averaged"] == {"models": [str(a), str(b)], "weights": [0.75, 0.25]}
    assert (tmp_path / "soup" / "config.json").read_text() == (a / "config.json").read_text()
    with pytest.raises(SystemExit, match="exists; pass --force"):
        tool.main([str(a), str(b), "--out", str(tmp_path / "soup")])
    again = load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert all(torch.equal(again[k], soup[k]) for k in soup)  # nothing overwritten
    equal = tool.main([str(a), str(b), "--out", str(tmp_path / "soup"), "--force"])
    assert equal["weights"] == [0.5, 0.5]


def test_models_of_other_cuts_are_refused(tool, tiny_llama: Path, tmp_path: Path) -> None:
    a = _shifted(tiny_llama, tmp_path / "a", 0.0)
    other = _shifted(tiny_llama, tmp_path / "other", 0.0)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (other / "config.json").write_text(json.dumps(config))
    for argv, message in [([str(a), str(other)], "has another config"), ([str(a)], "at least two models"),
                          ([str(a), str(tmp_path)], "is not a model directory"), ([str(a), str(a), "--weights", "1"], "give 2 numbers")]:
        with pytest.raises(SystemExit, match=message):
            tool.main([*argv, "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
