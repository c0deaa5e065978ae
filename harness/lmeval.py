"""lm-eval's model interface over any quantgate runtime session.

``SessionLM`` adapts a ``harness.runtimes.Session`` to lm-eval's ``TemplateLM``:
``loglikelihood`` (requests with one context and one-token continuations, MMLU's
four letters, are answered from a single next-token distribution),
``loglikelihood_rolling`` (disjoint windows, as lm-eval's own HF model) and
``generate_until`` (greedy). Each runtime is also registered with lm-eval under
``quantgate-<runtime>`` so lm-eval's Python API can use it directly::

    import harness.lmeval, lm_eval
    lm_eval.simple_evaluate(model="quantgate-llama-cpp",
                            model_args="pretrained=model.gguf,n_threads=2", tasks=[...])
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

log = logging.getLogger(__name__)


class SessionLM(TemplateLM):
    """An lm-eval model backed by a loaded quantgate session (greedy, deterministic)."""

    def __init__(self, session, name: str = "quantgate", batch_size: int = 64):
        super().__init__()
        self.session = session
        self.name = name
        self.batch_size = batch_size

    # ---- tokenization
    @property
    def eot_token_id(self) -> int:
        return int(self.session.stop_token_ids[0])

    @property
    def max_length(self) -> int:
        return int(self.session.n_ctx)

    @property
    def tokenizer_name(self) -> str:
        return self.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.session.tokenize(string))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.session.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.session.chat_prompt(chat_history)

    # ---- scoring
    def _truncate(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Keep the newest tokens when a request exceeds the context (as lm-eval's HF model)."""
        over = len(context) + len(continuation) - self.max_length
        if over > 0:
            if len(continuation) >= self.max_length:
                continuation = continuation[-(self.max_length - 1):]
                over = len(context) + len(continuation) - self.max_length
            context = context[over:] if over < len(context) else context[-1:]
        return context, continuation

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        single: dict[tuple[int, ...], list[int]] = defaultdict(list)
        multi: list[int] = []
        prepared = []
        for i, (_, context, continuation) in enumerate(requests):
            context, continuation = self._truncate(list(context), list(continuation))
            prepared.append((context, continuation))
            if len(continuation) == 1:
                single[tuple(context)].append(i)
            else:
                multi.append(i)
        # one forward pass per distinct context answers all its one-token continuations
        for context, idx in single.items():
            logp = self.session.next_token_distribution(list(context))
            top = int(np.argmax(logp))
            for i in idx:
                tok = prepared[i][1][0]
                results[i] = (float(logp[tok]), tok == top)
        # longer continuations: sorted by tokens so shared prefixes are scored back to back
        multi.sort(key=lambda i: prepared[i][0] + prepared[i][1])
        for start in range(0, len(multi), self.batch_size):
            chunk = multi[start:start + self.batch_size]
            for i, res in zip(chunk, self.session.score_many([prepared[i] for i in chunk]), strict=True):
                results[i] = (float(res[0]), bool(res[1]))
        for i, ((context_s, cont_s), _, _) in enumerate(requests):
            self.cache_hook.add_partial("loglikelihood", (context_s, cont_s), results[i])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                # lm-eval's windows hold max_seq_len + 1 tokens (the last is never an input);
                # quantgate sessions take whole sequences of at most n_ctx tokens
                max_seq_len=self.max_length - 1, context_len=1)]
            scores = self.session.score_many([(list(c), list(t)) for c, t in windows])
            total = float(sum(s for s, _ in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        settings = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", 256))
            if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
                log.warning("sampling requested (%s): quantgate generates greedily", kw)
            key = (tuple(until), max_new)
            settings[key] = (until, max_new)
            groups[key].append(i)
        out: list[str | None] = [None] * len(requests)
        for key, idx in groups.items():
            until, max_new = settings[key]
            prompts = []
            for i in idx:
                ids = self.tok_encode(requests[i].args[0])
                keep = max(1, self.max_length - max_new)
                prompts.append(ids[-keep:])
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                texts = self.session.generate_many(prompts[start:start + self.batch_size], max_new, until)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]


class RuntimeLM(SessionLM):
    """Loads an artifact with a quantgate runtime: what ``quantgate-<runtime>`` names in lm-eval."""

    runtime_name = ""

    def __init__(self, pretrained: str, n_ctx: int = 2048, batch_size: int | str = 64, **runtime_params):
        from harness.runtimes import REGISTRY

        runtime = REGISTRY.get(self.runtime_name)()
        params = runtime.Params.model_validate(runtime_params)
        session = runtime.load(Path(pretrained), params, int(n_ctx))
        super().__init__(session, name=f"quantgate-{self.runtime_name}",
                         batch_size=int(batch_size) if str(batch_size).isdigit() else 64)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k in ("batch_size",)}
        return cls(**args, **extra)


def _runtime_lm(runtime_name: str) -> type[RuntimeLM]:
    cls_name = "".join(p.capitalize() for p in runtime_name.replace("_", "-").split("-")) + "LM"
    return type(cls_name, (RuntimeLM,), {"runtime_name": runtime_name, "__module__": __name__})


def register_runtimes() -> list[str]:
    """Register every quantgate runtime with lm-eval as ``quantgate-<name>``."""
    from harness.runtimes import REGISTRY

    names = []
    for runtime_name in REGISTRY.names():
        name = f"quantgate-{runtime_name}"
        if name not in model_registry:
            model_registry.register(name)(_runtime_lm(runtime_name))
        names.append(name)
    return names


register_runtimes()
