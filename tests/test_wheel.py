"""The wheel works outside the checkout: kernels and the emulator shim travel as package data."""

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import minidl as mdl, minidl.functional as F
    from minidl import cuda, nn, optim
    from minidl.models.alexnet import AlexNet

    assert sys.prefix in mdl.__file__, mdl.__file__          # the installed copy, not the checkout
    assert sys.prefix in str(cuda.kernel_dir()), cuda.kernel_dir()
    import importlib.util                                     # models travel inside minidl:
    assert importlib.util.find_spec("models") is None         # no top-level "models" package

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3)
    )
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = mdl.tensor(np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32))
    y = np.array([0, 1, 2, 1])
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()

    os.environ["MINIDL_CUDA_EMULATE"] = "1"
    z = F.max_pool2d(mdl.tensor(np.arange(16.0).reshape(1, 1, 4, 4), device="cuda"), 2)
    assert z.numpy().ravel().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert AlexNet(num_classes=10).num_parameters() > 0
    print("wheel ok", loss.item())
    """
)


def fresh_venv_seeing_this_environment(venv: Path) -> Path:
    """A new venv (no system site-packages) whose sys.path ends with this environment's
    site-packages, listed in a .pth file: the packages the test run has installed, and only those,
    are there for the wheel's dependencies. Listed as plain folders, their own .pth files (this
    checkout's editable install among them) are not run, so ``import minidl`` finds the wheel."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "test-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("minidl-*.whl")
    venv = tmp_path / "venv"
    python = fresh_venv_seeing_this_environment(venv)
    # Installed with its dependencies, resolved against the packages of the environment running
    # these tests (never the base interpreter's, never the network): a dependency missing here, or
    # one the wheel forgot to declare, fails this test instead of being filled in by accident.
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-build-isolation",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MINIDL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [str(python), "-c", SCRIPT], cwd=work, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wheel ok" in result.stdout
    # docs/custom_op.md with the installed minidl: the user's .cu file in the user's own folder
    from tests.test_docs import run_page

    page = run_page("custom_op.md", python, tmp_path / "my_op", env)
    assert page.returncode == 0, page.stderr[-3000:]
    assert "emulated kernel ok" in page.stdout
