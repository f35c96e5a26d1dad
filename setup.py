"""Build hook: ship the top-level `strategies/presets/` and `sweeps/` inside the package.

They stay at the top of the repository, where people read and edit them; a wheel carries a
copy under `resbench/data/` so an installed resbench finds them from any folder
(`resbench.resources`). Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"strategies/presets": "resbench/data/presets", "sweeps": "resbench/data/sweeps"}


class BuildPyWithResources(build_py):
    def run(self) -> None:
        super().run()
        for source, target in SHIPPED.items():
            out = Path(self.build_lib, target)
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted(Path(source).glob("*.toml")):
                self.copy_file(str(path), str(out / path.name))


setup(cmdclass={"build_py": BuildPyWithResources})
