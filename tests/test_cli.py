"""The command line as a first-time user meets it: `ferlab --version`, and the README's first example."""

from pathlib import Path

import pytest

import ferlab
from ferlab.cli import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"ferlab {ferlab.__version__}"


def test_readme_says_arrays_are_rgb_and_shows_bgr_in_the_first_example():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    first_example = readme.split("```python", 1)[1].split("```", 1)[0]
    assert 'color="bgr"' in first_example and "RGB" in readme
    assert len(readme.splitlines()) <= 200
