"""The bad-input battery (#15): hostile and careless input against every ``edgeq`` command and
the Python API entry points.

Every case expects a named error: for the CLI its documented exit code (docs/ERRORS.md; 2 for
argparse's usage errors) and exactly one ``edgeq COMMAND: error:`` line, for the API the
EdgeqError subclass; never a traceback, and nothing left at the output path (no hidden
temporary either). The CLI runs in-process through ``edgeq.cli.main``; subprocesses only where a
real signal is needed (tests/api/test_bad_inputs_signals.py). Models are a two-node ONNX graph and the
built-in digits CNN, so the whole battery takes seconds, not minutes.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq import errors
from edgeq.cli import main

USAGE = 2  # argparse


def tiny_model() -> onnx.ModelProto:
    """output = input @ w + b, input [batch, 4] -> output [batch, 3]."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    b = numpy_helper.from_array(np.ones(3, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["input", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["output"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w, b]),
                              opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    return model


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Hostile and valid inputs, by name (used as ``{name}`` in the CLI table)."""
    d = tmp_path_factory.mktemp("inputs")
    tiny = tiny_model()
    onnx.save(tiny, str(d / "tiny.onnx"))
    raw = (d / "tiny.onnx").read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    (d / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    (d / "text.onnx").write_text("this is not a model\n")
    (d / "folder.onnx").mkdir()
    (d / "file").write_text("a plain file, not a folder\n")
    (d / "baddb").mkdir()  # a tuning database whose files are garbage
    (d / "baddb" / "database_workload.json").write_text("garbage{\n")
    (d / "baddb" / "database_tuning_record.json").write_text("[1, 2\n")
    no_data = onnx.ModelProto()
    no_data.CopyFrom(tiny)
    no_data.graph.initializer[0].ClearField("raw_data")  # shape [4, 3] declared, no data
    onnx.save(no_data, str(d / "nodata.onnx"))
    np.save(d / "wrong_shape.npy", np.zeros((2, 7), np.float32))
    (d / "random.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "random.npz").write_bytes(b"PK\x03\x04 garbage")
    np.savez(d / "missing_inputs.npz", a=np.zeros((1, 4), np.float32), b=np.zeros((1, 4), np.float32))
    # an arm64 artifact: the library is only uploaded to a device, never loaded here, so an
    # aarch64 ELF shared-library header is all it needs before the (refused) connection
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 3, 183, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    (d / "tiny.arm64.so").write_bytes(header)
    tensor = {"name": "input", "dtype": "float32", "shape": ["batch", 4]}
    meta = {"target": "arm64", "compile_seconds": 0.0, "size_bytes": len(header), "inputs": [tensor],
            "outputs": [{**tensor, "name": "output", "shape": ["batch", 3]}]}
    (d / "tiny.arm64.json").write_text(json.dumps(meta))
    names = {p.stem if p.suffix in (".onnx", ".npy", ".npz") else p.name: str(p) for p in d.iterdir()}
    names.update(random_npy=str(d / "random.npy"), random_npz=str(d / "random.npz"), random=str(d / "random.onnx"),
                 arm64_artifact=str(d / "tiny.arm64.so"), unwritable="/proc/edgeq-out",
                 closed=f"rpc://127.0.0.1:{closed_port()}")
    return names


@pytest.fixture
def broken_passes():
    """Passes that break the graph in the ways a buggy rewrite does."""
    from edgeq.pass_manager import _PASSES, Pass, register_pass

    def cycle(model):  # mm reads add's output: mm -> add -> mm
        model.graph.node[0].input[0] = "output"
        return model

    def undefined(model):
        model.graph.node[1].input[1] = "ghost"
        return model

    def no_output(model):
        del model.graph.node[1]
        return model

    def nan(model):  # a valid graph whose outputs are NaN
        model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(3, np.nan, np.float32), "b"))
        return model

    def bad_attribute(model):  # passes the graph rules, fails onnx.checker
        model.graph.node[0].attribute.append(helper.make_attribute("transA", 1))
        return model

    made = {f"broken_{fn.__name__}": fn for fn in (cycle, undefined, no_output, nan, bad_attribute)}
    for name, fn in made.items():
        register_pass(Pass(name, fn, doc=f"{name}: a deliberately broken pass (tests)"))
    yield sorted(made)
    for name in made:
        _PASSES.pop(name)


# (id, argv, exit code, text the error line contains). {out} is a fresh path under tmp_path
# that must not exist afterwards; {name} is a file from `files`.
CLI_CASES = [
    # inspect
    ("inspect-empty", ["inspect", "{empty}"], 4, "empty file"),  # was exit 0
    ("inspect-truncated", ["inspect", "{truncated}"], 4, "truncated.onnx"),
    ("inspect-random", ["inspect", "{random}"], 4, "random.onnx"),
    ("inspect-text", ["inspect", "{text}"], 4, "text.onnx"),
    ("inspect-folder", ["inspect", "{folder}"], 4, "folder.onnx"),
    ("inspect-missing", ["inspect", "{out}"], 4, "no such file"),
    ("inspect-no-data", ["inspect", "{nodata}"], 4, "initializer 'w' declares shape [4, 3] but holds no data"),
    ("inspect-integer-only-empty", ["inspect", "{empty}", "--integer-only"], 4, "empty file"),
    # compile
    ("compile-known-then-unknown-target", ["compile", "{tiny}", "--target", "cpu,riscv128", "-o", "{out}"], 10, "unknown target 'riscv128'"),
    ("compile-empty-target-list", ["compile", "{tiny}", "--target", ",", "-o", "{out}"], 10, "empty target name"),  # was exit 0
    ("compile-trailing-comma", ["compile", "{tiny}", "--target", "cpu,", "-o", "{out}"], 10, "empty target name"),
    ("compile-target-twice", ["compile", "{tiny}", "--target", "cpu", "--target", "cpu", "-o", "{out}"], 10, "more than once"),
    ("compile-empty-model", ["compile", "{empty}", "--target", "cpu", "-o", "{out}"], 4, "empty.onnx"),
    ("compile-random-model", ["compile", "{random}", "--target", "cpu", "-o", "{out}"], 4, "random.onnx"),
    ("compile-folder-model", ["compile", "{folder}", "--target", "cpu", "-o", "{out}"], 4, "folder.onnx"),
    ("compile-pytorch-model", ["compile", "digits-cnn", "--target", "cpu", "-o", "{out}"], 4, "export it first: edgeq export digits-cnn"),
    ("compile-no-data", ["compile", "{nodata}", "--target", "cpu", "-o", "{out}"], 4, "holds no data"),
    ("compile-out-is-a-file", ["compile", "{tiny}", "--target", "cpu", "-o", "{file}"], 14, "is a file"),
    ("compile-out-under-a-file", ["compile", "{tiny}", "--target", "cpu", "-o", "{file}/sub"], 14, "is a file, not a folder"),
    ("compile-out-unwritable", ["compile", "{tiny}", "--target", "cpu", "-o", "{unwritable}"], 14, "not writable"),
    ("compile-specialize-zero", ["compile", "{tiny}", "--target", "cpu", "--specialize", "batch=0", "-o", "{out}"], 9, "--specialize 'batch=0'"),
    ("compile-corrupt-tuning-db", ["compile", "{tiny}", "--target", "cpu", "--tuning-db", "{baddb}", "-o", "{out}"], 9, "unreadable tuning database"),
    ("compile-not-a-tuning-db", ["compile", "{tiny}", "--target", "cpu", "--tuning-db", "{folder}", "-o", "{out}"], 9, "not a tuning database"),
    # optimize
    ("optimize-out-is-a-folder", ["optimize", "{tiny}", "{folder}"], 14, "is a directory"),
    ("optimize-out-under-a-file", ["optimize", "{tiny}", "{file}/x.onnx"], 14, "is a file, not a folder"),
    ("optimize-out-unwritable", ["optimize", "{tiny}", "{unwritable}/x.onnx"], 14, "not writable"),
    ("optimize-empty-pass-list", ["optimize", "{tiny}", "{out}", "--passes", ","], 8, "empty pass name"),  # was exit 0
    ("optimize-unknown-pass", ["optimize", "{tiny}", "{out}", "--passes", "fold_everything"], 8, "unknown pass 'fold_everything'"),
    ("optimize-empty-model", ["optimize", "{empty}", "{out}"], 4, "empty.onnx"),
    ("optimize-truncated-model", ["optimize", "{truncated}", "{out}"], 4, "truncated.onnx"),
    ("optimize-random-inputs", ["optimize", "{tiny}", "{out}", "--inputs", "{random_npz}"], 4, "random.npz"),
    ("optimize-negative-seed", ["optimize", "{tiny}", "{out}", "--seed", "-1"], USAGE, "argument --seed"),
    # validate (--reference files other than ONNX: tests/api/test_model_spec_no_pickles.py)
    ("validate-zero-samples", ["validate", "{tiny}", "--samples", "0"], USAGE, "argument --samples"),
    ("validate-negative-max-rel", ["validate", "{tiny}", "--max-rel", "-1"], USAGE, "argument --max-rel"),
    ("validate-nan-max-rel", ["validate", "{tiny}", "--max-rel", "nan"], USAGE, "argument --max-rel"),
    ("validate-top1-over-one", ["validate", "{tiny}", "--min-top1", "2"], USAGE, "argument --min-top1"),
    ("validate-empty-model", ["validate", "{empty}"], 4, "empty.onnx"),
    ("validate-random-model", ["validate", "{random}"], 4, "random.onnx"),
    ("validate-folder-artifact", ["validate", "{tiny}", "{folder}"], 4, "folder"),
    ("validate-missing-artifact", ["validate", "{tiny}", "{out}"], 4, "no such artifact"),
    ("validate-bad-device-url", ["validate", "{tiny}", "{arm64_artifact}", "--device", "rpc:/host"], 11, "expected rpc://host:port"),
    ("validate-unreachable-device", ["validate", "{tiny}", "{arm64_artifact}", "--device", "{closed}"], 11, "127.0.0.1"),
    ("validate-artifact-for-another-host", ["validate", "{tiny}", "{arm64_artifact}"], 11, "built for arm64"),
    ("validate-pt2-reference", ["validate", "{tiny}", "--reference", "{out}.pt2"], 4, "a .pt2 file is a pickle"),
    ("validate-unknown-reference", ["validate", "{tiny}", "--reference", "{file}"], 4, "not a model edgeq can load"),
    ("validate-text-reference", ["validate", "{tiny}", "--reference", "{text}"], 4, "text.onnx"),
    ("validate-unknown-recipe-reference", ["validate", "{tiny}", "--reference", "digits:w9a9"], 5, "'w9a9'"),
    ("validate-random-npy", ["validate", "{tiny}", "--inputs", "{random_npy}"], 4, "random.npy"),
    ("validate-wrong-shape-npy", ["validate", "{tiny}", "--inputs", "{wrong_shape}"], 11, "tiny.onnx"),
    ("validate-bad-dim", ["validate", "{tiny}", "--dim", "=3"], 11, "--dim '=3'"),
    # generate (each refused before a model is loaded, quantized, exported or compiled)
    ("generate-zero-new-tokens", ["generate", "smollm2", "--prompt", "hi", "--max-new-tokens", "0"], USAGE, "argument --max-new-tokens"),
    ("generate-top-p-over-one", ["generate", "smollm2", "--prompt", "hi", "--top-p", "2"], USAGE, "argument --top-p"),
    ("generate-negative-temperature", ["generate", "smollm2", "--prompt", "hi", "--temperature", "-1"], USAGE, "argument --temperature"),
    ("generate-missing-model", ["generate", "{out}.gguf", "--prompt", "hi"], 4, "no such model"),
    ("generate-empty-folder", ["generate", "{folder}", "--prompt", "hi"], 4, "no KV-cache .onnx file"),
    ("generate-bad-device-url", ["generate", "smollm2", "--prompt", "hi", "--executor", "tvm", "--device", "rpc:/x"], 11, "expected rpc://host:port"),
    ("generate-unknown-preset", ["generate", "smollm2", "--prompt", "hi", "--preset", "w9g1-rtn"], 5, "'w9g1-rtn'"),
    ("generate-unknown-target", ["generate", "smollm2", "--prompt", "hi", "--executor", "tvm", "--target", "z80"], 10, "z80"),
    # profile
    ("profile-repeat-zero", ["profile", "{tiny}", "--repeat", "0", "--out", "{out}"], USAGE, "argument --repeat"),  # was IndexError
    ("profile-repeat-negative", ["profile", "{tiny}", "--repeat", "-3", "--out", "{out}"], USAGE, "argument --repeat"),
    ("profile-warmup-negative", ["profile", "{tiny}", "--warmup", "-1", "--out", "{out}"], USAGE, "argument --warmup"),
    ("profile-batch-zero", ["profile", "{tiny}", "--batch", "0", "--out", "{out}"], USAGE, "argument --batch"),
    ("profile-threads-zero", ["profile", "{tiny}", "--threads", "0", "--out", "{out}"], USAGE, "argument --threads"),
    ("profile-out-is-a-file", ["profile", "{tiny}", "--out", "{file}"], 14, "is a file"),
    ("profile-empty-model", ["profile", "{empty}", "--out", "{out}"], 4, "empty.onnx"),
    ("profile-empty-recipe-list", ["profile", "--recipes", ",", "--out", "{out}"], 5, "empty recipe name"),
    ("profile-unknown-recipe", ["profile", "--recipes", "w8a8,w9a9", "--out", "{out}"], 5, "'w9a9'"),
    ("profile-unknown-target", ["profile", "--recipes", "w8a8", "--target", "riscv128", "--out", "{out}"], 10, "riscv128"),
    ("profile-unreachable-device", ["profile", "{tiny}", "{arm64_artifact}", "--device", "{closed}", "--repeat", "1", "--out", "{out}"], 11, "127.0.0.1"),
    ("profile-missing-artifact", ["profile", "{tiny}", "{out}.so", "--out", "{out}"], 4, "no such artifact"),
    # tune
    ("tune-zero-trials", ["tune", "{tiny}", "--trials", "0", "-o", "{out}"], USAGE, "argument --trials"),  # was a 162 s search
    ("tune-zero-budget", ["tune", "{tiny}", "--budget", "0", "-o", "{out}"], USAGE, "argument --budget"),
    ("tune-empty-target", ["tune", "{tiny}", "--target", "", "-o", "{out}"], 10, "unknown target ''"),
    ("tune-empty-model", ["tune", "{empty}", "-o", "{out}"], 4, "empty.onnx"),
    ("tune-out-is-a-file", ["tune", "{tiny}", "-o", "{file}"], 14, "is a file"),
    # quantize
    ("quantize-no-model", ["quantize", "-o", "{out}"], USAGE, "a model and a preset are required"),
    ("quantize-no-out", ["quantize", "digits-cnn", "w4g32-rtn"], USAGE, "-o/--out"),
    ("quantize-group-size-zero", ["quantize", "digits-cnn", '{{"method": "rtn", "bits": 4, "group_size": 0}}', "-o", "{out}"], 5, "group_size = 0"),  # was ZeroDivisionError
    ("quantize-negative-group", ["quantize", "digits-cnn", '{{"method": "rtn", "group_size": -8}}', "-o", "{out}"], 5, "group_size = -8"),
    ("quantize-bits-99", ["quantize", "digits-cnn", '{{"method": "rtn", "bits": 99}}', "-o", "{out}"], 5, "bits = 99"),
    ("quantize-bits-as-text", ["quantize", "digits-cnn", '{{"method": "rtn", "bits": "4"}}', "-o", "{out}"], 5, "bits = '4'"),
    ("quantize-malformed-json", ["quantize", "digits-cnn", '{{"method":', "-o", "{out}"], 5, "malformed"),  # was JSONDecodeError
    ("quantize-json-list", ["quantize", "digits-cnn", "[1, 2]", "-o", "{out}"], 5, "must be an object"),
    ("quantize-unknown-method", ["quantize", "digits-cnn", '{{"method": "magic"}}', "-o", "{out}"], 5, "unknown recipe method 'magic'"),
    ("quantize-unknown-field", ["quantize", "digits-cnn", '{{"method": "rtn", "bitz": 4}}', "-o", "{out}"], 5, "bitz"),
    ("quantize-out-is-a-folder", ["quantize", "digits-cnn", "w8-rtn", "-o", "{folder}"], 14, "is a directory"),  # was IsADirectoryError
    ("quantize-out-under-a-file", ["quantize", "digits-cnn", "w8-rtn", "-o", "{file}/x.safetensors"], 14, "is a file, not a folder"),
    ("quantize-out-unwritable", ["quantize", "digits-cnn", "w8-rtn", "-o", "{unwritable}/x.safetensors"], 14, "not writable"),
    ("quantize-calib-zero", ["quantize", "digits-cnn", "w8-rtn", "-o", "{out}", "--calib", "0"], USAGE, "argument --calib"),
    ("quantize-unknown-model", ["quantize", "resnet", "w8-rtn", "-o", "{out}"], 4, "resnet: no such file, folder or built-in model"),  # was "invalid choice"
    ("quantize-onnx-model", ["quantize", "{tiny}", "w8-rtn", "-o", "{out}"], 4, "tiny.onnx: an ONNX file is not a PyTorch model"),
    ("quantize-folder-without-config", ["quantize", "{folder}", "w8-rtn", "-o", "{out}"], 4, "folder.onnx: a folder without config.json"),
    ("quantize-pickle", ["quantize", "{out}.pt", "w8-rtn", "-o", "{out}"], 4, "is a pickle"),
    # export
    ("export-external-data-named-like-the-model", ["export", "digits", "-o", "{out}", "--external-data", "result"], 7, "is the model file"),  # left a corrupt model
    ("export-external-data-dot-slash-model", ["export", "digits", "-o", "{out}", "--external-data", "./result"], 7, "is the model file"),
    ("export-external-data-outside", ["export", "digits", "-o", "{out}", "--external-data", "../w.bin"], 7, "leaves the output folder"),
    ("export-external-data-a-folder", ["export", "digits", "-o", "{out}", "--external-data", "."], 7, "leaves the output folder"),
    ("export-out-is-a-folder", ["export", "digits", "-o", "{folder}"], 14, "is a directory"),
    ("export-out-under-a-file", ["export", "digits", "-o", "{file}/x.onnx"], 14, "is a file, not a folder"),
    ("export-group-size-zero", ["export", "digits", "-o", "{out}", "--group-size", "0"], USAGE, "argument --group-size"),
    ("export-opset-5", ["export", "digits", "-o", "{out}", "--opset", "5"], 7, "opset 5"),
    ("export-impossible-percentile", ["export", "digits", "--preset", '{{"method": "w8a8", "act_percentile": 500}}', "-o", "{out}"], 5, "act_percentile = 500"),
    ("export-negative-percentile", ["export", "digits", "--preset", '{{"method": "w8a8", "act_percentile": -1}}', "-o", "{out}"], 5, "act_percentile = -1"),  # was RuntimeError
    ("export-empty-safetensors", ["export", "{empty}", "-o", "{out}"], 4, "empty.onnx"),
    ("export-folder-as-model", ["export", "{folder}", "-o", "{out}"], 4, "folder.onnx"),
    ("export-random-safetensors", ["export", "{random}", "-o", "{out}"], 4, "random.onnx"),
    # run
    ("run-missing-model", ["run", "{out}.onnx"], 4, "no such file"),
    ("run-empty-model", ["run", "{empty}"], 4, "empty.onnx"),
    ("run-onnx-on-torch", ["run", "{tiny}", "--executor", "torch"], 11, "an ONNX file runs on onnxruntime"),
    ("run-onnx-on-a-device", ["run", "{tiny}", "--device", "{closed}"], 11, "--device runs compiled artifacts"),
    ("run-artifact-for-another-host", ["run", "{arm64_artifact}"], 11, "built for arm64"),
    ("run-unreachable-device", ["run", "{arm64_artifact}", "--device", "{closed}"], 11, "127.0.0.1"),
    ("run-bad-device-url", ["run", "{arm64_artifact}", "--device", "rpc:/host"], 11, "expected rpc://host:port"),
    ("run-random-npz", ["run", "{tiny}", "--inputs", "{random_npz}"], 4, "random.npz"),
    ("run-wrong-count-npz", ["run", "{tiny}", "--inputs", "{missing_inputs}"], 4, "holds 2 arrays"),
    ("run-bad-dim", ["run", "{tiny}", "--dim", "x=0"], 11, "--dim 'x=0'"),
    ("run-negative-seed", ["run", "{tiny}", "--seed", "-1"], USAGE, "argument --seed"),
    ("run-out-is-a-folder", ["run", "{tiny}", "-o", "{folder}"], 14, "is a directory"),
    ("run-out-unwritable", ["run", "{tiny}", "-o", "{unwritable}/out.npz"], 14, "not writable"),
    ("run-unknown-model", ["run", "resnet"], 4, "resnet: no such file, folder or built-in model"),
    # demo
    ("demo-unknown-recipe", ["demo", "--recipe", "w9a9", "--out", "{out}"], 5, "'w9a9'"),  # left the folder
    ("demo-out-is-a-file", ["demo", "--out", "{file}"], 14, "is a file"),  # was FileExistsError
    # device (the arm64 device's own state is never touched)
    ("device-start-unknown", ["device", "start", "riscv"], 11, "unknown device 'riscv'"),
    ("device-status-unknown", ["device", "status", "riscv"], 11, "unknown device 'riscv'"),
    ("device-stop-unknown", ["device", "stop", "riscv"], 11, "unknown device 'riscv'"),
    ("device-port-zero", ["device", "start", "--port", "0"], USAGE, "argument --port"),
    ("device-public-host", ["device", "start", "--host", "0.0.0.0"], 11, "--allow-remote"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def snapshot(files: dict[str, str]) -> dict[str, bytes | None]:
    return {name: Path(p).read_bytes() if Path(p).is_file() else None for name, p in files.items()}


@pytest.mark.parametrize("argv, code, text", [pytest.param(a, c, t, id=i) for i, a, c, t in CLI_CASES])
def test_cli_bad_input(argv, code, text, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "result"
    before = snapshot(files)
    got, err = run_cli([a.format(**files, out=out) for a in argv], capsys)
    assert "Traceback" not in err
    assert got == code, err
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"edgeq {argv[0]}"), err
    assert text in lines[0], err
    assert not out.exists(), f"left {sorted(p.name for p in out.iterdir()) if out.is_dir() else out}"
    assert not [p for p in tmp_path.rglob("*") if ".edgeq-tmp-" in p.name]
    assert snapshot(files) == before, "an input file was changed"
    assert not list(Path(files["folder"]).iterdir())


def test_every_command_is_in_the_battery():
    from edgeq.commands import COMMANDS

    # edgeq targets reads nothing and writes nothing: its only option is --json
    covered = {argv[0] for _, argv, _, _ in CLI_CASES} | {"optimize", "targets"}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered


@pytest.mark.parametrize("which", ["broken_cycle", "broken_undefined", "broken_no_output", "broken_bad_attribute"])
def test_optimize_pass_that_breaks_the_graph(which, broken_passes, files, tmp_path, capsys):
    """Was: the broken graph written and exit 0."""
    out = tmp_path / "out.onnx"
    code, err = run_cli(["optimize", files["tiny"], str(out), "--passes", which], capsys)
    assert code == errors.PassError.exit_code, err
    assert f"pass {which!r} produced an invalid model" in err and "Traceback" not in err
    assert not out.exists()


def test_optimize_verify_catches_nan_outputs(broken_passes, files, tmp_path, capsys):
    """Was: max(0.0, nan) is 0.0, so a pass that made the outputs NaN passed --verify."""
    out = tmp_path / "out.onnx"
    code, err = run_cli(["optimize", files["tiny"], str(out), "--passes", "broken_nan", "--verify"], capsys)
    assert code == errors.PassError.exit_code, err
    assert "pass 'broken_nan' changed the model's outputs: NaN or inf" in err
    assert not out.exists()


def test_validate_compare_is_nan_aware():
    from edgeq.runtime.validate import Tolerance, compare

    ref = np.array([[1.0, 2.0, 3.0]], np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        out = ref.copy()
        out[0, 1] = bad
        n = compare("x", ref, out)
        assert n.nonfinite_mismatches == 1 and n.max_abs == np.inf and not Tolerance().accepts(n)
    same = np.array([[1.0, np.nan, np.inf]], np.float32)
    n = compare("x", same, same.copy())
    assert n.max_abs == 0.0 and n.mismatches == 0 and Tolerance(exact=True).accepts(n)


def test_internal_error_is_one_line(monkeypatch, capsys):
    """A bug (not an EdgeqError) is one line and exit 70; EDGEQ_DEBUG=1 adds the traceback."""
    import edgeq.commands.inspect as inspect_cmd

    def boom(args):
        raise ZeroDivisionError("integer modulo by zero")

    monkeypatch.setattr(inspect_cmd, "summary", boom)
    code, err = run_cli(["inspect", "x.onnx"], capsys)
    assert code == 70 and "Traceback" not in err
    assert err.strip() == ("edgeq inspect: internal error: ZeroDivisionError: integer modulo by zero "
                           "(a bug in edgeq; run with EDGEQ_DEBUG=1 for the traceback)")
    monkeypatch.setenv("EDGEQ_DEBUG", "1")
    code, err = run_cli(["inspect", "x.onnx"], capsys)
    assert code == 70 and "Traceback" in err


def test_keyboard_interrupt_in_a_command(monkeypatch, capsys):
    import edgeq.commands.inspect as inspect_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_cmd, "summary", interrupted)
    code, err = run_cli(["inspect", "x.onnx"], capsys)
    assert code == 130 and err.strip() == "edgeq inspect: interrupted"


def test_empty_library_message_is_not_an_index_error():
    """``str(exc).splitlines()[0]`` on an empty TVM message raised IndexError."""
    from edgeq.errors import first_line

    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(RuntimeError("\n\n  first\nsecond")) == "first"


def test_exit_codes_are_distinct_and_documented():
    import inspect as pyinspect

    classes = [c for _, c in pyinspect.getmembers(errors, pyinspect.isclass) if issubclass(c, errors.EdgeqError)]
    codes = {c.__name__: c.__dict__.get("exit_code") for c in classes}
    assert None not in codes.values(), codes
    assert len(set(codes.values())) == len(codes), codes
    assert not set(codes.values()) & {0, 1, 2, 70, 130}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ERRORS.md").read_text()
    for name, code in codes.items():
        assert f"| {code} | `{name}` |" in doc, name


# ---- the Python API ------------------------------------------------------------------------

def _api_cases():
    from edgeq.quant.weight_only_recipes import RTNRecipe

    def digits():
        from edgeq.models import load_digits_cnn

        return load_digits_cnn()

    x = torch.zeros(1, 1, 8, 8)
    return [
        ("quantize-group-size-zero", lambda f, t: edgeq.quantize(digits(), '{"method": "rtn", "group_size": 0}'), errors.RecipeError, "group_size = 0"),
        ("quantize-recipe-bits-9", lambda f, t: edgeq.quantize(digits(), RTNRecipe(bits=9)), errors.RecipeError, "bits = 9"),
        ("quantize-malformed-json", lambda f, t: edgeq.quantize(digits(), '{"method": "rtn",'), errors.RecipeError, "malformed"),
        ("quantize-calib-wrong-shape", lambda f, t: edgeq.quantize(digits(), "w8a8", calib=torch.zeros(5, 7)), errors.QuantizationError, "layer 'stem.0'"),
        ("quantize-calib-wrong-channels", lambda f, t: edgeq.quantize(digits(), "w8a8", calib=torch.zeros(5, 3, 8, 8)), errors.QuantizationError, "[5, 3, 8, 8]"),
        ("quantize-calib-not-tensors", lambda f, t: edgeq.quantize(digits(), "w8a8", calib=["abc"]), errors.QuantizationError, "str"),
        ("export-to-a-folder", lambda f, t: edgeq.export(digits(), x, f["folder"]), errors.OutputPathError, "is a directory"),
        ("export-under-a-file", lambda f, t: edgeq.export(digits(), x, f"{f['file']}/m.onnx"), errors.OutputPathError, "not a folder"),
        ("export-external-data-is-the-model", lambda f, t: edgeq.export(digits(), x, t / "result", external_data="result"), errors.ExportError, "is the model file"),
        ("compile-empty", lambda f, t: edgeq.compile(f["empty"], out_dir=t / "result"), errors.ModelFileError, "empty.onnx"),
        ("compile-truncated", lambda f, t: edgeq.compile(f["truncated"], out_dir=t / "result"), errors.ModelFileError, "truncated.onnx"),
        ("compile-empty-target", lambda f, t: edgeq.compile(f["tiny"], target="", out_dir=t / "result"), errors.TargetError, "unknown target ''"),
        ("compile-out-under-a-file", lambda f, t: edgeq.compile(f["tiny"], out_dir=f"{f['file']}/result"), errors.OutputPathError, "not a folder"),
        ("compile-no-data", lambda f, t: edgeq.compile(f["nodata"], out_dir=t / "result"), errors.ModelFileError, "holds no data"),
        ("validate-empty-onnx", lambda f, t: edgeq.validate(digits(), [f["empty"]], [x.numpy()]), errors.ModelFileError, "empty.onnx"),
        ("validate-random-onnx", lambda f, t: edgeq.validate(digits(), [f["random"]], [x.numpy()]), errors.ModelFileError, "random.onnx"),
        ("validate-missing-artifact", lambda f, t: edgeq.validate(digits(), [str(t / "result.so")], [x.numpy()]), errors.ModelFileError, "no such artifact"),
        ("optimize-empty-pass-name", lambda f, t: edgeq.passes.run_passes(tiny_model(), [""]), errors.PassError, "unknown pass ''"),
        ("optimize-undefined-input-model", lambda f, t: edgeq.passes.run_passes(_undefined_input_model(), ["dead_nodes"]), errors.PassError, "reads 'ghost'"),
        ("profile-repeat-zero", lambda f, t: _latency(f, repeat=0), errors.RuntimeExecError, "repeat (0)"),
        ("profile-warmup-negative", lambda f, t: _latency(f, warmup=-1), errors.RuntimeExecError, "warmup (-1)"),
        ("inspect-empty", lambda f, t: edgeq.model_info.model_info(f["empty"]), errors.ModelFileError, "empty file"),
        ("tune-zero-trials", lambda f, t: _tune(f, t, trials_per_kernel=0), errors.CompileError, "trials per kernel (0)"),
    ]


def _undefined_input_model() -> onnx.ModelProto:
    model = tiny_model()
    model.graph.node[1].input[1] = "ghost"
    return model


def _latency(files, **kw):
    from edgeq.runtime.executors import OrtExecutor
    from edgeq.runtime.profile import latency

    return latency(OrtExecutor(files["tiny"]), [np.zeros((1, 4), np.float32)], **kw)


def _tune(files, tmp_path, **kw):
    from edgeq.targets.tune import tune

    return tune(files["tiny"], tmp_path / "result", progress=False, **kw)


@pytest.mark.parametrize("case", _api_cases(), ids=lambda c: c[0])
def test_api_bad_input(case, files, tmp_path):
    import edgeq.model_info  # noqa: F401
    import edgeq.passes  # noqa: F401

    _, call, error, text = case
    with pytest.raises(error) as info:
        call(files, tmp_path)
    assert text in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "result").exists()
    assert not [p for p in tmp_path.rglob("*") if ".edgeq-tmp-" in p.name]
