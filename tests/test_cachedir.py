"""The kernel cache is private: generated modules are imported and numba's index is a pickle, so a
directory someone else can write to must never be used (a planted file would run as the user)."""
import os
import stat

import pytest

from kernels import cachedir
from kernels.errors import BadInput


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.delenv(cachedir.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_the_cache_is_made_private_under_xdg_cache_home(cache_env):
    d = cachedir.private_dir("cellexpr")
    assert d == cache_env / "xdg" / "microbench" / "cellexpr"
    for p in (d, d.parent):
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert cachedir.private_dir("cellexpr") == d      # and found again


def test_without_xdg_the_cache_is_under_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(cachedir.ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cachedir.root() == tmp_path / ".cache" / "microbench"


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_cache_others_can_write_to_is_refused_in_one_line(cache_env, mode):
    root = cache_env / "xdg" / "microbench"
    root.mkdir(parents=True)
    os.chmod(root, mode)
    with pytest.raises(BadInput) as e:
        cachedir.private_dir("cellexpr")
    msg = str(e.value)
    assert str(root) in msg and f"mode {mode:04o}" in msg and "\n" not in msg
    assert not (root / "cellexpr").exists()           # nothing was created inside it


def test_the_same_rule_for_microbench_cache_and_for_every_level(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    monkeypatch.setenv(cachedir.ENV, str(mine))
    (mine / "cellexpr").mkdir(parents=True, mode=0o700)
    os.chmod(mine, 0o700)
    os.chmod(mine / "cellexpr", 0o777)                 # planted below a private root
    with pytest.raises(BadInput, match=r"\$MICROBENCH_CACHE .*cellexpr is owned by .* with mode 0777"):
        cachedir.private_dir("cellexpr")


def test_a_link_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setenv(cachedir.ENV, str(link))
    with pytest.raises(BadInput, match="is a symbolic link"):
        cachedir.private_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_a_cache_owned_by_another_user_is_refused_even_when_private(cache_env):
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    root = cache_env / "xdg" / "microbench"
    root.mkdir(parents=True, mode=0o700)
    os.chown(root, nobody, -1)
    with pytest.raises(BadInput, match=r"is owned by nobody with mode 0700"):
        cachedir.private_dir()


def test_generated_cell_modules_live_in_the_private_cache(cache_env):
    """The generator writes its modules there (not to a shared temporary directory), and a
    planted cache is refused before anything is imported from it."""
    from fusion.cellexpr import language
    d = language._cache_dir()
    assert d == cache_env / "xdg" / "microbench" / "cellexpr"
    os.chmod(d, 0o757)
    with pytest.raises(BadInput, match="mode 0757"):
        language._cache_dir()


def test_the_cli_refuses_a_planted_cache_in_one_line(run_cli, tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    os.chmod(planted, 0o777)
    r = run_cli("lstm", "--cell", "peephole", "--fused", "--backend", "numba", "-T", "2", "-B", "1", "-H", "4",
                env={"MICROBENCH_CACHE": str(planted)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("microbench: error: $MICROBENCH_CACHE")
    assert "mode 0777" in r.stderr
