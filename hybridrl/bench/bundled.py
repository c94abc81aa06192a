"""Small datasets and a tiny preference task that ship with the package, for the quick suite.

A first ``hybridrl bench quick`` should spend its 15 minutes on the methods, not on training
behaviour policies, so the factory's output is shipped (about 4 MB):

- ``minari/hybridrl/hopper/medium-quick-v0``: 20k transitions of the factory's Hopper-v5 medium
  policy (SAC stopped at a third of D4RL's expert return; the ``--small`` preset, seed 0);
- ``pref-task/``: the synthetic judged preference task (tiny SFT model, pairs, 200 validation prompts
  for choosing settings and 200 test prompts for reporting).

``MANIFEST.json`` holds every file's SHA-256 and the exact commands that made them; regenerate with

    python -m hybridrl.bench.bundled --regenerate

(it trains the Hopper SAC policy first when ``$HYBRIDRL_HOME`` has none: about 15 minutes on two cores;
new files match the old ones in distribution, not bit for bit, since SAC on CPU threads is not
bit-reproducible across machines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from hybridrl.core.checkpoint import atomic_write_json

ASSETS = Path(__file__).parent / "assets"
MANIFEST = ASSETS / "MANIFEST.json"
MINARI_DIR = ASSETS / "minari"
PREF_TASK = ASSETS / "pref-task"

DATASETS = {"hybridrl/hopper/medium-quick-v0": ("hopper", "medium", 20_000)}
"""Bundled Minari id -> (factory task, quality, transitions)."""
REGENERATE = [
    "hybridrl data make hopper medium --small --transitions 20000 --seed 0 --id hybridrl/hopper/medium-quick-v0",
    "hybridrl pref make-task pref-task --seed 0 --validation-prompts 200 --test-prompts 200",
]


class BundleError(RuntimeError):
    """A shipped file is missing or does not match its checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST.name)


def verify() -> None:
    """Check every shipped file against the manifest."""
    if not MANIFEST.exists():
        raise BundleError(f"{MANIFEST} is missing: reinstall hybridrl or run `python -m hybridrl.bench.bundled "
                          "--regenerate`")
    expected = json.loads(MANIFEST.read_text())["files"]
    bad = [rel for rel, digest in expected.items()
           if not (ASSETS / rel).exists() or _sha256(ASSETS / rel) != digest]
    if bad:
        raise BundleError(f"bundled files missing or changed: {', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}: reinstall hybridrl or regenerate them "
                          "(`python -m hybridrl.bench.bundled --regenerate`)")


def install_datasets() -> list[str]:
    """Copy the bundled Minari datasets into the local store when absent; returns their ids."""
    from hybridrl.control.datasets import datasets_root

    root = datasets_root()
    for dataset_id in DATASETS:
        target = root / dataset_id
        if (target / "data").exists():
            continue
        verify()
        namespace = dataset_id.split("/")[0]
        if not (root / namespace / "namespace_metadata.json").exists():
            (root / namespace).mkdir(parents=True, exist_ok=True)
            shutil.copy2(MINARI_DIR / namespace / "namespace_metadata.json", root / namespace)
        # copy beside the target and rename: a killed copy never leaves half a dataset
        staging = target.parent / f".staging-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(MINARI_DIR / dataset_id, staging)
            try:
                os.replace(staging, target)
            except OSError:
                # parallel runs of a fresh grid install at once: the first rename wins, the same files
                if not (target / "data").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return list(DATASETS)


def pref_task_dir() -> Path:
    """The bundled preference task (read it in place; training writes to its run directory)."""
    verify()
    return PREF_TASK


def write_manifest() -> dict:
    files = {str(p.relative_to(ASSETS)): _sha256(p) for p in _files(ASSETS)}
    manifest = {"files": files, "regenerate": REGENERATE,
                "note": "real MuJoCo rollouts of the factory's policies; see hybridrl/bench/bundled.py"}
    atomic_write_json(MANIFEST, manifest)
    return manifest


def regenerate() -> None:
    """Remake every bundled file with the commands in ``REGENERATE`` and rewrite the manifest."""
    from hybridrl.factory import factory_config, make_dataset
    from hybridrl.preference.task import TaskConfig, make_task

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        previous = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = str(store)
        try:
            for dataset_id, (task, quality, transitions) in DATASETS.items():
                make_dataset(task, quality, config=factory_config(True, transitions=transitions), seed=0,
                             out_id=dataset_id)
        finally:
            if previous is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
        make_task(Path(tmp) / "pref-task", TaskConfig(seed=0, num_validation_prompts=200, num_test_prompts=200))
        shutil.rmtree(MINARI_DIR, ignore_errors=True)
        shutil.rmtree(PREF_TASK, ignore_errors=True)
        for dataset_id in DATASETS:
            shutil.copytree(store / dataset_id, MINARI_DIR / dataset_id)
            namespace = dataset_id.split("/")[0]
            shutil.copy2(store / namespace / "namespace_metadata.json", MINARI_DIR / namespace)
        shutil.copytree(Path(tmp) / "pref-task", PREF_TASK)
    write_manifest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="remake the bundled files (slow)")
    parser.add_argument("--manifest", action="store_true", help="rewrite MANIFEST.json from the files present")
    args = parser.parse_args(argv)
    if args.regenerate:
        regenerate()
    elif args.manifest:
        write_manifest()
    verify()
    print(f"bundled files match {MANIFEST}")


if __name__ == "__main__":
    main()
