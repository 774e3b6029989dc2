"""Answers from a model behind an OpenAI-compatible server (vLLM, SGLang, TGI, `transformers serve`, a managed
endpoint): the other generation backend of `medtune.evaluation`, beside in-process `generate`.

    medtune eval RECIPE --served http://localhost:8000 [--served-model NAME]

Each question is sent as a chat completion (the task's conversation, its images as PNG data URLs, greedy, the
task's token budget), many in flight; the server applies the model's chat template, as evaluation does in
process. Replies go through the same parsing, metrics and files as in-process answers. A reply is cut where
in-process generation would have stopped (after its "Final Answer:" line): a server cannot stop on that pattern.
Option scoring reads the first answer token's log-probabilities where the server gives them by token id (vLLM's
`return_tokens_as_token_ids` and `continue_final_message`; `transformers serve` gives none: generation only).

Timeouts, refused connections and server errors (429, 5xx) are retried by the OpenAI client (`retries` times,
with backoff), then reported per question. Every answer is appended to a log as it arrives
(OUT/eval/<name>.served.jsonl): a rerun asks only for what is missing, metrics are written once every question
has its answer, and the log is then removed (a later run asks anew).

Servers decode replies without special tokens: where MedGemma 1.5's thinking markers are special tokens, a served
reply loses them and its trace reads as its answer (in process they are kept: medtune/thinking.py). Evaluate a
thinking model in process, or through a server told to keep them (vLLM: `skip_special_tokens: false`).
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medtune.errors import MedtuneError

DEFAULT_IN_FLIGHT = 8  # requests a server batches together; vLLM and SGLang take far more
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 600.0  # seconds for one reply: a CPU server generating a long report is slow
TOP_LOGPROBS = 20  # the most OpenAI's API (and vLLM's default --max-logprobs) gives


@dataclass(frozen=True)
class Server:
    """A model behind an OpenAI-compatible endpoint: where, which model, how many requests in flight."""
    url: str
    model: str
    in_flight: int = DEFAULT_IN_FLIGHT
    retries: int = DEFAULT_RETRIES
    timeout: float = DEFAULT_TIMEOUT

    @property
    def label(self) -> str:
        """The model's name in results and tables."""
        return f"{self.model} (served at {self.url})"

    def client(self):
        from openai import OpenAI

        # a local server takes any key; a managed endpoint reads its own from the environment
        key = os.environ.get("MEDTUNE_SERVED_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        return OpenAI(base_url=api_base(self.url), api_key=key, max_retries=self.retries, timeout=self.timeout)


def api_base(url: str) -> str:
    """The OpenAI API's root under a server's URL: http://host:8000 and http://host:8000/v1 alike."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def connect(url: str, model: str | None = None, in_flight: int = DEFAULT_IN_FLIGHT,
            retries: int = DEFAULT_RETRIES) -> Server:
    """The server at `url`, checked: it answers, and serves `model` (default: the one model it lists). One line
    naming the fix where it does not."""
    import openai

    if in_flight < 1:
        raise MedtuneError(f"--requests-in-flight {in_flight}: give 1 or more")
    server = Server(url, model or "", in_flight, retries)
    try:
        listed = [m.id for m in server.client().with_options(max_retries=1, timeout=30).models.list()]
    except openai.APIConnectionError:
        raise MedtuneError(f"--served {url}: no server answers there (start it first, e.g. `vllm serve MODEL` or "
                           "`transformers serve`)") from None
    except openai.APIStatusError as e:
        raise MedtuneError(f"--served {url}: the server refused to list its models ({e.status_code}: "
                           f"{_said(e)})") from None
    if model:  # not checked against the list: servers that load on demand (transformers serve) list only what they
        return server  # have loaded; the first question, asked alone, says whether it is served
    if len(listed) != 1:
        names = ", ".join(listed[:10]) or "none"
        raise MedtuneError(f"--served {url} lists {len(listed)} models ({names}): name one with --served-model")
    return Server(url, listed[0], in_flight, retries)


# ----------------------------------------------------------------------------- requests
def chat_messages(conversation: list[dict[str, Any]], images: list) -> list[dict[str, Any]]:
    """A conversation of prepared rows (content items {"type": "image"} and {"type": "text"}) in the OpenAI chat
    format, its images in order as data URLs."""
    images = iter(images)
    messages = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        parts = []
        for item in content:
            if item["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": data_url(next(images))}})
            elif item.get("text"):
                parts.append({"type": "text", "text": item["text"]})
        messages.append({"role": message["role"], "content": parts})
    return messages


def data_url(image) -> str:
    """The image as a PNG data URL: lossless, so the server decodes the very pixels evaluation would have used."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _said(error) -> str:
    """What a server said when it refused a request, in a line."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("detail") or body.get("error") or body
    return " ".join(str(body or error).split())[:300]


class NoLogprobs(MedtuneError):
    pass


def _generate(client, server: Server, messages, max_new_tokens: int, cut) -> str:
    response = client.chat.completions.create(model=server.model, messages=messages, max_tokens=max_new_tokens,
                                              temperature=0.0)
    return cut(response.choices[0].message.content or "")


def _score(client, server: Server, messages, opening: str, option_ids: list[int]) -> list[float]:
    """The options' probabilities from the first answer token's log-probabilities, renormalised over the options
    (0 for an option outside the server's top tokens). The opening (e.g. "Final Answer:") is put in the model's
    turn for it to continue: vLLM's `continue_final_message`; token ids asked for as such, so that they compare
    with the options' ids whatever the server's detokenizer does."""
    extra: dict[str, Any] = {"return_tokens_as_token_ids": True}
    if opening:
        messages = [*messages, {"role": "assistant", "content": opening}]
        extra.update(continue_final_message=True, add_generation_prompt=False)
    response = client.chat.completions.create(model=server.model, messages=messages, max_tokens=1, temperature=0.0,
                                              logprobs=True, top_logprobs=TOP_LOGPROBS, extra_body=extra)
    logprobs = response.choices[0].logprobs
    if logprobs is None or not logprobs.content:
        raise NoLogprobs(f"{server.url} gives no log-probabilities (`logprobs`): option scoring needs them; "
                         "use eval.mode=generate (the server's generation is available)")
    seen: dict[int, float] = {}
    for top in logprobs.content[0].top_logprobs or []:
        if top.token.startswith("token_id:"):
            seen[int(top.token.split(":", 1)[1])] = math.exp(top.logprob)
    if not seen:  # a server that ignored `return_tokens_as_token_ids` (vLLM's): its tokens cannot be matched
        raise NoLogprobs(f"{server.url} gives log-probabilities by token text, not id (vLLM's "
                         "`return_tokens_as_token_ids`): option scoring cannot read them; use eval.mode=generate")
    probabilities = [seen.get(i, 0.0) for i in option_ids]
    total = sum(probabilities)
    return [p / total for p in probabilities] if total else [1.0 / len(option_ids)] * len(option_ids)


def _first_answer(ask, item, server: Server, mode: str):
    """The first question's answer, asked alone: what every request would meet (no such model, no log-probabilities)
    is one line, not a failure per question."""
    import openai

    try:
        return ask(item)
    except NoLogprobs:
        raise
    except openai.NotFoundError as e:
        raise MedtuneError(f"--served-model {server.model}: {server.url} serves no such model ({_said(e)})") from None
    except openai.APIStatusError as e:
        if mode == "score" and e.status_code in (400, 422):
            raise NoLogprobs(f"{server.url} refused a request for log-probabilities by token id ({_said(e)}): "
                             "option scoring needs them (vLLM gives them); use eval.mode=generate") from None
        raise MedtuneError(f"{server.url} refused the first question ({e.status_code}: {_said(e)})") from None
    except openai.OpenAIError as e:
        raise MedtuneError(f"{server.url}: {type(e).__name__}: {_said(e)}") from None


# ----------------------------------------------------------------------------- the answer log
class AnswerLog:
    """The answers received so far, one JSON line each, appended as they arrive: a rerun reads back those asked
    the same way (the same served model, token budget, mode and question) and asks for the rest."""

    def __init__(self, path: Path, asked_how: dict[str, Any]):
        self.path, self.how = Path(path), asked_how
        self.answers: dict[str, Any] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short when the last run was killed
                    continue
                if entry.get("how") == asked_how and "answer" in entry:
                    self.answers[entry["key"]] = entry["answer"]

    def add(self, key: str, answer=None, error: str | None = None) -> None:
        entry = {"key": key, "how": self.how, **({"error": error} if error else {"answer": answer})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if error is None:
            self.answers[key] = answer


def question_keys(questions) -> list[str]:
    """What identifies each question in the log: its row's id, which of the row's questions, and its text."""
    import hashlib

    from medtune.inference import row_conversations
    from medtune.rows import without_images

    rows = without_images(questions.rows)  # the text alone: no image is decoded
    asked: dict[int, tuple[str, list]] = {}
    keys = []
    for i, j in questions.order:
        if i not in asked:
            row = rows[i]
            asked[i] = (row["id"], row_conversations(questions.task, row))
        row_id, conversations = asked[i]
        text = json.dumps(conversations[j], sort_keys=True)
        keys.append(f"{row_id}/{j}/{hashlib.sha256(text.encode()).hexdigest()[:12]}")
    return keys


def served_answers(server: Server, questions, log_path: Path, *, mode: str, max_new_tokens: int, cut=None,
                   opening: str = "", option_ids: list[int] | None = None, desc: str = "",
                   show_progress: bool = True) -> list:
    """One answer per question (a reply, or option scores in mode "score"), from the server, `server.in_flight` at a
    time. MedtuneError, once every question was asked, when some could not be answered: the others are kept in
    the log for the rerun."""
    # not the server's URL: a server restarted elsewhere serves the same model
    how = {"model": server.model, "mode": mode,
           **({"max_new_tokens": max_new_tokens} if mode == "generate" else {"opening": opening})}
    log, keys = AnswerLog(log_path, how), question_keys(questions)
    client = server.client()
    cut = cut or (lambda text: text)

    def ask(item: dict[str, Any]):
        messages = chat_messages(item["messages"], item["images"])
        if mode == "score":
            return _score(client, server, messages, opening, option_ids)
        return _generate(client, server, messages, max_new_tokens, cut)

    failures: dict[str, str] = {}
    missing = [k for k, key in enumerate(keys) if key not in log.answers]
    if missing:  # one question first: a wrong model name, or a server without log-probabilities, told in one line
        log.add(keys[missing[0]], _first_answer(ask, questions[missing[0]], server, mode))
        missing = missing[1:]
    pool, pending = ThreadPoolExecutor(server.in_flight), {}

    def collect(done, bar) -> None:
        for future in done:
            key = keys[pending.pop(future)]
            try:
                log.add(key, future.result())
            except NoLogprobs:
                raise
            except Exception as e:  # the client's retries are spent: reported per question
                failures[key] = f"{type(e).__name__}: {_said(e)}"
                log.add(key, error=failures[key])
            bar.update(1)

    try:
        with tqdm(total=len(keys), initial=len(keys) - len(missing), desc=desc, unit="question",
                  disable=not show_progress) as bar:
            for k in missing:
                while len(pending) >= 2 * server.in_flight:  # a bounded window: images are encoded as requests go
                    collect(wait(pending, return_when=FIRST_COMPLETED)[0], bar)
                # the row is read here, in one thread (`Questions` keeps the last row it read)
                pending[pool.submit(ask, questions[k])] = k
            while pending:
                collect(wait(pending, return_when=FIRST_COMPLETED)[0], bar)
    finally:  # interrupted (Ctrl-C, a refusal): keep what has arrived, wait for nothing
        for future, k in list(pending.items()):
            if future.done() and not future.cancelled() and future.exception() is None:
                log.add(keys[k], future.result())
        pool.shutdown(wait=False, cancel_futures=True)
    if failures:
        first = next(iter(failures.items()))
        raise MedtuneError(f"{len(failures)} of {len(keys)} questions got no answer from {server.url} (first: "
                           f"{first[0]}: {first[1]}; each is in the log); the {len(keys) - len(failures)} answers "
                           f"received are kept in {log_path}: rerun the same command to ask for the rest")
    return [log.answers[key] for key in keys]



def connect_all(url: str, names: list[str], processor, adapters: list, in_flight: int = DEFAULT_IN_FLIGHT,
                retries: int = DEFAULT_RETRIES) -> list[Server]:
    """The served models a command asks (`--served URL --served-model NAME ...`; none named: the one the server
    lists), refused in one line where a served model cannot be asked: adapters passed to load (the server serves
    them), a model without a chat template."""
    if adapters:
        raise MedtuneError("--adapter with --served: the server serves adapters (vLLM: --lora-modules NAME=DIR); "
                           "name each with --served-model NAME")
    refuse_plain(processor)
    return [connect(url, name, in_flight, retries) for name in (names or [None])]


def refuse_plain(processor) -> None:
    """A model without a chat template (MedGemma pt) takes a plain prompt: servers take those only as text
    completions, which carry no images."""
    from medtune.prompts import is_plain

    if is_plain(processor):
        raise MedtuneError("a model without a chat template (model.prompt_format: plain) cannot be asked through "
                           "chat completions: evaluate it in process")
