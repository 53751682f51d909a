"""--build: configure and build a kernel source tree with what the suite needs, then run on it.

A developer's tree is configured from virtme-ng's minimal config plus the suite's fragment
(`./kconform config`), or, if the tree has its own .config, from that plus the fragment, and
built with make. The result is laid out as a Debian kernel is (boot/vmlinuz-<release>,
boot/config-<release>, lib/modules/<release>) in a directory named after the tree's identity:
its `git describe` (or its Makefile version) and a digest of its state, so two builds of one tree
are two kernels in the results, and a second run of an unchanged tree builds nothing.

A tree without a .config is built out of tree (make O=, in the cache), so it stays as it was; a
tree with one is built in place, as `make` and `vng --build` would.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import KconformError
from ..paths import safe_file_name
from .packages import BUILD_INFO

# Not put into a --build config: BTF needs pahole and DEBUG_INFO, which make a build far slower;
# the cases that need it are skipped, naming it.
LEFT_OUT_OF_BUILDS = ("CONFIG_DEBUG_INFO_BTF",)
PROGRESS_EVERY_S = 15.0


def is_source_tree(path: Path) -> bool:
    """A kernel source tree (built or not): its top Makefile, Kconfig and arch/."""
    return path.is_dir() and (path / "Makefile").is_file() and (path / "Kconfig").is_file() \
        and (path / "arch").is_dir()


@dataclass(frozen=True)
class TreeState:
    identity: str   # what the results call this build: "v6.1.192-3-gabc1234+1a2b3c4d"
    digest: str     # of everything that makes the build what it is


@dataclass
class SourceBuild:
    source: Path
    builds: Path                      # the cache's builds/ directory
    fragment: list[tuple[str, str]]   # (option, why), as ./kconform config prints them
    log: Callable[[str], None]

    @property
    def workdir(self) -> Path:
        key = hashlib.sha256(str(self.source).encode()).hexdigest()[:10]
        return self.builds / f"{safe_file_name(self.source.name)}-{key}"

    @property
    def in_tree(self) -> bool:
        """A tree with its own .config is the developer's build: built in place, as they do."""
        return (self.source / ".config").is_file()

    @property
    def objdir(self) -> Path:
        return self.source if self.in_tree else self.workdir / "obj"

    def fragment_text(self) -> str:
        return "".join(f"# {why}\n{option}=y\n" for option, why in self.fragment
                       if option not in LEFT_OUT_OF_BUILDS)

    def state(self) -> TreeState:
        h = hashlib.sha256(self.fragment_text().encode())
        if (self.source / ".git").exists():
            head = self._git("describe", "--always", "--tags", "--dirty").strip()
            for args in (("rev-parse", "HEAD"), ("status", "--porcelain=v1", "-uall"),
                         ("diff", "HEAD", "--binary")):
                h.update(self._git(*args).encode())
            dirty = head.endswith("-dirty")
            base = head.removesuffix("-dirty")
        else:  # an unpacked source package: its files are its state
            _listing(self.source, h)
            base, dirty = self._makefile_version(), True
        digest = h.hexdigest()
        identity = base + (f"+{digest[:8]}" if dirty else "")
        return TreeState(safe_file_name(identity), digest)

    def build(self) -> Path:
        """The built kernel's directory; built only if the tree changed since the last one."""
        state = self.state()
        out = self.workdir / state.identity
        if (out / BUILD_INFO).is_file():
            self.log(f"{self.source}: {state.identity} is built already ({out})")
            return out
        self.workdir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        self._configure()
        self._make([f"-j{os.cpu_count() or 1}"], "building")
        release = self._make_output("-s", "kernelrelease").strip()
        staging = self.workdir / f".staging-{state.identity}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "boot").mkdir(parents=True)
        shutil.copy2(self.objdir / "arch" / "x86" / "boot" / "bzImage",
                     staging / "boot" / f"vmlinuz-{release}")
        shutil.copy2(self.objdir / ".config", staging / "boot" / f"config-{release}")
        (staging / "lib" / "modules" / release).mkdir(parents=True)
        if "CONFIG_MODULES=y" in (self.objdir / ".config").read_text():
            self._make(["modules_install", f"INSTALL_MOD_PATH={staging}",
                        "INSTALL_MOD_STRIP=1"], "installing modules")
        (staging / BUILD_INFO).write_text(json.dumps(
            {"source": str(self.source), "identity": state.identity, "release": release,
             "digest": state.digest, "seconds": round(time.monotonic() - start, 1)}))
        os.rename(staging, out)
        self.log(f"{self.source}: built {state.identity} (release {release}) in "
                 f"{time.monotonic() - start:.0f} s")
        return out

    # -- configuring and making

    def _configure(self) -> None:
        fragment = self.workdir / "kconform.config"
        fragment.write_text(self.fragment_text())
        if self.in_tree:
            self.log(f"{self.source}: merging the suite's options into its own .config")
            self._run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(fragment)],
                      "merging the config")
            self._make(["olddefconfig"], "configuring")
            return
        if (self.objdir / ".config").is_file():
            self._make(["olddefconfig"], "configuring")  # the fragment is in it already
            return
        self.objdir.mkdir(parents=True, exist_ok=True)
        self.log(f"{self.source}: configuring with virtme-ng's minimal config and the suite's "
                 f"options, out of tree in {self.objdir}")
        self._run([_venv_tool("virtme-configkernel"), "--defconfig", "--custom", str(fragment),
                   f"O={self.objdir}"], "configuring (virtme-configkernel)")

    def _make(self, args: list[str], what: str) -> None:
        self._run(["make", *self._out(), *args], what)

    def _make_output(self, *args: str) -> str:
        proc = subprocess.run(["make", *self._out(), *args], cwd=self.source,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise KconformError(f"{self.source}: make {' '.join(args)} failed: "
                                f"{proc.stderr.strip()[-1500:]}")
        return proc.stdout

    def _out(self) -> list[str]:
        return [] if self.in_tree else [f"O={self.objdir}"]

    def _git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.source), *args], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise KconformError(f"{self.source}: git {' '.join(args)} failed: "
                                f"{proc.stderr.strip()[-400:]}")
        return proc.stdout

    def _makefile_version(self) -> str:
        fields: dict[str, str] = {}
        for line in (self.source / "Makefile").read_text(errors="replace").splitlines()[:12]:
            key, _, value = line.partition("=")
            if key.strip() in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
                fields[key.strip()] = value.strip()
        version = ".".join(fields.get(k, "0") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))
        return version + fields.get("EXTRAVERSION", "")

    def _run(self, cmd: list[str], what: str) -> None:
        """Run a build step, saying how far it got every PROGRESS_EVERY_S; its last lines are
        the error when it fails."""
        try:
            proc = subprocess.Popen(cmd, cwd=self.source, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
        except FileNotFoundError:
            raise KconformError(f"{self.source}: {what} needs {cmd[0]}, which is not installed "
                                "(building a kernel needs make, gcc, bc, bison, flex, "
                                "libelf-dev and libssl-dev; virtme-ng for the config)") from None
        tail: collections.deque[str] = collections.deque(maxlen=40)
        last_said = time.monotonic()
        assert proc.stdout is not None
        for lines, line in enumerate(proc.stdout, 1):
            tail.append(line.rstrip())
            if time.monotonic() - last_said >= PROGRESS_EVERY_S:
                self.log(f"{self.source}: {what}: {lines} lines so far, at {line.strip()[:100]}")
                last_said = time.monotonic()
        if proc.wait() != 0:
            shown = "\n".join(f"  | {t}" for t in tail)
            raise KconformError(f"{self.source}: {what} failed ({' '.join(cmd[:3])} ... exit "
                                f"{proc.returncode}); its last lines:\n{shown}")


def built_kernel_values(values: list[str], cache: Path,
                        suite_fragment: Callable[[], list[tuple[str, str]]],
                        log: Callable[[str], None]) -> list[str]:
    """--kernel values with each kernel source tree replaced by the directory of its build
    (made now if the tree changed since the last one); paths are the caller's.
    suite_fragment gives the options to build with (kernel_config, which reads the cases)."""
    from ..paths import caller_path
    fragment: list[tuple[str, str]] | None = None
    out = []
    for value in values:
        parts = []
        for part in value.split(","):
            path = caller_path(part.strip()).resolve() if part.strip() else None
            if path is not None and is_source_tree(path):
                fragment = fragment if fragment is not None else suite_fragment()
                parts.append(str(SourceBuild(path, cache / "builds", fragment, log).build()))
            else:
                parts.append(part)
        out.append(",".join(parts))
    return out


def _venv_tool(name: str) -> str:
    """A command virtme-ng installs beside this Python (the venv's bin/, which ./kconform puts
    on PATH, but a plain .venv/bin/python run does not)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


# What a tree's source is made of, not what building it makes (object files, .cmd files).
SOURCE_SUFFIXES = (".c", ".h", ".S", ".rs", ".y", ".l", ".sh", ".pl", ".py", ".tbl")
SOURCE_NAMES = ("Makefile", "Kbuild", ".config")


def _listing(root: Path, h: hashlib._Hash) -> None:
    """Every source file's path, size and mtime under root (not .git)."""
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            if not (name.endswith(SOURCE_SUFFIXES) or name in SOURCE_NAMES
                    or name.startswith("Kconfig")):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode())
