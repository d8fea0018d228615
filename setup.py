import pathlib

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent


def requirements():
    """Runtime requirements: requirements.txt up to its test section."""
    lines = []
    for line in (HERE / "requirements.txt").read_text().splitlines():
        if line.strip() == "# Tests":
            break
        if line.strip() and not line.startswith("#"):
            lines.append(line.strip())
    return lines


setup(
    name="mtk",
    version="0.1.0",
    description="Multi-task and transfer learning on Keras 3 (TensorFlow backend).",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mtk", "mtk.*"]),
    python_requires=">=3.10",
    install_requires=requirements(),
)
