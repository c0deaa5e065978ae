"""The ``fake`` runtime: a tiny deterministic numpy language model, for testing the pipeline.

It stands in for a real model wherever a test needs the whole chain (store, cache keys,
resume, suites, gates, statistics, MLflow, reports, CLI) but not a real model's numbers: it
loads in milliseconds, needs nothing but numpy, and gives genuine, deterministic figures on
every suite (perplexity, fidelity KL, MMLU log-likelihoods, greedy generation for GSM8K,
HumanEval and JSON format through lm-eval). Its companion ``harness.quantizers.fake``
perturbs its weights by a declared amount, so a "quantized" fake model really scores worse,
more so the larger the perturbation. It plays the part of lm-eval's ``dummy`` model and
inspect_ai's ``mockllm``, but it is a language model, not a stub.

**Tokens.** Bytes: ids 0-255 are the UTF-8 bytes of the text, ``BOS_ID`` = 256 (never
produced by ``tokenize``; as context it reads like EOS), ``EOS_ID`` = 257 (end of text: the
stop token, and the token that opens a document, as GPT-2's ``<|endoftext|>``). Vocabulary
258. ``tokenize`` adds no special token; ``detokenize`` drops them.

**Model.** An interpolated byte n-gram model with an in-context copy head, in logit space:

    logits(next | ..., b, a) = bigram[a] + trigram[(b, a)] + copy

- ``bigram`` (258 × 258): log P(next | a), absolute discounting (D = 0.8) interpolated with
  add-one unigram frequencies;
- ``trigram`` (K × 258, one row per byte pair seen in training): log P(next | b, a) − log
  P(next | a), the same discounting with the bigram as the lower order; zero for unseen pairs;
- ``copy``: an induction head. If the last 4 (8) tokens occurred earlier in the context, the
  token that followed their latest occurrence gets ``copy_gains[0]`` (``[1]``) added to its
  logit (the longer match wins). This is what reproduces a few-shot format.

The counts come from ``CORPUS`` below (about 9 KB of encyclopedic prose in WikiText's
layout, a few GSM8K-style questions, multiple-choice questions, chat turns with JSON replies
and Python functions), the copy gains from 3-fold cross-validation on it (a grid in steps of
0.05). Fitting takes ~0.3 s; ``harness.baseline.derive("fake:tiny", "fake")`` does it once per
store. WikiText-2 perplexity per byte ~15.6 (a uniform model: 258). Greedy decoding soon
loops, as a small model's does, so GSM8K, HumanEval and JSON format score 0; on MMLU it picks
nearly always the same letter (at or below chance). Those suites' figures are real but carry
no signal: gate fake runs on perplexity, fidelity, size and speed.

**File.** One ``.npz`` (numpy's zip of ``.npy`` arrays, written byte-for-byte deterministic):
``meta`` (UTF-8 JSON: format, model name, token ids, copy orders, each tensor's type and
shape, how it was quantized), ``trigram_keys`` (b · 258 + a of each trigram row, sorted),
``copy_gains``, and the weight tensors ``bigram`` and ``trigram``: float32 (type ``F32``), or
rounded to ``2**bits`` levels per row (type ``Q<bits>``: ``<name>.q`` the codes, bit-packed,
``<name>.lo`` and ``<name>.step`` float32 per row). The runtime dequantizes at load and
computes in float64.

**Chat template** (``CHAT_TEMPLATE``, recorded in ``info()``): ``<|role|>\\n{content}\\n`` per
message, then ``<|assistant|>\\n``. Plain bytes, no special token.

**Params** (both speed-only: they never change a score, so they stay out of result keys):
``threads`` (recorded only; the model runs single-threaded numpy) and ``decode_delay_ms``
(a sleep after each token the speed probes decode, ``greedy_decode``/``greedy_decode_batch``;
the suites' ``generate`` is not slowed): a slow runtime on demand, for speed gates.
``score_noise`` (with ``score_noise_seed``) changes scores: Gaussian noise on the scoring's
logits, fresh each session unless seeded, to stand in for a runtime that is not
bit-deterministic (the baseline's noise floor, ``baseline.repeats``).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.runtimes import Runtime, Session, cut_at_stop

VOCAB_SIZE = 258
BOS_ID = 256
EOS_ID = 257
#: the artifact format name (what ``Runtime.accepts`` and ``Quantizer.output_format`` say)
FORMAT_NAME = "fake"
#: the file format inside it; bump FIT_VERSION when the fitting changes the weights
FILE_FORMAT = "quantgate-fake/1"
FIT_VERSION = "1"
BASELINE_ENTRY = "model-F32.npz"
#: weight tensors (2-D, perturbed and quantized by harness.quantizers.fake); the other arrays
#: (trigram_keys, copy_gains) are structure and stay exact, as norms stay F32 in a GGUF
WEIGHTS = ("bigram", "trigram")
COPY_ORDERS = (4, 8)
#: baseline models: ``fake:<name>`` -> fitting settings
MODELS: dict[str, dict[str, Any]] = {"tiny": {"discount": 0.8, "gain_grid": [0.0, 6.0, 0.05], "folds": 3}}
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"

# The training text. Documents are separated by two blank lines. Changing it changes the model
# (and the baseline's store key, which hashes it).
CORPUS = r'''
 = The River Valley =

The history of the river valley begins with the first farmers, who settled along its banks and learned to read the seasons of flood and drought. They built low walls of mud and stone, dug channels to carry water to their fields, and stored grain in pits lined with clay. Over many centuries the villages grew into towns, and the towns into a small kingdom whose kings claimed to rule by the will of the river itself.

The valley is about 120 miles ( 190 km ) long and lies between two ranges of hills. Its soil is rich and dark, and in a good year the farmers could bring in two harvests. The main crops were wheat , barley , beans and flax , and the people kept sheep , goats and cattle on the higher ground. Fish were taken from the river with nets and traps , and reeds from the marshes were used for roofs , mats and boats.

In the early period the settlements were small and independent. Each village had its own shrine , and the elders met in the open to settle disputes over land and water. Around 3000 BC a series of dry years forced the villages to work together , and the first canals that served more than one village were dug at this time. Historians describe this as the beginning of the state , since the canals needed officials to plan the work , to count the workers and to divide the water.

 = = Trade and cities = =

By the second millennium BC the largest town had a population of perhaps 10 @,@ 000 people. It was surrounded by a wall of baked brick and had a temple , a palace and a market where merchants from the coast sold salt , copper , wine and cloth. The river was the main road of the kingdom : boats carried grain downstream to the sea and returned with timber and metal. Letters written on clay tablets show that the merchants kept careful accounts , lent money at interest and went to court when a partner failed to pay.

The city was destroyed by fire in 1180 BC , and for two hundred years the valley was divided among rival lords. It was united again by a new dynasty from the hills , whose first king , remembered as the Builder , repaired the canals and founded a new capital on the east bank. The new city was laid out on a regular plan , with straight streets , public wells and a great hall for the council of the kingdom.

 = = Later history = =

In the modern era the valley became part of a larger state , and the old canals were replaced by a dam and a network of pumps. The dam , completed in 1962 , controls the floods and provides electricity for the region , but it also stopped the yearly deposit of fresh silt on the fields , and farmers now depend on fertiliser. The population of the valley is about 2 @.@ 5 million , most of whom live in the three main towns. Tourism has grown since the 1990s , and visitors come to see the ruins of the old capital , the museum of the kingdom and the wetlands , which are home to more than 200 species of birds.


 = Weather and Climate =

The climate of the region is mild in winter and hot and dry in summer. Most of the rain falls between November and March , when storms arrive from the west. The average temperature in January is 9 ° C ( 48 ° F ) , and in July it is 27 ° C ( 81 ° F ). In some years the rains fail almost completely , and the rivers fall so low that boats can no longer reach the upper valley. In other years heavy rain in the hills causes sudden floods , which can destroy bridges , roads and houses in a single night.

Scientists who study the climate of the past have found that the region was wetter about eight thousand years ago. Lakes that are now dry salt flats were then fresh water , and the hills were covered with forest. The change to a drier climate was slow , but it had a great effect on the people of the region , who moved into the valleys where water could still be found.


 = The Life of a Scientist =

Maria Kessler was born in 1867 in a small town in the north of the country. Her father was a teacher of mathematics , and her mother ran the family shop. She was a quiet child who read every book she could find , and at the age of sixteen she won a place at the university , one of the first women to do so. She studied physics and chemistry , and after her degree she worked in a laboratory that measured the properties of gases at low temperature.

In 1898 she published a paper on the way that light is absorbed by thin layers of metal. The paper was widely read , and it brought her an invitation to work in the capital. There she married a fellow scientist , and the two of them worked together for more than thirty years. Their most important work was a method for measuring very small amounts of heat , which was later used in the study of chemical reactions and in the design of engines.

Kessler received many honours during her life , including a gold medal from the national academy in 1921. She died in 1944. A street , a school and a small crater on the Moon are named after her. Her letters , which describe the daily life of a laboratory at the turn of the century , were published in 1988 and are still read by historians of science.


 = The Game and its Reception =

The game was released in North America in September 2004 and in Europe two months later. It follows a young pilot who must defend her home island from an invading fleet , and it combines flying missions with a story told through short scenes between the levels. The developers spent three years on the project , and the music was written by a composer who had worked on several films.

Critics praised the graphics , the music and the controls , although some felt that the story was too short and that the later missions were too difficult. The game sold more than one million copies in its first year and was followed by a sequel in 2007. In a review , one magazine wrote that it was " the best flying game of the year " , and another gave it a score of 9 out of 10.


 = The Church of Saint Anne =

The church of Saint Anne is a parish church in the centre of the old town. It was built between 1230 and 1290 on the site of an earlier wooden chapel , and it is one of the finest examples of early Gothic building in the region. The nave is 52 metres long and 18 metres high , and the tower , added in the fifteenth century , can be seen from every part of the town. The windows of the east end contain stained glass from the fourteenth century , showing scenes from the life of the saint.

The church was damaged by fire in 1702 and again during the war in 1944 , when the roof of the nave was destroyed. It was restored in the years after the war , and the work was completed in 1958. Today it is used for services every Sunday and for concerts in the summer.


Question: A farmer has 12 sheep and buys 7 more. Then 4 of the sheep are sold at the market. How many sheep does the farmer have now?
Answer: The farmer starts with 12 sheep and buys 7 more, so he has 12 + 7 = 19 sheep. He sells 4, so he has 19 - 4 = 15 sheep.
#### 15

Question: A boat carries 30 bags of grain on each trip. How many bags does it carry in 5 trips?
Answer: Each trip carries 30 bags, so 5 trips carry 5 * 30 = 150 bags.
#### 150

Question: Anna reads 20 pages a day. How many days does she need to read a book of 140 pages?
Answer: She reads 20 pages each day, so she needs 140 / 20 = 7 days.
#### 7

Question: A shop sells pens for 3 dollars each. Tom buys 6 pens and pays with a 20 dollar note. How much change does he get?
Answer: The pens cost 6 * 3 = 18 dollars. His change is 20 - 18 = 2 dollars.
#### 2


The following are multiple choice questions (with answers) about geography.

Which of the following is the longest river in Africa?
A. The Congo
B. The Nile
C. The Niger
D. The Zambezi
Answer: B

Water boils at sea level at a temperature of
A. 50 degrees Celsius
B. 90 degrees Celsius
C. 100 degrees Celsius
D. 120 degrees Celsius
Answer: C

Which gas do plants take in from the air to make their food?
A. Carbon dioxide
B. Oxygen
C. Nitrogen
D. Hydrogen
Answer: A


<|user|>
Reply with only a JSON object with the fields "name" (string) and "age" (integer). Text: Ada is 36 years old.
<|assistant|>
{"name": "Ada", "age": 36}

<|user|>
Reply with only a JSON object with the fields "city" (string) and "population" (integer). Text: The town of Elm has 5200 people.
<|assistant|>
{"city": "Elm", "population": 5200}

<|user|>
Reply with only a JSON object with the fields "title" (string), "year" (integer) and "done" (boolean). Text: The report "River Survey" from 2019 is finished.
<|assistant|>
{"title": "River Survey", "year": 2019, "done": true}


def add(a, b):
    """Return the sum of a and b."""
    return a + b

def count_words(text):
    """Return the number of words in text."""
    return len(text.split())

def is_even(n):
    """Return True if n is even."""
    return n % 2 == 0
'''.strip("\n") + "\n"


# ------------------------------------------------------------------ the file
def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """An ``.npz`` numpy's ``np.load`` reads, but with fixed zip timestamps and member order, so
    equal arrays give equal bytes (``np.savez`` stamps the current time)."""
    arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes < 2**bits, ``bits`` bits each, packed into bytes (big-endian bit order)."""
    planes = (codes.reshape(-1, 1).astype(np.uint8) >> np.arange(bits - 1, -1, -1, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1))


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed)[: count * bits].reshape(count, bits)
    return (planes.astype(np.uint16) << np.arange(bits - 1, -1, -1, dtype=np.uint16)).sum(1).astype(np.uint8)


def quantize_rows(w: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """Row-wise asymmetric uniform rounding to ``2**bits`` levels: ``w ≈ lo + step · code``."""
    lo = w.min(1)
    step = (w.max(1) - lo) / (2**bits - 1)
    step = np.where(step > 0, step, 1.0).astype(np.float32)
    lo = lo.astype(np.float32)
    codes = np.clip(np.rint((w - lo[:, None]) / step[:, None]), 0, 2**bits - 1)
    return {"q": pack_codes(codes, bits), "lo": lo, "step": step}


def read_model(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays with every weight tensor dequantized to float32, meta) of a fake model file."""
    with np.load(Path(path), allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(stored.pop("meta").tobytes().decode())
    if meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a fake model file (format {meta.get('format')!r}, expected {FILE_FORMAT!r})")
    arrays = {k: v for k, v in stored.items() if "." not in k}
    for name, t in meta["tensors"].items():
        if t["type"] != "F32":
            bits, shape = int(t["type"][1:]), tuple(t["shape"])
            codes = unpack_codes(stored[f"{name}.q"], bits, shape[0] * shape[1]).reshape(shape)
            lo, step = stored[f"{name}.lo"], stored[f"{name}.step"]
            arrays[name] = (lo[:, None] + step[:, None] * codes.astype(np.float32)).astype(np.float32)
    return arrays, meta


def write_model(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                bits: int | None = None) -> dict[str, Any]:
    """Write a fake model (weight tensors as float32, or rounded to ``bits``); return the
    manifest's figures: ``bits_per_weight`` (stored bytes of the weight tensors, scales
    included, per weight), ``parameters``, ``tensor_types``."""
    out, tensors, n_bytes, n_elem = {}, {}, 0, 0
    for name, value in arrays.items():
        if name not in WEIGHTS:
            out[name] = value
            continue
        w = np.asarray(value, dtype=np.float32)
        kind = f"Q{bits}" if bits else "F32"
        tensors[name] = {"type": kind, "shape": list(w.shape)}
        parts = {f"{name}.{k}": v for k, v in quantize_rows(w, bits).items()} if bits else {name: w}
        out.update(parts)
        n_bytes += sum(v.nbytes for v in parts.values())
        n_elem += w.size
    write_npz(path, out, {**meta, "format": FILE_FORMAT, "tensors": tensors})
    types: dict[str, int] = {}
    for t in tensors.values():
        types[t["type"]] = types.get(t["type"], 0) + 1
    return {"bits_per_weight": 8.0 * n_bytes / n_elem, "parameters": int(n_elem), "tensor_types": types}


# ---------------------------------------------------------------- the model
def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


class CopyHead:
    """The induction head, fed one token at a time: after each token, the token predicted to
    come next by the latest earlier occurrence of the last 4 (8) tokens, and its logit gain."""

    def __init__(self, orders: tuple[int, ...], gains: tuple[float, ...]):
        self.orders, self.gains = orders, gains
        self.ids: list[int] = []
        self.last: list[dict[tuple[int, ...], int]] = [{} for _ in orders]

    def push(self, token: int) -> tuple[int, float]:
        ids = self.ids
        ids.append(token)
        i = len(ids) - 1
        pred, gain = -1, 0.0
        for k, last, g in zip(self.orders, self.last, self.gains, strict=True):  # longer orders win
            if i >= k - 1:
                key = tuple(ids[i - k + 1:])
                j = last.get(key)
                if j is not None:
                    pred, gain = ids[j + 1], g
                last[key] = i
        return pred, gain


class FakeModel:
    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.meta = meta
        self.bigram = np.asarray(arrays["bigram"], dtype=np.float64)
        keys = np.asarray(arrays["trigram_keys"], dtype=np.int64)
        # one zero row after the K trained ones: the row of every unseen byte pair
        self.trigram = np.vstack([np.asarray(arrays["trigram"], dtype=np.float64), np.zeros((1, VOCAB_SIZE))])
        self.keys = keys
        self.row_of = {int(k): i for i, k in enumerate(keys.tolist())}
        self.orders = tuple(int(k) for k in meta.get("copy_orders", COPY_ORDERS))
        self.gains = tuple(float(g) for g in np.asarray(arrays["copy_gains"], dtype=np.float64))
        #: bytes of weights one decode step reads: a row of each table, as computed (float64)
        self.weight_bytes_per_token = 2 * VOCAB_SIZE * 8

    @classmethod
    def load(cls, path: Path) -> FakeModel:
        arrays, meta = read_model(path)
        if meta.get("unloadable"):
            raise ValueError(f"{path}: {meta['unloadable']}")
        return cls(arrays, meta)

    def _rows(self, ctx: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(ctx), dtype=np.int64)
        idx = np.minimum(np.searchsorted(self.keys, ctx), len(self.keys) - 1)
        return np.where(self.keys[idx] == ctx, idx, len(self.keys))

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits after each prefix: shape (len(ids) - 1, vocab), row i predicting ids[i + 1]."""
        a = np.asarray(ids, dtype=np.int64)
        x = self.bigram[a[:-1]]
        if len(a) > 2:
            x[1:] += self.trigram[self._rows(a[:-2] * VOCAB_SIZE + a[1:-1])]
        head = CopyHead(self.orders, self.gains)
        for i, t in enumerate(ids[:-1]):
            pred, gain = head.push(int(t))
            if pred >= 0:
                x[i, pred] += gain
        return x

    def stream(self) -> Stream:
        return Stream(self)


class Stream:
    """Incremental state for generation: push tokens, read the next token's logits (the same
    sums as ``FakeModel.logits``, so greedy generation agrees with scoring)."""

    def __init__(self, model: FakeModel):
        self.model = model
        self.head = CopyHead(model.orders, model.gains)
        self.prev: list[int] = []
        self.pred, self.gain = -1, 0.0

    def push(self, tokens) -> None:
        for t in tokens:
            self.pred, self.gain = self.head.push(int(t))
        self.prev = self.head.ids[-2:]

    def __len__(self) -> int:
        return len(self.head.ids)

    def next_logits(self) -> np.ndarray:
        m = self.model
        x = m.bigram[self.prev[-1] if self.prev else EOS_ID].copy()  # nothing yet: a text's start
        if len(self.prev) == 2:
            row = m.row_of.get(self.prev[0] * VOCAB_SIZE + self.prev[1])
            if row is not None:
                x += m.trigram[row]
        if self.pred >= 0:
            x[self.pred] += self.gain
        return x


# ----------------------------------------------------------------- fitting
def _sequences(docs: list[str]) -> list[list[int]]:
    return [[EOS_ID, *d.encode("utf-8"), EOS_ID] for d in docs]


def _fit_ngrams(seqs: list[list[int]], discount: float) -> dict[str, np.ndarray]:
    V = VOCAB_SIZE
    uni = np.ones(V)
    big = np.zeros((V, V))
    tri: dict[int, np.ndarray] = {}
    for s in seqs:
        a = np.asarray(s)
        np.add.at(uni, a[1:], 1.0)
        np.add.at(big, (a[:-1], a[1:]), 1.0)
        for i in range(1, len(s) - 1):
            row = tri.setdefault(s[i - 1] * V + s[i], np.zeros(V))
            row[s[i + 1]] += 1.0
    big[BOS_ID] = big[EOS_ID]  # BOS reads as the start of a text, like EOS

    def interpolate(counts: np.ndarray, lower: np.ndarray) -> np.ndarray:
        n = counts.sum(-1, keepdims=True)
        seen = (counts > 0).sum(-1, keepdims=True)
        safe = np.maximum(n, 1.0)
        return np.where(n > 0, np.maximum(counts - discount, 0.0) / safe + discount * seen / safe * lower, lower)

    p_bi = interpolate(big, (uni / uni.sum())[None, :])
    keys = np.array(sorted(tri), dtype=np.int64)
    lower = p_bi[keys % V]
    p_tri = interpolate(np.stack([tri[k] for k in keys.tolist()]), lower)
    return {"bigram": np.log(p_bi).astype(np.float32), "trigram": (np.log(p_tri) - np.log(lower)).astype(np.float32),
            "trigram_keys": keys}


def _fit_gains(docs: list[str], settings: dict[str, Any]) -> np.ndarray:
    """Copy gains maximizing held-out likelihood, k-fold over documents: per order, the gain g
    on the positions where that order's match decides maximizes Σ [g·hit − log(1 + p(e^g − 1))]
    (p: the n-gram probability of the copied token)."""
    folds = int(settings["folds"])
    hits: list[list[np.ndarray]] = [[] for _ in COPY_ORDERS]
    probs: list[list[np.ndarray]] = [[] for _ in COPY_ORDERS]
    for f in range(folds):
        train = [d for i, d in enumerate(docs) if i % folds != f]
        model = FakeModel({**_fit_ngrams(_sequences(train), settings["discount"]),
                           "copy_gains": np.zeros(len(COPY_ORDERS))}, {"copy_orders": list(COPY_ORDERS)})
        for s in _sequences([d for i, d in enumerate(docs) if i % folds == f]):
            p = np.exp(log_softmax(model.logits(s)))
            head = CopyHead(COPY_ORDERS, tuple(range(len(COPY_ORDERS))))  # "gain" = which order decided
            for i, t in enumerate(s[:-1]):
                pred, order = head.push(t)
                if pred >= 0:
                    hits[int(order)].append(np.array([pred == s[i + 1]]))
                    probs[int(order)].append(np.array([p[i, pred]]))
    lo, hi, step = settings["gain_grid"]
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    gains = []
    for h, p in zip(hits, probs, strict=True):
        if not h:
            gains.append(0.0)
            continue
        h, p = np.concatenate(h).astype(np.float64), np.concatenate(p)
        score = grid * h.sum() - np.log1p(p[None, :] * np.expm1(grid)[:, None]).sum(1)
        gains.append(float(grid[int(np.argmax(score))]))
    return np.array(gains, dtype=np.float32)


def corpus_documents() -> list[str]:
    return [d for d in CORPUS.split("\n\n\n") if d.strip()]


def check_model(model: str) -> str | None:
    """Why ``model`` (a plan's ``baseline.model``) is not a fake model name, or None."""
    name = model.partition(":")[2]
    if model.startswith("fake:") and name in MODELS:
        return None
    return f"unknown fake model {model!r}; allowed: {', '.join('fake:' + n for n in MODELS)}"


def model_key(model: str) -> str:
    """The baseline's store key: what its weights are made from (the settings, the corpus's
    sha256, the fitting's version), hashed."""
    from harness.store import content_key

    name = model.partition(":")[2]
    return content_key({"fake": name, "settings": MODELS[name], "fit": FIT_VERSION, "format": FILE_FORMAT,
                        "corpus_sha256": hashlib.sha256(CORPUS.encode()).hexdigest()})


def fit(model: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of the baseline ``fake:<name>``, fitted on ``CORPUS``."""
    why = check_model(model)
    if why:
        raise ValueError(why)
    settings = MODELS[model.partition(":")[2]]
    docs = corpus_documents()
    arrays = {**_fit_ngrams(_sequences(docs), settings["discount"]), "copy_gains": _fit_gains(docs, settings)}
    meta = {"model": model, "vocab_size": VOCAB_SIZE, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "copy_orders": list(COPY_ORDERS), "settings": settings, "fit_version": FIT_VERSION,
            "corpus_sha256": hashlib.sha256(CORPUS.encode()).hexdigest(), "quantization": None}
    return arrays, meta


def write_baseline(model: str, path: Path) -> dict[str, Any]:
    """Fit ``fake:<name>`` and write it (float32) to ``path``; return manifest fields."""
    arrays, meta = fit(model)
    info = write_model(path, arrays, meta)
    return {**info, "copy_gains": [float(g) for g in arrays["copy_gains"]],
            "trigram_contexts": int(len(arrays["trigram_keys"]))}


# ---------------------------------------------------------------- runtime
class FakeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(None, ge=1, description="recorded only: the fake model runs single-threaded numpy")
    decode_delay_ms: float = Field(0.0, ge=0, description=(
        "sleep per decoded token in the speed probes' timed decoding (greedy_decode*, not the suites' generate): "
        "a slower runtime on demand"))
    score_delay_ms: float = Field(0.0, ge=0, description=(
        "sleep per scored sequence (token_distributions: perplexity and fidelity windows): a suite that "
        "takes a while, to interrupt and resume in tests"))
    score_noise: float = Field(0.0, ge=0, le=10, description=(
        "test tool: Gaussian noise of this standard deviation (nats) added to every logit the scoring "
        "computes (token_distributions, next_token_distribution), as a runtime that is not bit-deterministic "
        "(GPU batching, thread counts) scores the same model slightly differently from run to run"))
    score_noise_seed: int | None = Field(None, ge=0, description=(
        "the noise's seed: null draws fresh entropy for each session (run-to-run noise: two scorings of "
        "one model differ); an integer repeats the same draws in every session"))


class FakeSession(Session):
    stop_token_ids = (EOS_ID,)

    def __init__(self, model: FakeModel, n_ctx: int, params: FakeParams, path: Path):
        self.model = model
        self.n_ctx = int(n_ctx)
        self.params = params
        self.path = path
        self._noise = np.random.default_rng(params.score_noise_seed) if params.score_noise else None

    def info(self) -> dict[str, Any]:
        q = self.model.meta.get("quantization")
        types = sorted({t["type"] for t in self.model.meta.get("tensors", {}).values()})
        return {"device": "cpu", "model": self.model.meta.get("model"), "format": FILE_FORMAT,
                "weights": "/".join(types) + (" (dequantized to float64 at load)" if types != ["F32"] else ""),
                "quantization": q, "vocab_size": VOCAB_SIZE, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                "copy_orders": list(self.model.orders), "copy_gains": list(self.model.gains),
                "chat_template": CHAT_TEMPLATE, "threads": self.params.threads}

    # ---- tokens
    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids: list[int]) -> bytes:
        return bytes(int(t) for t in ids if 0 <= int(t) < 256)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (the roofline probe asks): one float64 row of
        each table, not the whole model as in a transformer."""
        return self.model.weight_bytes_per_token

    # ---- scoring
    def _check(self, n: int) -> None:
        if n > self.n_ctx:
            raise ValueError(f"sequence of {n} tokens exceeds n_ctx={self.n_ctx}")

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        self._check(len(ids))
        if self.params.score_delay_ms:
            time.sleep(self.params.score_delay_ms / 1000.0)
        return log_softmax(self._noisy(self.model.logits(list(ids))))

    def next_token_distribution(self, context: list[int]) -> np.ndarray:
        self._check(len(context))
        s = self.model.stream()
        s.push(context)
        return log_softmax(self._noisy(s.next_logits()))

    def _noisy(self, logits: np.ndarray) -> np.ndarray:
        if self._noise is None:
            return logits
        return logits + self.params.score_noise * self._noise.standard_normal(logits.shape)

    # ---- generation
    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        self._check(len(prompt))
        s = self.model.stream()
        s.push(prompt)
        out: list[int] = []
        text = ""
        for _ in range(max_new_tokens):
            if len(s) >= self.n_ctx:
                break
            token = int(np.argmax(s.next_logits()))
            if token in self.stop_token_ids:
                break
            out.append(token)
            text, stopped = cut_at_stop(self.detokenize(out).decode("utf-8", errors="ignore"), stop)
            if stopped:
                return text
            s.push([token])
        return text

    def _decode(self, s: Stream, n_tokens: int) -> list[int]:
        delay = self.params.decode_delay_ms / 1000.0
        tokens = []
        for _ in range(n_tokens):
            tokens.append(int(np.argmax(s.next_logits())))
            s.push(tokens[-1:])
            if delay:
                time.sleep(delay)
        return tokens

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        s = self.model.stream()
        s.push(prompt)
        s.next_logits()  # the prefill's last logits, as a real runtime computes them
        t1 = time.perf_counter()
        tokens = self._decode(s, n_tokens)
        t2 = time.perf_counter()
        return {"prefill_seconds": t1 - t0, "decode_seconds": t2 - t1, "tokens": [tokens]}

    def greedy_decode_batch(self, prompts: list[list[int]], n_tokens: int) -> dict[str, Any]:
        """Sequences one after the other (nothing is batched: the figures are the sums)."""
        streams, prefill, decode, tokens = [], 0.0, 0.0, []
        for p in prompts:
            t0 = time.perf_counter()
            s = self.model.stream()
            s.push(p)
            s.next_logits()
            prefill += time.perf_counter() - t0
            streams.append(s)
        for s in streams:
            t0 = time.perf_counter()
            tokens.append(self._decode(s, n_tokens))
            decode += time.perf_counter() - t0
        return {"prefill_seconds": prefill, "decode_seconds": decode, "tokens": tokens}

    def timed_prefill(self, context: list[int], prompt: list[int]) -> float:
        s = self.model.stream()
        s.push(context)
        t0 = time.perf_counter()
        s.push(prompt)
        s.next_logits()
        return time.perf_counter() - t0


class FakeRuntime(Runtime):
    name = "fake"
    Params = FakeParams
    accepts = (FORMAT_NAME,)
    speed_only_params = ("threads", "decode_delay_ms", "score_delay_ms")
    model_prefix = "fake:"
    baseline_entry = BASELINE_ENTRY

    def check_baseline(self, model: str) -> str | None:
        """Why a plan's ``baseline.model`` ``fake:<name>`` names no fake model, or None."""
        return check_model(model)

    def baseline_key(self, model: str) -> str:
        return model_key(model)

    def write_baseline(self, model: str, folder: Path) -> dict[str, Any]:
        return {"kind": "fake", **write_baseline(model, Path(folder) / BASELINE_ENTRY)}

    def versions(self) -> dict[str, str]:
        return {"quantgate-fake": f"{FILE_FORMAT} fit {FIT_VERSION}", "numpy": np.__version__}

    def result_identity(self, params: FakeParams) -> dict[str, Any]:
        """The score noise changes scores (it is in result keys); without it the keys are as
        before it existed."""
        d = super().result_identity(params)
        if not params.score_noise:
            d.pop("score_noise", None)
            d.pop("score_noise_seed", None)
        return d

    def load(self, path: Path, params: FakeParams, n_ctx: int) -> FakeSession:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fake model file not found: {path}")
        return FakeSession(FakeModel.load(path), n_ctx, params, path)
