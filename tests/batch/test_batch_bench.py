"""The batch benchmark's ceilings: the model's operations counted on its graph, and the
ceiling arithmetic that says whether a ratio is reachable on a machine at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the torch extra (make test installs it)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bench.batch_bench import model_gflop, print_ceilings  # noqa: E402


def _model(path: Path) -> Path:
    """x (N x 3 x H x W, dynamic) -> 3x3 conv to 8 channels (padded) -> depthwise 3x3 conv
    (8 groups) -> global average -> MatMul to 5 outputs."""
    conv = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w1")
    depthwise = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w2")
    dense = numpy_helper.from_array(np.zeros((8, 5), np.float32), "w3")
    shape = numpy_helper.from_array(np.array([1, 8], np.int64), "flat")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("GlobalAveragePool", ["b"], ["c"]),
        helper.make_node("Reshape", ["c", "flat"], ["d"]),
        helper.make_node("MatMul", ["d", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[conv, depthwise, dense, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_model_operations_are_counted_on_the_graph_at_the_input_size(tmp_path: Path) -> None:
    path = _model(tmp_path / "tiny.onnx")
    pixels = 16 * 16
    macs = pixels * 8 * 3 * 3 * 3 + pixels * 8 * 1 * 3 * 3 + 8 * 5
    assert model_gflop(path, 16) == pytest.approx(2 * macs / 1e9)
    # the count follows the input size the card gives (convolutions scale with the pixels)
    assert model_gflop(path, 32) == pytest.approx(2 * (4 * (macs - 40) + 40) / 1e9)


def test_ceilings_are_every_core_running_a_worker_s_stages(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    costs = {"read": 1.0, "decode": 4.0, "pdq": 4.0, "blob": 1.0, "model fp32": 40.0,
             "model int8-mixed": 30.0}
    print_ceilings(costs, loop_rate=20.0, loop_steady_ms=40.0, engine_rates={"fp32": 36.0},
                   gflop=2.0, dense=100.0)
    out = capsys.readouterr().out
    # fp32: 2 cores / 50 ms = 40 images/s = 2x a 20 images/s loop, 1.6x its 25/s steady state;
    # the model alone 2 / 40 ms = 50/s
    assert ("fp32: a worker's stages on every core 40.0 images/s = 2.00x the loop (1.60x its "
            "steady state); the model alone 50.0 images/s = 2.50x (2.00x)") in out
    assert "the engine inside its job 36.0 images/s = 90% of its ceiling" in out
    assert "int8-mixed: a worker's stages on every core 50.0 images/s = 2.50x the loop" in out
    # 2 GFLOP in 40 ms = 50 GFLOP/s against 100 at best
    assert "fp32 on one thread 50 GFLOP/s" in out and "50% of what the core does" in out
