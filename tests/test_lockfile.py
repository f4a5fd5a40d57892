"""The hash-pinned locks in requirements/ that `make` and CI install from (requirements/lock.py)."""
from __future__ import annotations

import importlib.util
import re

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("callqa_lock", REPO / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_locks_are_made_from_this_pyproject(capsys):
    # fails when pyproject.toml's dependencies or requirements/nodeps.in changed without `make lock`
    assert lock.check() == 0, capsys.readouterr().err


def test_base_set_is_the_test_set_at_the_same_versions():
    base, test, nodeps = lock.pins(lock.BASE), lock.pins(lock.TEST), lock.pins(lock.NODEPS)
    assert base and {n: test.get(n) for n in base} == base
    assert "torch" in test and "torch" not in base  # the demo install stays free of PyPI's CUDA torch
    assert "resemblyzer" in nodeps and set(nodeps).isdisjoint(test)  # one version of each package


def test_every_pin_has_a_hash():
    hashed = re.compile(r"^\S+==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", re.M)
    for path in lock.LOCKS:
        text = path.read_text()
        assert len(hashed.findall(text)) == len(lock.PIN_RE.findall(text)) > 0, path.name


def test_the_gpu_lock_is_what_ctranslate2_loads():
    """CTranslate2's Linux wheels are built for CUDA 12 with CUDA_DYNAMIC_LOADING: they dlopen libcublas.so.12
    (the CUDA runtime linked in, the driver from the host), and since 4.6.3 with -DWITH_CUDNN=OFF, so no cuDNN.
    gpu.lock (the GPU image's additions) is cuBLAS 12 and what it needs: a ctranslate2 that moves to another
    CUDA, or back before 4.6.3 (cuDNN 9 again), fails here: change requirements/gpu.in with it."""
    ct2 = tuple(int(x) for x in lock.pins(lock.BASE)["ctranslate2"].split(".")[:3])
    assert (4, 6, 3) <= ct2 < (5, 0, 0), ct2
    gpu, base = lock.pins(lock.GPU), lock.pins(lock.BASE)
    assert gpu.get("nvidia-cublas-cu12", "").startswith("12.")
    assert all(n.endswith("-cu12") for n in gpu) and not any("cudnn" in n for n in gpu), gpu
    assert set(gpu).isdisjoint(base), "the GPU libraries stay out of the CPU image's base set"


def test_a_conflicted_lock_keeps_its_first_side(tmp_path):
    f = tmp_path / "x.lock"
    f.write_text("a==1 \\\n    --hash=sha256:aa\n<<<<<<< HEAD\n# inputs-sha256: 1\nb==1\n=======\n"
                 "# inputs-sha256: 2\nb==2\nc==1\n>>>>>>> other\nd==1\n")
    lock._unconflict(f)
    assert f.read_text() == "a==1 \\\n    --hash=sha256:aa\n# inputs-sha256: 1\nb==1\nd==1\n"
