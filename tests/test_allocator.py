"""maia_core.allocator: glibc keeps freed activations for the next forward pass.

Page faults are counted, not time: a block that is reused is not faulted in again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from maia_core import allocator

glibc = pytest.mark.skipif(allocator.glibc_version() is None, reason="needs glibc")

# Allocate a block, touch every page and free it, twice, on a thread (the model host runs
# its models on one); print the minor page faults of the second time.
REUSE = """
import ctypes, json, resource, sys, threading
if sys.argv[1] == "tuned":
    from maia_core.allocator import tune_malloc
    tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 * 2**20
faults = []
def run():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=run)
t.start()
t.join()
print(json.dumps({"faults": faults, "pages": size // resource.getpagesize()}))
"""


def reuse_faults(setting: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", REUSE, setting],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    result = json.loads(out.stdout)
    return result["faults"][1], result["pages"]


@glibc
def test_tuned_malloc_reuses_a_freed_block_instead_of_faulting_it_in_again():
    default, pages = reuse_faults("default")
    tuned, _ = reuse_faults("tuned")
    # glibc's default: the block is a fresh mmap each time, every page faulted in again.
    assert default > pages * 0.9
    # Tuned: the second block is the first one, still mapped.
    assert tuned < pages * 0.05


# Whether this kernel gives huge pages for the asking: then tune_malloc asks torch to ask.
HUGE = allocator.huge_page_mode() in ("always", "madvise")
EXPECTED = {
    "M_MMAP_THRESHOLD": allocator.LARGE,
    "M_TRIM_THRESHOLD": allocator.LARGE,
    "M_ARENA_MAX": 1,
    **({allocator.THP_VARIABLE: 1} if HUGE else {}),
}


def clean_environ(**env: str) -> dict[str, str]:
    """The environment without any allocator setting (this pytest process's own included)."""
    ours = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for name in ("GLIBC_TUNABLES", allocator.THP_VARIABLE):
        ours.pop(name, None)
    return {**ours, **env}


@glibc
def test_tune_malloc_sets_its_settings_once_and_leaves_the_users_own():
    script = (
        "import json; from maia_core.allocator import tune_malloc, applied; "
        "first = tune_malloc(); print(json.dumps([first, tune_malloc(), applied()]))"
    )

    def run(**env: str) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env=clean_environ(**env),
        )
        return json.loads(out.stdout)

    first, again, seen = run()
    assert first == EXPECTED
    assert again == first and seen == first
    # A setting the user made through glibc's or torch's variables is theirs.
    first, _, _ = run(MALLOC_ARENA_MAX="4")
    assert set(first) == set(EXPECTED) - {"M_ARENA_MAX"}
    first, _, _ = run(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")
    assert set(first) == set(EXPECTED) - {"M_MMAP_THRESHOLD"}
    first, _, _ = run(THP_MEM_ALLOC_ENABLE="0")
    assert set(first) == set(EXPECTED) - {allocator.THP_VARIABLE}


# A 64 MB tensor, written; then the flags of the memory area that holds it (smaps' VmFlags:
# "hg" is madvise(MADV_HUGEPAGE), asked whether or not the kernel had huge pages free).
HUGE_ASKED = """
import json, sys
if sys.argv[1] == "tuned":
    from maia_core.allocator import tune_malloc
    tune_malloc()
import torch
x = torch.empty(64 << 20, dtype=torch.uint8)
x.fill_(1)
address, flags, inside = x.data_ptr(), None, False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and ":" not in head:
        start, end = (int(v, 16) for v in head.split("-"))
        inside = start <= address < end
    elif inside and head == "VmFlags:":
        flags = line.split()[1:]
        break
print(json.dumps(flags))
"""


@glibc
@pytest.mark.skipif(not HUGE, reason="this kernel gives no huge pages for the asking")
def test_tuned_processes_ask_for_huge_pages_for_large_tensors():
    def flags(setting: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", HUGE_ASKED, setting],
            capture_output=True,
            text=True,
            check=True,
            env=clean_environ(),
        )
        return json.loads(out.stdout)

    assert "hg" in flags("tuned")
    assert "hg" not in flags("default")


def test_a_benchmarks_default_child_leaves_out_what_tune_malloc_set(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", {allocator.THP_VARIABLE: 1})
    monkeypatch.setenv(allocator.THP_VARIABLE, "1")
    assert allocator.THP_VARIABLE not in allocator.untuned_environ()
    # The user's own setting stays.
    monkeypatch.setattr(allocator, "_applied", {})
    assert allocator.untuned_environ()[allocator.THP_VARIABLE] == "1"


def test_tune_malloc_is_a_no_op_without_glibc(monkeypatch):
    import ctypes

    def no_libc(*args, **kwargs):
        raise AssertionError("mallopt must not be looked up without glibc")

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.os, "confstr", lambda name: (_ for _ in ()).throw(ValueError))
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.glibc_version() is None
    assert allocator.tune_malloc() == {}
    assert allocator.applied() == {}


@glibc
def test_the_maia_command_tunes_malloc_first():
    # `maia exemplars compute`, eval, bench and --sandbox none run models in this process.
    script = (
        "import sys, cli\n"
        "sys.argv = ['maia', '--help']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "from maia_core import allocator\n"
        "print(sorted(allocator.applied()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=clean_environ(),
    )
    assert out.stdout.strip().splitlines()[-1] == str(sorted(EXPECTED))


# Free every other block of many: the heap keeps holes it cannot shrink from its top, as a
# long study's renders of varying sizes left a host with 24 GB kept. Then ask for a trim with
# room to spare, and with none.
HOLES = """
import ctypes, json
from maia_core import allocator
allocator.tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
allocator.trim_if_over()  # the level to grow from (the watcher may have set it already)
size = 16 * 2**20
blocks = [libc.malloc(size) for _ in range(64)]
for p in blocks:
    ctypes.memset(p, 1, size)
for p in blocks[::2]:
    libc.free(p)
held = allocator.resident_bytes()
spared = allocator.trim_if_over(headroom=8 << 30)
after_spared = allocator.resident_bytes()
trimmed = allocator.trim_if_over(headroom=128 << 20)
print(json.dumps({"held": held, "spared": spared, "after_spared": after_spared,
                  "trimmed": trimmed, "after": allocator.resident_bytes(),
                  "trims": allocator.trims()}))
"""


@glibc
def test_kept_memory_is_handed_back_past_the_headroom():
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    mb = 2**20
    assert r["held"] > 900 * mb  # 32 live blocks and 32 freed ones, all still resident
    assert not r["spared"] and r["after_spared"] > 900 * mb  # within the headroom: kept
    assert r["trimmed"] and r["trims"] == 1
    assert r["after"] < r["held"] - 400 * mb  # the 512 MB of holes went back


def test_a_model_host_sees_the_users_allocator_settings():
    # A host tunes its own allocator as it starts, and must leave the user's choice alone:
    # their variables reach it (secrets never do).
    from maia_core.execution.isolation import child_environment

    env = {
        "PATH": "/bin",
        "MALLOC_ARENA_MAX": "4",
        "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0",
        allocator.THP_VARIABLE: "0",
        "MALLOC_API_KEY": "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz",
    }
    assert child_environment(env) == {
        "PATH": "/bin",
        "MALLOC_ARENA_MAX": "4",
        "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0",
        allocator.THP_VARIABLE: "0",
    }
