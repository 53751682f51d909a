"""--build (issue 15, point 2): a source tree's identity and state, and that an unchanged tree is
not built again. The real build is tests/test_source_build_vm.py's."""
import subprocess

import pytest

from harness.errors import KconformError
from harness.kernels.build import BUILD_INFO, SourceBuild, is_source_tree

MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\nNAME = x\n"


def _tree(path, git=False):
    (path / "arch" / "x86").mkdir(parents=True)
    (path / "Makefile").write_text(MAKEFILE)
    (path / "Kconfig").write_text("mainmenu x\n")
    (path / "net").mkdir()
    (path / "net" / "sock_map.c").write_text("int x;\n")
    if git:
        for args in (["init", "-q"], ["add", "."], ["-c", "user.name=k", "-c",
                                                     "user.email=k@example.org", "commit", "-qm",
                                                     "base"], ["tag", "v6.1.192"]):
            subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
    return path


def _build(tmp_path, source):
    return SourceBuild(source, tmp_path / "builds", [("CONFIG_BPF_SYSCALL", "every case"),
                                                     ("CONFIG_DEBUG_INFO_BTF", "the iterator")],
                       log=lambda message: None)


def test_a_source_tree_is_told_from_a_built_one_and_from_other_directories(tmp_path):
    assert is_source_tree(_tree(tmp_path / "linux"))
    assert not is_source_tree(tmp_path)


def test_a_git_tree_is_named_by_git_describe_and_its_local_changes(tmp_path):
    source = _tree(tmp_path / "linux", git=True)
    clean = _build(tmp_path, source).state()
    assert clean.identity == "v6.1.192"
    (source / "net" / "sock_map.c").write_text("int y;\n")  # a local change
    changed = _build(tmp_path, source).state()
    assert changed.identity.startswith("v6.1.192_") and changed.digest != clean.digest
    (source / "net" / "sock_map.c").write_text("int z;\n")  # another one: another kernel
    assert _build(tmp_path, source).state().identity != changed.identity


def test_an_unpacked_source_package_is_named_by_its_makefile_version_and_files(tmp_path):
    source = _tree(tmp_path / "linux-source-6.1")
    first = _build(tmp_path, source).state()
    assert first.identity.startswith("6.1.192_")
    assert _build(tmp_path, source).state() == first  # nothing changed
    (source / "net" / "built.o").write_text("object")  # what a build makes is not source
    assert _build(tmp_path, source).state() == first
    (source / "net" / "sock_map.c").write_text("int changed_here;\n")
    assert _build(tmp_path, source).state() != first


def test_the_build_config_leaves_btf_out(tmp_path):
    text = _build(tmp_path, _tree(tmp_path / "linux")).fragment_text()
    assert "CONFIG_BPF_SYSCALL=y" in text and "DEBUG_INFO_BTF" not in text


def test_an_unchanged_tree_is_not_built_again(tmp_path):
    build = _build(tmp_path, _tree(tmp_path / "linux"))
    out = build.workdir / build.state().identity
    out.mkdir(parents=True)
    (out / BUILD_INFO).write_text("{}")
    assert build.build() == out  # make is never run: this tree has no real Makefile


def test_a_failing_build_step_shows_its_last_lines(tmp_path):
    build = _build(tmp_path, _tree(tmp_path / "linux"))
    with pytest.raises(KconformError, match=r"failed .*its last lines:\n  \| "):
        build.build()  # virtme-configkernel on a tree that is no kernel
