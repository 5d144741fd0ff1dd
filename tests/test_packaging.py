"""The built wheel carries the core and every built-in plugin under the polyllama namespace,
and its entry points find them (not only the editable install)."""
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib.resources
import polyllama, polyllama.plugins.cpu_numpy, polyllama.plugins.cuda_triton
from polyllama.smoke import smoke_test
assert polyllama.__file__.startswith({site!r}), polyllama.__file__
reg = polyllama.get_registry()
assert {{"cpu_numpy", "cuda_triton", "cuda_cupy"}} <= set(reg.backends), reg.backends
# cuda:cupy compiles its kernel sources at run time: the wheel must carry them
here = importlib.resources.files("polyllama.plugins.cuda_cupy")
assert all((here / name).is_file() for name in ("common.cuh", "kernels.cu", "gemv.cu"))
assert not reg.failures, reg.failures
print(smoke_test("cpu:numpy"))
"""


def test_wheel_installs_core_and_plugins(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    built = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w",
                                 str(wheels), str(ROOT)], capture_output=True, text=True)
    if built.returncode and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("polyllama-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    # -S: no .pth processing, so the editable install's import hook stays out of the way
    env = {"PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}",
           "POLYLLAMA_PLUGINS": "cpu_numpy,cuda_triton,cuda_cupy"}
    run = subprocess.run([sys.executable, "-S", "-c", CHECK.format(site=str(site))],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "passed"
