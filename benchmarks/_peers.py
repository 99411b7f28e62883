"""The generation benchmark's peers, installed or built by the script itself under a cache folder:
llama.cpp's ``llama-bench`` (built from the llama-cpp-python source distribution, which vendors
llama.cpp) and onnxruntime-genai (pip, with its model builder's ``onnx-ir``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("EDGEQ_PEERS_CACHE", Path.home() / ".cache" / "edgeq" / "peers"))


def _run(cmd, log: Path, cwd=None, nice: bool = True) -> None:
    """Run ``cmd`` with its output in ``log``; a failure names the log."""
    prefix = ["nice", "-n", "10"] if nice else []
    with log.open("w") as f:
        done = subprocess.run(prefix + [str(c) for c in cmd], cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}); see {log}")


def llama_bench(cache: Path = CACHE) -> Path:
    """``llama-bench``, built once (~8 min on 2 cores) with the host's instruction set."""
    root = cache / "llama.cpp"
    binary = root / "build" / "bin" / "llama-bench"
    if binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", root,
              "llama-cpp-python"], root / "download.log", nice=False)
        sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    source = root / "src"
    if not (source / "CMakeLists.txt").exists():
        with tarfile.open(sdists[-1]) as tar:
            top = tar.getnames()[0].split("/")[0]
            tar.extractall(root, filter="data")
        (root / top / "vendor" / "llama.cpp").rename(source)
    build = root / "build"
    _run(["cmake", "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF"],
         root / "configure.log")
    _run(["cmake", "--build", build, "--target", "llama-bench", "-j2"], root / "build.log")
    return binary


def genai_python(cache: Path = CACHE) -> Path:
    """A Python with onnxruntime-genai and onnx-ir: this venv's, installed into a target folder
    (``PYTHONPATH``) so edgeq's own environment is left as it is."""
    site = cache / "genai-site"
    if not (site / "onnxruntime_genai").exists():
        site.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, "onnxruntime-genai"],
             cache / "genai-install.log", nice=False)
    return site


if __name__ == "__main__":
    print(llama_bench())
