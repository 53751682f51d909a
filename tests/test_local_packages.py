"""A kernel from Debian packages in no archive (issue 15, point 4): which --kernel paths are
packages, and what a path that is not a kernel package gets before anything boots."""
import subprocess

import pytest

from harness.kernels import KernelProvider
from harness.kernels.packages import classify
from tests.test_bad_inputs import assert_usage_error, collect
from tests.test_kernels import _fake_bzimage


def _deb(tmp_path, package, version="1.0-1"):
    """A real (tiny) Debian package, built with dpkg-deb."""
    root = tmp_path / f"{package}-src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: kconform <kconform@example.org>\nDescription: a test package\n")
    (root / "boot").mkdir()
    (root / "boot" / "placeholder").write_text("x")
    deb = tmp_path / f"{package}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_a_deb_a_directory_of_debs_and_an_extracted_tree_are_packages(tmp_path):
    deb = _deb(tmp_path, "linux-image-6.1.0-99-amd64-unsigned", "6.1.999-1")
    assert classify(deb).debs == (deb,)
    assert classify(tmp_path).debs == (deb,)  # the directory holding it
    tree = tmp_path / "extracted"
    (tree / "boot").mkdir(parents=True)
    _fake_bzimage(tree / "boot" / "vmlinuz-6.1.0-99-amd64", "6.1.0-99-amd64")
    (tree / "lib" / "modules" / "6.1.0-99-amd64").mkdir(parents=True)
    assert classify(tree).extracted == tree
    built = tmp_path / "linux"
    (built / "arch" / "x86" / "boot").mkdir(parents=True)
    _fake_bzimage(built / "arch" / "x86" / "boot" / "bzImage", "6.13.0")
    assert classify(built) is None  # a source tree, booted as such
    assert classify(built / "arch" / "x86" / "boot" / "bzImage") is None
    assert classify(tmp_path / "nothing") is None


def test_an_extracted_tree_is_named_by_its_files(tmp_path):
    tree = tmp_path / "extracted"
    (tree / "boot").mkdir(parents=True)
    _fake_bzimage(tree / "boot" / "vmlinuz-6.1.0-99-amd64", "6.1.0-99-amd64")
    (tree / "lib" / "modules" / "6.1.0-99-amd64").mkdir(parents=True)
    module = tree / "lib" / "modules" / "6.1.0-99-amd64" / "9p.ko"
    module.write_text("one")
    first = classify(tree).digest()
    module.write_text("other size")
    assert classify(tree).digest() != first


@pytest.mark.parametrize("make, words", [
    (lambda p: _deb(p, "hello-kconform"), ["hello-kconform_1.0-1_amd64.deb",
                                           "is a kernel image package"]),
    (lambda p: (p / "garbage.deb").write_bytes(b"not an ar archive") and p / "garbage.deb",
     ["garbage.deb is not a Debian package", "apt-get download"]),
])
def test_a_deb_that_is_no_kernel_is_a_usage_error_before_anything_boots(tmp_path, make, words):
    path = make(tmp_path)
    assert_usage_error(collect("--kernel", str(path)), *words)


def _extracted(tmp_path, banner):
    tree = tmp_path / "extracted"
    (tree / "boot").mkdir(parents=True)
    _fake_bzimage(tree / "boot" / "vmlinuz-6.1.0-99-amd64", banner)
    (tree / "lib" / "modules" / "6.1.0-99-amd64" / "kernel").mkdir(parents=True)
    return tree


def test_an_extracted_tree_is_judged_by_the_package_version_its_image_names(tmp_path):
    tree = _extracted(tmp_path, "6.1.0-99-amd64 (debian-kernel@lists.debian.org) #1 SMP "
                                "PREEMPT_DYNAMIC Debian 6.1.999-1 (2026-11-26)")
    kernel = KernelProvider(cache=tmp_path / "cache").get(str(tree))
    assert (kernel.release, kernel.exact_version) == ("6.1.0-99-amd64", "6.1.999-1")
    assert kernel.version[:3] == (6, 1, 999)  # not 6.1.0: stable bounds judge it right
    assert kernel.suite.startswith("local, unverified (no archive signature): boot/vmlinuz-")
    assert (kernel.root / "lib" / "modules" / "6.1.0-99-amd64" / "modules.dep").exists()


def test_a_directory_with_both_a_tree_and_debs_is_a_usage_error(tmp_path):
    tree = _extracted(tmp_path, "6.1.0-99-amd64")
    (tree / "linux-image-x.deb").write_bytes(b"x")
    assert_usage_error(collect("--kernel", str(tree)), "holds both an extracted kernel tree",
                       "linux-image-x.deb")


def test_a_candidate_package_is_the_architecture_its_control_file_names(tmp_path):
    # an arm64 candidate boots in an arm64 guest, on an arm64 root, with arm64 BPF objects
    release = "6.12.0-99-custom"  # a release that names no architecture: the control file says
    root = tmp_path / "src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{release}-unsigned\nVersion: 6.12.999-1\nArchitecture: arm64\n"
        "Maintainer: kconform <kconform@example.org>\nDescription: a test package\n")
    (root / "boot").mkdir()
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"MZ arm64 Image")
    (root / "lib" / "modules" / release / "kernel").mkdir(parents=True)
    deb = tmp_path / f"linux-image-{release}-unsigned_6.12.999-1_arm64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)
    kernel = KernelProvider(cache=tmp_path / "cache").get(str(deb))
    assert (kernel.release, kernel.exact_version, kernel.arch) == (release, "6.12.999-1", "arm64")
