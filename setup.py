"""Build hook: ship the top-level ``kernels/`` directory inside the wheel as ``rnncu/kernels``.

The CUDA sources stay at the top of the checkout so that an editable install and a plain
``PYTHONPATH=<checkout>`` find them next to the package; a wheel has no such neighbour, so the
build copies them in. ``rnncu.backend.kernel_loader`` looks in both places.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithKernels(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).parent / "kernels"
        target = Path(self.build_lib) / "rnncu" / "kernels"
        if source.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("*~", "*.o", "*.cubin"))


setup(cmdclass={"build_py": BuildPyWithKernels})
