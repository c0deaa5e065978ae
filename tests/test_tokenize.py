"""Every runtime tokenizes a rendered chat prompt the same way: control tokens written in the text
("<|im_start|>") become their one token, as Hugging Face tokenizers parse them. llama.cpp's
``special=False`` spelled them out as plain text, so a chat suite scored on llama.cpp fed the model
a prompt it never saw in training while transformers fed the real one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def llama_session(qg_home):
    pytest.importorskip("llama_cpp")
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime

    f16 = baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)
    session = LlamaCppRuntime().load(f16, LlamaCppParams(n_threads=1), 256)
    yield session
    session.close()


@pytest.mark.slow  # derives the F16 GGUF: ~20 s on 2 cores
def test_chat_prompt_control_tokens_are_single_tokens(llama_session):
    s = llama_session
    chat = s.chat_prompt([{"role": "user", "content": "What is 2+2?"}])
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    im_start = s.llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    im_end = s.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert len(im_start) == 1 and len(im_end) == 1
    ids = s.tokenize(chat)
    assert ids.count(im_start[0]) == chat.count("<|im_start|>") >= 2
    assert ids.count(im_end[0]) == chat.count("<|im_end|>") >= 1
    # the text between control tokens is tokenized as before
    assert s.tokenize("What is 2+2?") == s.llm.tokenize(b"What is 2+2?", add_bos=False, special=False)
    assert s.detokenize(s.tokenize("plain text, 42.")) == b"plain text, 42."


def test_the_fix_is_in_the_result_key():
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime

    identity = LlamaCppRuntime().result_identity(LlamaCppParams(n_threads=4))
    assert identity["scoring_revision"] == 2 and "n_threads" not in identity
