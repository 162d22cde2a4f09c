"""Containment: agent code reaches nothing but its own scratch space and its channels.

Each way out a hostile cell tried (the containment issue) is a probe here. The probes run as
eight investigations at once, through the real ``maia`` command, with secrets in the
environment of ``maia run``, a ``.env`` in its working folder and a ``.netrc`` in its home;
once as root and once as a non-root user. Each probe prints what it could reach; the test
reads the transcripts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import MAIA, ROOT, write_replay

SECRET = "sk-ant-probe-secret-0123456789"
FINAL = "[DESCRIPTION]: probed\n[LABEL]: probed"

# Each unit of toynet's conv1 runs one probe; every probe prints one line "PROBE <json>".
PROBE = r"""```python
import ctypes, errno, glob, json, os, socket, sys, time
n = system.neuron_num
out = {"probe": n}

def reach(path, mode="r"):
    try:
        with open(path, mode) as f:
            f.write("planted\n") if "a" in mode or "w" in mode else f.read(64)
        return "yes"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

if n == 0:  # /proc: unmount it, then look for other processes and their environments
    libc = ctypes.CDLL(None, use_errno=True)
    out["umount"] = libc.umount2(b"/proc", 2)
    out["pids"] = len(glob.glob("/proc/[0-9]*"))
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            if SECRET.encode() in open(path, "rb").read():
                found.append(path)
        except OSError:
            pass
    out["found"] = found
    out["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
    out["nnp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
    out["unshare"] = libc.unshare(0x10000000)  # a user namespace of its own
elif n == 1:  # files that hold keys
    out["netrc"] = reach(HOME + "/.netrc")
    out["dotenv"] = reach(CWD + "/.env")
    out["shadow"] = reach("/etc/shadow")
    out["bashrc"] = reach(HOME + "/.bashrc", "a")
    out["home_listing"] = os.path.isdir(HOME)
    out["env_secret"] = any(SECRET in v for v in os.environ.values())
elif n == 2:  # other units' results, the checkout, the virtual environment
    out["results_write"] = reach(RESULTS + "/planted.txt", "w")
    out["results_list"] = os.path.isdir(RESULTS)
    out["checkout_write"] = reach(CHECKOUT + "/planted.py", "w")
    out["venv_write"] = reach(os.path.dirname(os.path.dirname(os.__file__)) + "/planted.py", "w")
    out["root_write"] = reach("/planted", "w")
    out["tmp_write"] = reach("/tmp/scratch.txt", "w")
elif n == 3:  # the installed answer key, and a user's set file
    import importlib.util
    out["find_spec"] = importlib.util.find_spec("maia_plugins") is not None
    out["offline_set"] = reach(CHECKOUT + "/plugins/targets/synthetic_sets/offline.json")
    out["user_set"] = reach(USER_SET)
    out["user_set_write"] = reach(USER_SET, "a")
elif n == 4:  # the network: a server outside, a UDP packet, a listening socket
    try:
        socket.create_connection(("127.0.0.1", SERVER_PORT), timeout=2).close()
        out["tcp"] = "connected"
    except OSError as e:
        out["tcp"] = type(e).__name__
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"probe", ("127.0.0.1", UDP_PORT))
        out["udp"] = "sent"
    except OSError as e:
        out["udp"] = type(e).__name__
    listener = socket.socket()
    listener.bind(("0.0.0.0", LISTEN_PORT))
    listener.listen()
    listener.settimeout(4)
    try:
        listener.accept()
        out["accepted"] = True
    except OSError:
        out["accepted"] = False
elif n == 5:  # descriptors sent along the channels, eight a frame
    import array
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(8)]
    sent = 0
    for fd in [int(a) for a in sys.argv[1:] if a.isdigit()]:
        try:
            sock = socket.socket(fileno=os.dup(fd))
            for _ in range(300):
                sock.sendmsg([b"\0" * 8], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                sent += 1
        except OSError:
            pass
    out["sent"] = sent
    time.sleep(5)
elif n == 6:  # past the memory cap, from a child that left the process group and session
    import subprocess
    subprocess.run([sys.executable, "-c", "import os, time, numpy as np; os.setsid(); b = np.ones(2**27); time.sleep(30)"])
    out["child_finished"] = True
elif n == 7:  # a fork bomb, whose cell lasts until the limit acts: a refused fork, or a kill
    root = os.getpid()
    refused = "/tmp/fork_refused"
    try:
        for _ in range(10):
            os.fork()
    except OSError as e:
        out["fork_error"] = type(e).__name__
        open(refused, "w").close()
    if os.getpid() != root:
        time.sleep(30)
        os._exit(0)
    for _ in range(200):  # the watcher kills the tree once it passes the limit
        if os.path.exists(refused):
            out["fork_error"] = out.get("fork_error", "in a child")
            break
        time.sleep(0.2)
print("PROBE " + json.dumps(out))
```"""
AFTER = "```python\nimport os\nprint('alive', system.neuron_num, os.getpid() > 0)\n```"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probes(tmp_path: Path, thirdparty: Path, wrap: list[str]) -> dict[int, dict]:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f"machine api.anthropic.com login me password {SECRET}\n")
    (home / ".bashrc").write_text("# bashrc\n")
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / ".env").write_text(f"ANTHROPIC_API_KEY={SECRET}\n")
    user_set = tmp_path / "mine.json"
    user_set.write_text(json.dumps({"detector": "offline", "mono": ["zebra"]}))
    results = tmp_path / "results"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    listen_port = _free_port()
    values = {
        "SECRET": SECRET,
        "HOME": str(home),
        "CWD": str(cwd),
        "RESULTS": str(results),
        "CHECKOUT": str(ROOT),
        "USER_SET": str(user_set),
        "SERVER_PORT": server.getsockname()[1],
        "UDP_PORT": udp.getsockname()[1],
        "LISTEN_PORT": listen_port,
    }
    prelude = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    probe = PROBE.replace("```python\n", "```python\n" + prelude, 1)
    replay = write_replay(tmp_path / "probes.json", [probe, AFTER, AFTER, FINAL])
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "PYTHONPATH")} | {
        "HOME": str(home),
        "PYTHONPATH": str(thirdparty),
        "ANTHROPIC_API_KEY": SECRET,
        "DB_PASSWORD": SECRET,
        "HF_AUTHORIZATION": f"Bearer hf_{SECRET.replace('-', '')}",
        "COLUMNS": "200",
    }
    proc = subprocess.Popen(
        [*wrap, MAIA, "run", "--target", "toynet", "--units", "conv1=0-7", "-j", "8",
         "--backbone", f"replay:{replay}", "--results", str(results), "--reporter", "json",
         "--memory-limit", "600M", "--cell-timeout", "60"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    reached: list[str] = []
    most_fds = 0
    seen: set[psutil.Process] = set()  # every process the run started, kernels' included
    while proc.poll() is None:  # from outside: connect to the kernel's listener; watch fds
        try:
            socket.create_connection(("127.0.0.1", listen_port), timeout=0.2).close()
            reached.append("listener")
        except OSError:
            pass
        for s in (server, udp):
            try:
                (s.accept()[0].close() if s is server else s.recvfrom(16))
                reached.append("server" if s is server else "udp")
            except OSError:
                pass
        try:
            main = psutil.Process(proc.pid).children()[0] if wrap else psutil.Process(proc.pid)
            most_fds = max(most_fds, main.num_fds())
            seen.update(main.children(recursive=True))
        except (psutil.Error, IndexError):
            pass
    stdout, stderr = proc.communicate()
    server.close()
    udp.close()
    assert proc.returncode == 0, stderr
    assert reached == [], f"agent code reached {reached} outside its sandbox"
    # the kernel's descriptor flood never reached the main process's table
    assert most_fds < 200, most_fds
    found: dict[int, dict] = {}
    for history in results.rglob("history.json"):
        # what came back from the kernels (the agent's own code names the secret it looks for)
        outputs = [m for m in json.loads(history.read_text())["messages"] if m["role"] == "user"]
        text = json.dumps(outputs)
        assert SECRET not in text and SECRET.replace("-", "") not in text
        for message in outputs:
            for part in message["parts"]:
                for line in part.get("text", "").splitlines():
                    if line.startswith("PROBE "):
                        data = json.loads(line[6:])
                        found[data["probe"]] = data
        unit = int(history.parent.name)
        found.setdefault(unit, {})["_transcript"] = text
    assert sorted(found) == list(range(8))
    # nothing the run started outlives it: kernels, what agent code started, the host
    _, alive = psutil.wait_procs(list(seen), timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    return found


def _check(found: dict[int, dict]) -> None:
    proc = found[0]
    assert proc["umount"] == -1 and proc["unshare"] == -1
    assert proc["pids"] <= 3 and proc["found"] == []  # bwrap's init, the kernel (and a child)
    assert proc["caps"] == "0000000000000000" and proc["nnp"] == "1"
    files = found[1]
    assert files["netrc"] == files["dotenv"] == files["shadow"] == "ENOENT"
    assert files["bashrc"] in ("ENOENT", "EROFS") and not files["home_listing"]
    assert files["env_secret"] is False
    results = found[2]
    assert results["results_write"] in ("ENOENT", "EROFS") and not results["results_list"]
    assert results["checkout_write"] in ("ENOENT", "EROFS")
    assert results["venv_write"] == "EROFS" and results["root_write"] == "EROFS"
    assert results["tmp_write"] == "yes"  # its own scratch space
    key = found[3]
    assert key["find_spec"] is False and key["offline_set"] == "ENOENT"
    assert key["user_set"] == key["user_set_write"] == "ENOENT"
    net = found[4]
    assert net["tcp"] in ("ConnectionRefusedError", "OSError", "TimeoutError")
    assert net["udp"] in ("sent", "OSError") and net["accepted"] is False
    # the descriptor flood: the kernel was treated as crashed, replaced, and went on
    flood = found[5]["_transcript"]
    assert "file descriptors" in flood and "variables from earlier cells are lost" in flood
    assert "alive 5 True" in flood
    hog = found[6]["_transcript"]
    assert "more memory than the sandbox allows" in hog and "alive 6 True" in hog
    assert "child_finished" not in hog
    bomb = found[7]["_transcript"]
    # bounded: the sandbox was killed for its processes, or forking was refused
    assert "more processes than the sandbox allows" in bomb or "fork_error" in bomb, bomb
    assert "alive 7 True" in bomb, bomb


def test_no_probe_gets_out_as_root(thirdparty, tmp_path):
    _check(_probes(tmp_path, thirdparty, []))


def _unshare_as_nobody() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed")
    probe = subprocess.run(
        [unshare, "--user", "--map-user=65534", "--map-group=65534", "id", "-u"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip() != "65534":
        pytest.skip(f"cannot become uid 65534 in a user namespace here: {probe.stderr.strip()}")
    return [unshare, "--user", "--map-user=65534", "--map-group=65534", "--"]


def test_no_probe_gets_out_as_a_user_who_is_not_root(thirdparty, tmp_path):
    """As uid 65534 (in a user namespace of its own, so it can still read this checkout and
    Python): bubblewrap takes its unprivileged path, and every kernel starts."""
    wrap = _unshare_as_nobody() if os.getuid() == 0 else []
    _check(_probes(tmp_path, thirdparty, wrap))


# -- the pieces, one by one --------------------------------------------------------------------


def test_the_environment_drops_secrets_by_value_whatever_the_name():
    from maia_core.execution.isolation import child_environment

    env = {
        "PATH": "/usr/bin",
        "HF_HOME": "/cache/hf",
        "CUDA_VISIBLE_DEVICES": "GPU-8f3e2a10-5b1c-4d6e-9f70-1a2b3c4d5e6f",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_AUTHORIZATION": "Bearer hf_AbCdEfGhIjKlMnOpQrStUvWx",  # a bearer string
        "HF_HUB_EXTRA": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz12",  # a token
        "HF_ENDPOINT": "https://me:hunter2@hub.internal/",  # a password in a URL
        "HF_MIRROR": "https://hub.internal/api?token=abc123",  # a token in a URL
        "MAIA_SERVICE": "Zx9aQ2mN7pL4vB8kR1tY6wE3uI5oP0sD",  # a key, by its randomness
        "PYTHONSTARTUP": "AKIAIOSFODNN7EXAMPLE",  # an AWS access key id
    }
    assert child_environment(env) == {
        "PATH": "/usr/bin",
        "HF_HOME": "/cache/hf",
        "CUDA_VISIBLE_DEVICES": "GPU-8f3e2a10-5b1c-4d6e-9f70-1a2b3c4d5e6f",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_a_channel_that_refuses_descriptors_closes_them_and_calls_the_peer_broken():
    import array

    from maia_core.execution.channel import Channel
    from maia_core.execution.codec import ProtocolError

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours)
    before = len(os.listdir("/proc/self/fd"))
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(8)]
    try:
        for _ in range(50):
            theirs.sendmsg(
                [b"\0" * 8], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        with pytest.raises(ProtocolError, match="file descriptors"):
            channel.recv()
        # what arrived was closed, not kept: the table is as it was (plus our own 8)
        assert len(os.listdir("/proc/self/fd")) <= before + 8
    finally:
        for fd in fds:
            os.close(fd)
        channel.close()
        theirs.close()
    # a channel from the main process accepts exactly what it is sent
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender, receiver = Channel(theirs), Channel(ours, accept_fds=True)
    r, w = os.pipe()
    sender.send({"op": "x"}, fds=(r,))
    assert receiver.recv() == {"op": "x"}
    [got] = receiver.take_fds()
    os.write(w, b"k")
    assert os.read(got, 1) == b"k"
    for fd in (r, w, got):
        os.close(fd)
    sender.close()
    receiver.close()


def test_where_the_sandbox_cannot_start_maia_run_refuses_with_one_line(thirdparty, tmp_path):
    replay = write_replay(tmp_path / "t.json", [FINAL])
    env = {**os.environ, "PYTHONPATH": str(thirdparty), "PATH": "/nonexistent"}
    args = ["run", "--target", "toynet", "--units", "conv1=0", "--backbone", f"replay:{replay}",
            "--results", str(tmp_path / "r"), "--reporter", "json"]  # fmt: skip
    # bubblewrap is there, but it cannot create namespaces inside this seccomp jail: what a
    # container that forbids user namespaces looks like
    jail = ROOT / "tests" / "no_userns.py"
    out = subprocess.run(
        [sys.executable, str(jail), MAIA, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot contain agent code here" in lines[0]
    assert "--containment none" in lines[0]
    assert not list((tmp_path / "r").rglob("result.json"))
    # with the risk accepted, the same run works, and says it is not contained
    out = subprocess.run(
        [sys.executable, str(jail), MAIA, *args, "--containment", "none"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "not contained (--containment none)" in out.stderr
    result = json.loads(next((tmp_path / "r").rglob("result.json")).read_text())
    assert result["status"] == "completed"


def test_an_interrupted_call_is_dropped_in_the_host_and_the_next_call_answers_at_once(
    tmp_path,
):
    """Under a CPU hog: a cell that keeps the host busy is stopped by its time limit; the
    host drops the rest of that call, and the next cell's one-image call gets its own answer."""
    from maia_core.execution.sandbox import ProcessExecution
    from maia_core.execution.specs import WorldSpec
    from maia_core.units import Unit

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        ex = ProcessExecution(
            WorldSpec(target="efficientnet_lite0", tools=["display"], device="cpu"),
            cell_timeout=6.0,
            log_dir=tmp_path / "logs",
        )
        ex.start()
        try:
            session = ex.session(lambda m: "")
            session.begin(Unit("blocks.6", 0))
            # One call on distinct images (nothing comes from the host's cache), far longer
            # than the time limit: the limit lands inside it, never between two calls.
            made = session.run_cell(
                "rng = np.random.default_rng(0)\n"
                "batch = [Image.fromarray(a) for a in rng.integers(0, 255, (3000, 16, 16, 3), dtype=np.uint8)]"
            )
            assert not made.error, made.error
            busy = "system.call_neuron(batch)"
            first = session.run_cell(busy)
            assert "TimeoutError" in first.error
            second = session.run_cell(
                "acts, _ = system.call_neuron([Image.new('RGB', (224, 224), 'red')])\nprint('answers', len(acts))"
            )
            assert "answers 1" in "".join(getattr(p, "text", "") for p in second.parts)
            # The abandoned call stops at its next batch (the one in flight finishes): the
            # host reports it dropped, however long that takes on a loaded machine.
            deadline = time.monotonic() + 120
            while ex.host.stats()["cancelled_calls"] < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ex.host.stats()["cancelled_calls"] == 1
            session.close()
        finally:
            ex.close()
    finally:
        hog.kill()
        hog.wait()


def test_a_ray_address_that_does_not_answer_is_one_line(thirdparty, tmp_path):
    pytest.importorskip("ray")
    replay = write_replay(tmp_path / "t.json", [FINAL])
    closed = _free_port()
    out = subprocess.run(
        [MAIA, "run", "--target", "toynet", "--units", "conv1=0", "--backbone", f"replay:{replay}",
         "--results", str(tmp_path / "r"), "--executor", "ray", "--ray-address", f"127.0.0.1:{closed}"],
        env={**os.environ, "PYTHONPATH": str(thirdparty)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot reach the Ray cluster" in lines[0]


def test_a_users_set_file_is_read_by_the_host_once_and_its_hash_recorded(tmp_path):
    import hashlib

    from maia_core.loop.run import RunConfig, run

    user_set = tmp_path / "mine.json"
    user_set.write_text(json.dumps({"detector": "offline", "mono": ["zebra", "red"]}))
    digest = hashlib.sha256(user_set.read_bytes()).hexdigest()
    replay = write_replay(tmp_path / "t.json", [FINAL])
    [inv] = run(
        RunConfig(
            target=f"synthetic:{user_set}",
            units="mono=1",
            backbone=f"replay:{replay}",
            results=tmp_path / "results",
            reporters=["json"],
            device="cpu",
        )
    )
    saved = json.loads((inv.out_dir / "result.json").read_text())
    assert saved["provenance"] == {"set": str(user_set), "sha256": digest}
    assert saved["ground_truth"]["concepts"] == ["red"]
    assert saved["containment"].startswith("contained by bubblewrap")


# -- results files are data --------------------------------------------------------------------


def _result(folder: Path, signed: bool = True, **fields) -> Path:
    from maia_core.signing import sign

    folder.mkdir(parents=True, exist_ok=True)
    result = {"target": "toynet", "backbone": "b", "layer": "conv2", "unit": 0,
              "status": "completed", "label": "red", "description": "red things", **fields}  # fmt: skip
    (folder / "result.json").write_text(json.dumps(sign(result) if signed else result))
    return folder


def test_maia_eval_runs_no_code_a_results_file_names_and_scores_only_what_maia_wrote(
    thirdparty_env, tmp_path
):
    from conftest import maia

    results = tmp_path / "r"
    marker = tmp_path / "pwned"
    command = {"cmd": f"touch {marker}"}
    planted_python = _result(
        results / "b" / "python" / "x" / "0",
        signed=False,
        target="python:subprocess:getoutput",
        target_options=command,
    )
    signed_python = _result(
        results / "b" / "python" / "x" / "1",
        unit=1,
        target="python:subprocess:getoutput",
        target_options=command,
    )
    planted = _result(results / "b" / "toynet" / "conv2" / "1", signed=False, unit=1)
    good = _result(results / "b" / "toynet" / "conv2" / "0")
    # a planted eval.json that would make a wrong label score perfectly
    (planted / "eval.json").write_text(json.dumps({"predictive": {"auc": 1.0}}))
    (good / "eval.json").write_text(
        json.dumps({"backbone": "b", "target": "toynet", "layer": "conv2", "unit": 0,
                    "label": "red", "predictive": {"auc": 1.0, "mean_pos": 9.0}})
    )  # fmt: skip
    env = {**thirdparty_env, "ANTHROPIC_API_KEY": SECRET}
    out = maia("eval", str(results), "--device", "cpu", env=env)
    assert out.returncode == 1, out.stderr
    assert not marker.exists(), "a results file made maia eval run a command"
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("maia eval: skipped ")]
    assert any(str(planted_python) in ln and "no valid signature" in ln for ln in lines)
    assert any(str(planted) in ln and "no valid signature" in ln for ln in lines)
    assert any(
        str(signed_python) in ln
        and "runs no code a results file names" in ln
        and "--target python:subprocess:getoutput" in ln
        for ln in lines
    )
    # the good unit was scored anew: its planted eval.json was not reused, and the new one
    # is signed for this result
    scored = json.loads((good / "eval.json").read_text())
    assert scored["predictive"]["mean_pos"] != 9.0 and "signature" in scored
    assert json.loads((planted / "eval.json").read_text()) == {"predictive": {"auc": 1.0}}
    # a second evaluation reuses what the first signed
    before = (good / "eval.json").read_text()
    again = maia("eval", str(results), "--device", "cpu", env=env)
    assert again.returncode == 1 and (good / "eval.json").read_text() == before


def test_maia_eval_scores_the_truth_the_run_recorded_and_notices_a_changed_set(tmp_path):
    from maia_core.loop.run import RunConfig, run
    from maia_plugins.evaluation.evaluate import Skipped, evaluate

    user_set = tmp_path / "mine.json"
    user_set.write_text(json.dumps({"detector": "offline", "mono": ["red", "blue"]}))
    replay = write_replay(tmp_path / "t.json", ["[DESCRIPTION]: red\n[LABEL]: red"])
    config = RunConfig(
        target=f"synthetic:{user_set}", units="mono=0-1", backbone=f"replay:{replay}",
        results=tmp_path / "results", reporters=["json"], device="cpu",
    )  # fmt: skip
    run(config)
    skipped: list[Skipped] = []
    records = evaluate([tmp_path / "results"], device="cpu", n=2, on_skip=skipped.append)
    truths = {r["unit"]: r["ground_truth"] for r in records}
    assert truths[0]["exact"] is True and truths[1]["exact"] is False and not skipped
    # the set changes after the run: its units are not scored against the new truth
    user_set.write_text(json.dumps({"detector": "offline", "mono": ["blue", "red"]}))
    records = evaluate(
        [tmp_path / "results"], device="cpu", n=2, force=True, on_skip=skipped.append
    )
    assert len(skipped) == 2 and all("changed since the run" in s.reason for s in skipped)
