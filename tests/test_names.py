"""A foreign package with one of our import names is named at import, and in env."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from microbench import names

ROOT = Path(__file__).resolve().parent.parent


def _foreign_kernels(tmp_path) -> Path:
    """A site folder holding another distribution's ``kernels`` package, with its metadata."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("LOADER = 'someone else'\n")
    meta = site / "kernels_hub-0.4.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels-hub\nVersion: 0.4.0\n")
    (meta / "top_level.txt").write_text("kernels\n")
    return site


def test_our_packages_are_ours_here():
    assert all(names.shadowed(n) is None for n in names.PACKAGES)
    names.check()


def test_foreign_kernels_first_on_the_path_is_named(tmp_path):
    site = _foreign_kernels(tmp_path)
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "microbench", "env"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert f"'import kernels' gives {site / 'kernels' / '__init__.py'} (distribution kernels-hub" in err[0]
    assert "uninstall it" in err[0]


def test_env_lists_other_distributions_with_our_names(tmp_path):
    site = _foreign_kernels(tmp_path)
    code = ("import sys; sys.path.append(%r); from microbench import names; "
            "print(names.others().get('kernels'), names.shadowed('kernels'))" % str(site))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "'kernels-hub'" in r.stdout and r.stdout.strip().endswith("None")   # listed, ours still first


def test_distribution_name_is_our_own():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["name"] == names.DISTRIBUTION == "microbench-kernels"


def test_library_import_raises_importerror(tmp_path):
    site = _foreign_kernels(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import microbench"], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 1 and "ImportError: microbench: 'import kernels' gives" in r.stderr
