"""Refactoring keeps the exported files byte for byte: a fixed set of models is quantized, exported
and hashed (sha256 of the ONNX file, and of one saved .safetensors), and every hash must equal the
one stored below, which was recorded before the plumbing of issue 16 was changed (the GPTQ
cases: before LoPRo's solve and GPTQ's were made one).

A change that is meant to alter the files (a new export form, a different rounding) updates the
table: ``python tests/export/test_export_invariance.py`` prints the current hashes. Quantizers run on one
thread so that float reductions, and so the rounded integers, do not depend on the core count.

They do depend on the host's SIMD: PyTorch's float convolutions round differently with AVX-512
than with AVX2 alone, so the digits model's calibrated activation ranges, hence its activation
scales, differ in the last bit. ``EXPECTED`` was recorded on an AVX-512 host; the activation-
calibrated digits files have their own hashes on a host without it (``EXPECTED_WITHOUT_AVX512``,
recorded on an AVX2-only AMD EPYC host; the weight-only files are the same on both).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, also when run as a script
from _tiny_models import one_thread, tiny_llama  # noqa: E402

EXPECTED = {
    "digits-w4-rtn-auto": "bb54ef69a6d36ea2bf5d51240bdfaf4c77053cb6c985c4625cdc82ca4d198650",
    "digits-w4-rtn-edgeq": "9d4108dd7ef2b0f35a8c62b0b092b2387fc69528a2f98e7e554fcfbbc939e446",
    "digits-w4-rtn-safetensors": "1433a3b6c99063ade7926938367930c6f64307c21d07d59f1323842cfd82bb92",
    "digits-w4a8-dyadic-int": "36bb3ad04c64edbd82dd70129e6940fb04d98c547915a2f823a4ca94216b00c0",
    "digits-w8a8": "4d456abe5546342bd365025497204542e01c147d0459f195a5038c9e156fd687",
    "digits-w8a8-dyadic-int": "8550bb962d1d8bc0918ed18358403da339d6e838be99b356b91dd6fc4df0487a",
    "digits-w8a8-dyadic-qdq": "99315188c462d8f3b89f10ec4c920af4504a695c3232f85b845fc91d68a16119",
    "llama-w3-lopro-auto": "786fe61f4bca2a3ec38eb008be89b998658975a03c65ff060af865c9928fce06",
    "llama-w3-lopro-edgeq": "d8b1e4bd334018f51e42696445c07781c14123ed2edbc9891bb68be565a18f3c",
    "llama-w3-lrqmm-auto": "9796ff51796eacfaa326db6c323e4e3966abc6b092f6cfa2da5d5010a753e839",
    "llama-w3-lrqmm-edgeq": "9796ff51796eacfaa326db6c323e4e3966abc6b092f6cfa2da5d5010a753e839",
    "llama-w4g128-gptq-auto": "fdf99b825f96f8235e59b0b926b29b7912e66953d7d319bf4ca8863943e0a72c",
    "llama-w4g128-gptq-edgeq": "71e4e44670585668c188026d3edc8b9c3d43af1b7fc1e667b4956adead6ad46b",
    "llama-w3g64-hadamard-gptq-auto": "3532f36fbc07a1baa840875c4cfa2c24ff26c232ee354f9a49f7e6f7e6bab349",
    "llama-w3g64-hadamard-gptq-edgeq": "3532f36fbc07a1baa840875c4cfa2c24ff26c232ee354f9a49f7e6f7e6bab349",
    "llama-w4g128-hadamard-rtn-auto": "97ffababfb6a7da799bf73a01421861cab50f3cff1082ebcdbc103f6ac608e73",
    "llama-w4g128-hadamard-rtn-edgeq": "7bb259759ccd35f44070791bfe7fcf5649e1a54a719fa303a80e6f00cd441958",
    "llama-w4g128-rtn-auto": "0a1326370491aa175bbda85f282e7a5dc7f66c0a8b59638ca17bd021e91fc1a3",
    "llama-w4g128-rtn-edgeq": "7bb379bde658d02819d9e3128322f4916c72044bfab1294bd21f2e5d42b1d6db",
    "llama-w4g128-rtn-embedding4-auto": "9267015b17d5781b4431d60d520e57a5f7ad29e6fd0f51cdaaa836e9ffea7d5b",
    "llama-w4g128-rtn-embedding4-edgeq": "971910d39d82ef869e769e210d89672c8a51f92e510639132bf53e7cc116f21f",
}

EXPECTED_WITHOUT_AVX512 = {
    "digits-w4a8-dyadic-int": "78a6001821a720a51a861face968df86b076139c90d61f7f0f691832e85d623e",
    "digits-w8a8": "db0c7c1a3180a84cc2846262a139622152a73f83c2339a37c5b262f6ae677521",
    "digits-w8a8-dyadic-int": "2bcc34511f218e674361ae9ba9069eabb2a940418fb0b294ab82c8fbb8743c57",
    "digits-w8a8-dyadic-qdq": "dd595058d6a22573beb8a2ad32ecb3c6aeebf4be462217047c03017a0a4bca70",
}


def expected_hash(name: str) -> str:
    """The stored hash of ``name`` for this host's SIMD (see the module docstring)."""
    from edgeq.targets.registry import host_cpu_flags

    if "avx512f" not in host_cpu_flags() and name in EXPECTED_WITHOUT_AVX512:
        return EXPECTED_WITHOUT_AVX512[name]
    return EXPECTED[name]


def _sha256(path: Path) -> str:
    """Of the file's bytes; of a safetensors file, of its metadata (sorted: the writer stores it in
    hash-map order, which changes from run to run) and its tensors' names, dtypes, shapes and bytes."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        digest.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for name in sorted(f.keys()):
            t = f.get_tensor(name)
            digest.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
            digest.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _digits_cases(out: Path) -> dict[str, Path]:
    import edgeq
    from edgeq.models import digits_data, load_digits_cnn

    data, model = digits_data(), load_digits_cnn()
    example, calib = data.x_test[:1], data.x_train[:256]
    files = {}
    files["digits-w8a8"] = edgeq.export(edgeq.quantize(model, "w8a8", calib=calib), example, out / "w8a8.onnx")
    dyadic = edgeq.quantize(model, "w8a8-dyadic", calib=calib)
    files["digits-w8a8-dyadic-qdq"] = edgeq.export(dyadic.qdq_module(), example, out / "dyadic_qdq.onnx")
    files["digits-w8a8-dyadic-int"] = _export_integer(dyadic, example, out / "dyadic_int.onnx")
    w4a8 = edgeq.quantize(model, "w4a8-dyadic", calib=calib)
    files["digits-w4a8-dyadic-int"] = _export_integer(w4a8, example, out / "w4a8_int.onnx")
    from edgeq.quant.weight_only_recipes import RTNRecipe

    # the 1-channel stem has 9 weights per output channel: no 4-bit packing; it stays float
    w4 = edgeq.quantize(model, RTNRecipe(bits=4, group_size=None, skip=("stem.*",)))
    for fmt in ("auto", "edgeq"):
        files[f"digits-w4-rtn-{fmt}"] = edgeq.export(w4, example, out / f"w4_{fmt}.onnx", weight_format=fmt)
    files["digits-w4-rtn-safetensors"] = _save_quantized(w4, out / "w4.safetensors", "digits-cnn")
    return files


def _llama_cases(out: Path) -> dict[str, Path]:
    import edgeq
    from edgeq.quant.embedding import quantize_embeddings

    model = tiny_llama()
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (1, 8))
    calib = [torch.randint(0, 256, (2, 16)) for _ in range(2)]
    files = {}
    for preset in ("w4g128-rtn", "w4g128-hadamard-rtn", "w3-lopro", "w3-lrqmm", "w4g128-gptq", "w3g64-hadamard-gptq"):
        qmodel = edgeq.quantize(model, preset, calib=calib)
        for fmt in ("auto", "edgeq"):
            files[f"llama-{preset}-{fmt}"] = edgeq.export(qmodel, ids, out / f"{preset}_{fmt}.onnx", weight_format=fmt)
    tied = edgeq.quantize(model, "w4g128-rtn")
    quantize_embeddings(tied, 4, 32)
    for fmt in ("auto", "edgeq"):
        files[f"llama-w4g128-rtn-embedding4-{fmt}"] = edgeq.export(tied, ids, out / f"tied_{fmt}.onnx", weight_format=fmt)
    return files


def _export_integer(qmodel, example, path):
    from edgeq.passes.integerize import export_integer

    return export_integer(qmodel, example, path)


def _save_quantized(qmodel, path, source):
    from edgeq.quant.serialize import save_quantized

    return save_quantized(qmodel, path, source=source)


def current_hashes(out: Path) -> dict[str, str]:
    with one_thread():
        files = {**_digits_cases(out), **_llama_cases(out)}
    return {name: _sha256(path) for name, path in sorted(files.items())}


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    return current_hashes(tmp_path_factory.mktemp("invariance"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_export_is_byte_identical(hashes, name):
    assert hashes[name] == expected_hash(name), f"{name}: the exported file changed"


def test_every_case_has_a_stored_hash(hashes):
    assert sorted(hashes) == sorted(EXPECTED)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for key, value in current_hashes(Path(tmp)).items():
            print(f'    "{key}": "{value}",')
    sys.exit(0)
