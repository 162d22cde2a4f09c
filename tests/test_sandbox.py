"""The sandbox: whatever a cell does, it costs that cell only, and no secret reaches it."""

from __future__ import annotations

import os

import pytest

from maia_core.execution.isolation import child_environment, is_secret
from maia_core.execution.sandbox import (
    InProcessExecution,
    ProcessExecution,
    parse_memory,
)
from maia_core.execution.specs import WorldSpec
from maia_core.transcript import ImagePart, TextPart
from maia_core.units import Unit

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-test-secret",
    "OPENAI_API_KEY": "sk-openai-test-secret",
    "HF_TOKEN": "hf_test_secret",
    "MY_SERVICE_TOKEN": "tok-test-secret",
    "DB_SECRET": "db-test-secret",
    "SOME_VENDOR_KEY": "vendor-test-secret",
}
UNIT = Unit("conv2", 1)
SPEC = WorldSpec(target="toynet", tools=["display", "caption"], device="cpu")


def text_of(result) -> str:
    return "".join(p.text for p in result.parts if isinstance(p, TextPart))


@pytest.fixture(scope="module")
def asked():
    return []


@pytest.fixture(scope="module")
def execution(thirdparty, asked, tmp_path_factory):
    from maia_core import plugins

    saved = dict(os.environ)
    os.environ.update(SECRETS)
    os.environ["MAIA_TEST_VISIBLE"] = "visible"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(thirdparty), saved.get("PYTHONPATH")])
    )
    plugins.reset_plugins()
    ex = ProcessExecution(SPEC, cell_timeout=2.0, log_dir=tmp_path_factory.mktemp("logs"))
    try:
        ex.start()
        yield ex
    finally:
        ex.close()
        os.environ.clear()
        os.environ.update(saved)
        plugins.reset_plugins()


def _ask(asked):
    def ask(messages):
        asked.append(messages)
        return "echo: " + messages[-1].text

    return ask


@pytest.fixture
def fresh(execution, asked):
    session = execution.session(_ask(asked))
    session.begin(UNIT)
    yield session
    session.close()


def test_namespace_persists_and_output_keeps_its_order(fresh):
    r1 = fresh.run_cell("x = 41\nprint('first')")
    assert r1.error is None and text_of(r1) == "first\n"
    r2 = fresh.run_cell(
        "print('before')\ntools.display(Image.new('RGB', (8, 8)), 'caption')\nprint('after')\nx + 1"
    )
    kinds = [(type(p).__name__, getattr(p, "text", "").strip()) for p in r2.parts]
    assert kinds == [
        ("TextPart", "before"),
        ("ImagePart", ""),
        ("TextPart", "caption"),
        ("TextPart", "after\n42"),
    ]
    assert r2.parts[1].source == "display" and r2.parts[2].source == "display"


def test_each_investigation_gets_a_fresh_namespace(fresh, execution, asked):
    fresh.run_cell("leftover = 1")
    other = execution.session(_ask(asked))
    other.begin(UNIT)
    try:
        assert "NameError" in other.run_cell("leftover").error
    finally:
        other.close()


def test_exception_returns_the_agents_traceback_and_keeps_state(fresh):
    fresh.run_cell("kept = 'yes'")
    r = fresh.run_cell("def f():\n    return 1 / 0\nf()")
    assert r.error and "ZeroDivisionError: division by zero" in r.error
    assert 'File "<cell 2>", line 2, in f' in r.error and "return 1 / 0" in r.error
    assert "maia_core" not in r.error  # the framework's frames are cut
    assert r.parts[-1].source == "error"
    assert text_of(fresh.run_cell("print(kept)")) == "yes\n"


def test_syntax_error_is_reported(fresh):
    r = fresh.run_cell("def (:")
    assert "SyntaxError" in r.error


def test_endless_loop_is_interrupted_and_state_kept(fresh):
    fresh.run_cell("kept = 7")
    r = fresh.run_cell("while True:\n    pass")
    assert r.error.startswith("TimeoutError") and "2 s limit" in r.error and r.restarted is None
    assert text_of(fresh.run_cell("print(kept)")) == "7\n"


def test_cell_that_ignores_the_interrupt_is_killed_and_replaced(fresh):
    fresh.run_cell("kept = 7")
    pid = fresh.proc.pid  # the kernel process (inside its namespace it is PID 1)
    r = fresh.run_cell(
        "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\nwhile True:\n    pass"
    )
    assert r.restarted and "did not stop when interrupted" in r.restarted
    assert "NameError" in fresh.run_cell("kept").error
    assert fresh.proc.pid != pid
    # the unit is set up again in the new worker
    assert (
        fresh.run_cell(
            "acts, _ = system.call_neuron([Image.new('RGB', (64, 64))])\nprint(len(acts))"
        ).error
        is None
    )


def test_sys_exit_is_an_error_not_an_exit(fresh):
    fresh.run_cell("kept = 1")
    r = fresh.run_cell("import sys\nsys.exit(3)")
    assert r.error.startswith("SystemExit") and r.restarted is None
    assert text_of(fresh.run_cell("print(kept)")) == "1\n"


def test_os_exit_restarts_the_worker(fresh):
    r = fresh.run_cell("import os\nos._exit(7)")
    assert r.restarted and "exit status 7" in r.restarted
    assert "SandboxError" in r.error
    assert fresh.run_cell("print(system.neuron_num)").parts[0].text == "1\n"


def test_segfault_restarts_the_worker(fresh):
    r = fresh.run_cell("import ctypes\nctypes.string_at(0)")
    assert r.restarted and "SIGSEGV" in r.restarted
    assert fresh.run_cell("print('alive')").parts[0].text == "alive\n"


def test_memory_past_the_cap_kills_only_the_cell(execution, asked):
    session = execution.session(_ask(asked))
    session.memory_limit = 400 * 2**20
    # Memory, not time, must stop it: on a machine where fresh pages come slowly (a VM whose
    # memory its host backs on first touch: 80 MB/s seen here), 400 MB can take seconds.
    session.cell_timeout = 120.0
    session.begin(UNIT)
    try:
        r = session.run_cell(
            "import numpy as np\nblock = np.ones(2**28)  # 2 GiB, touched\nprint('survived')"
        )
        assert r.restarted and "more memory than the sandbox allows" in r.restarted
        assert "survived" not in text_of(r)
        assert session.run_cell("print('alive')").parts[0].text == "alive\n"
    finally:
        session.close()


def test_agent_code_cannot_read_api_keys(fresh):
    import ast

    r = fresh.run_cell("import os\nprint(dict(os.environ))")
    env = ast.literal_eval(text_of(r))  # a dict's repr, printed by the kernel
    # A contained kernel's environment is the policy's short list, nothing inherited beyond
    # locale settings: no key, no MAIA_TEST_VISIBLE, the sandbox's own PYTHONPATH.
    assert {k for k in env if not k.startswith(("LC_", "LANG"))} <= {
        "PATH",
        "PYTHONPATH",
        "PWD",
        "HOME",
        "TMPDIR",
        "TZ",
        "TERM",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "MAIA_MAX_PROCESSES",
    }
    assert env["HOME"] == "/tmp/home"
    for value in SECRETS.values():
        assert value not in text_of(r)


def test_tools_reach_the_backbone_through_the_parent(fresh, asked):
    asked.clear()
    r = fresh.run_cell(
        "import os\nprint(tools.caption('describe this'))\nprint(os.environ.get('OPENAI_API_KEY'))"
    )
    assert text_of(r) == "echo: describe this\nNone\n"
    assert len(asked) == 1 and asked[0][-1].text == "describe this"


def test_output_is_bounded(fresh):
    r = fresh.run_cell(
        "print('x' * 50_000)\nfor i in range(50):\n    tools.display(Image.new('RGB', (4, 4)))"
    )
    assert sum(isinstance(p, ImagePart) for p in r.parts) == 40
    assert "more characters of output were cut" in text_of(r)
    assert len(text_of(r)) < 21_000


def test_secret_patterns():
    assert all(is_secret(k) for k in SECRETS)
    assert not any(
        is_secret(k)
        for k in ("PATH", "HOME", "PYTHONPATH", "HF_HOME", "CUDA_VISIBLE_DEVICES", "KEYBOARD")
    )
    env = {
        "PATH": "/bin",
        "X_API_KEY_FILE": "f",
        "GITHUB_TOKEN": "t",
        "HF_HOME": "/h",
        "RANDOM_THING": "x",
    }
    assert child_environment(env) == {"PATH": "/bin", "HF_HOME": "/h"}


def test_memory_limit_parsing():
    assert parse_memory("8G") == 8 * 2**30
    assert parse_memory("512MB") == 512 * 2**20
    assert parse_memory("none") is None
    assert 0 < parse_memory("50%") < parse_memory("100%")
    from maia_core.errors import UserError

    with pytest.raises(UserError, match="Malformed --memory-limit"):
        parse_memory("lots")


def test_in_process_sandbox(with_thirdparty):
    ex = InProcessExecution(SPEC, cell_timeout=1.0)
    ex.start()
    box = ex.session(lambda m: "ok")
    box.begin(UNIT)
    assert box.run_cell("y = 2").error is None
    r = box.run_cell("while True:\n    pass")
    assert r.error.startswith("TimeoutError") and "1 s limit" in r.error
    assert box.run_cell("import sys; sys.exit(0)").error.startswith("SystemExit")
    assert text_of(box.run_cell("print(y)")) == "2\n"
    ex.close()


def test_a_host_shut_down_by_ctrl_c_is_not_restarted_by_the_units_in_flight(with_thirdparty):
    """After Ctrl-C the run kills its host; a unit thread that then finds the host gone must
    not start another (a host and kernels nobody waits for kept ``maia bench`` alive)."""
    from maia_core.execution.sandbox import HostProcess, KernelPool, _Gone

    host = HostProcess(SPEC)
    host.start()
    generation, first = host.generation, host.proc
    host.close(now=True)
    assert first.poll() is not None  # killed
    with pytest.raises(_Gone, match="the run is stopping"):
        host.revive(generation)
    with pytest.raises(_Gone, match="the run is stopping"):
        host.start()
    assert host.proc is None and host.restarts == 0
    pool = KernelPool("none", None, size=1)
    pool.close()
    with pytest.raises(RuntimeError, match="the run is stopping"):
        pool.take()


def test_the_limits_watch_outlives_a_pass_that_fails(monkeypatch):
    """One pass over /proc that raises (a process table read mid-change, say) must not end the
    watch: every kernel's memory and process caps would be gone for the rest of the run."""
    import threading

    from maia_core.execution.isolation import ResourceWatch

    watch = ResourceWatch(interval=0.01)
    passes: list[int] = []
    again = threading.Event()

    def check(only=None):
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("a bad pass")
        again.set()

    monkeypatch.setattr(watch, "check", check)
    watch.watch(os.getpid(), 2**40, None, [])
    try:
        assert again.wait(60), passes
    finally:
        watch._stop.set()
    assert len(passes) >= 2


def test_the_pool_warms_kernels_for_the_next_wave_while_one_runs(tmp_path):
    """Two investigations at a time, four in all: while the first two hold their kernels, two
    more start for the next two (the scheduler tells the pool what is still to open and what
    is opening, as it starts each); the last two leave none idle."""
    import time

    from maia_core.execution import containment
    from maia_core.execution.sandbox import KernelPool

    containment.check("bwrap")
    pool = KernelPool("bwrap", tmp_path / "kernels.log", size=2)
    try:
        pool.expect(4)  # the run's start: four to open
        pool.fill()
        for left in (3, 2):  # the first wave: each told as it starts, then taken
            pool.expect(left, opening=1)
        first = [pool.take(), pool.take()]
        deadline = time.monotonic() + 120
        while len(pool._ready) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._ready) == 2 and pool.started == 4
        for kernel in first:  # the first wave ends: the scheduler counts nothing new
            kernel.reap()
        pool.expect(2)
        assert len(pool._ready) == 2
        for left in (1, 0):
            pool.expect(left, opening=1)
        last = [pool.take(), pool.take()]
        assert not pool._ready and pool._starting == 0 and pool.started == 4
        assert all(k.error is None for k in first + last)
        for kernel in last:
            kernel.reap()
    finally:
        pool.close()


def test_a_take_waits_for_the_kernel_on_its_way_instead_of_starting_another(tmp_path):
    """An investigation that opens while its warm kernel is still starting takes that one: a
    second start beside it would only slow both on a busy machine."""
    import time

    from maia_core.execution import containment
    from maia_core.execution.sandbox import KernelPool

    containment.check("bwrap")
    pool = KernelPool("bwrap", tmp_path / "kernels.log", size=2)
    try:
        pool.expect(0, opening=1)  # one investigation opening, none after it
        pool.fill()
        assert pool._starting == 1
        kernel = pool.take()  # at once: its kernel is still starting
        deadline = time.monotonic() + 120
        while pool._starting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kernel.error is None and kernel.alive()
        assert pool.started == 1 and not pool._ready and pool._starting == 0
        kernel.reap()
    finally:
        pool.close()


def test_kernels_start_ahead_only_for_investigations_still_to_open(
    thirdparty, monkeypatch, tmp_path
):
    """Warm kernels wait for investigations that will open: a run of one unit at
    concurrency 4 starts one kernel, and a run told that nothing is left starts none."""
    import time

    from maia_core import plugins

    monkeypatch.setenv("PYTHONPATH", str(thirdparty))
    plugins.reset_plugins()
    ex = ProcessExecution(SPEC, concurrency=4, sessions=1, log_dir=tmp_path)
    try:
        ex.start()
        deadline = time.monotonic() + 120  # the kernel started with the host is ready first
        while not ex.pool._ready and time.monotonic() < deadline:
            time.sleep(0.05)
        ex.expect(0, opening=1)  # as the scheduler does as it opens the last investigation
        session = ex.session(lambda m: "ok")
        session.begin(UNIT)
        assert text_of(session.run_cell("print(6 * 7)")).strip() == "42"
        ex.expect(0)
        session.close()
        # none ready or starting: fill() starts them at once, so none is on its way either
        assert ex.pool.started == 1 and not ex.pool._ready and ex.pool._starting == 0
        # a session beyond what was expected (a replacement) gets a kernel started for it
        again = ex.session(lambda m: "ok")
        again.begin(UNIT)
        assert text_of(again.run_cell("print(1)")).strip() == "1"
        again.close()
        assert ex.pool.started == 2
        # an investigation counted as opening that ends before it takes a kernel (its host
        # session could not open) gives up its place: none is kept warm for it
        ex.expect(0, opening=1)
        assert ex.pool._target() == 1
        ex.session(lambda m: "ok").close()
        assert ex.pool._target() == 0 and ex.pool.opening == 0
    finally:
        ex.close()
        plugins.reset_plugins()
