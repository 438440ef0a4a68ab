"""Prompt formats, one definition shared by training data, sampling and evaluation (so they agree).

A `PromptFormat` wraps one instruction as `head + instruction + tail`; the response follows the tail
directly and ends with the tokenizer's EOS. Two formats:

    alpaca   the MAmmoTH template (Stanford Alpaca's "no input" prompt); the papers' format, the default
             for base models. Stop string "### Instruction" (where a model starts a new example).
    chat     the model's own chat template (`chat_template` of its tokenizer_config.json) with one user
             message and the generation prompt, rendered as transformers' `apply_chat_template` renders it
             (Jinja2, sandboxed, trim_blocks and lstrip_blocks). For an instruct model such as
             SmolLM2-Instruct; its end-of-turn token is its EOS, so no stop string is needed.

The format a run trained with is written to W/prompt_format.json; sampling and evaluation read it from
there by default (`read_format`). PoT questions end with the trigger " Let's write a program."

Example:
    >>> ALPACA.render("What is 2+3?" + POT_TRIGGER).splitlines()[-3:]
    ["What is 2+3? Let's write a program.", '', '### Response:']
    >>> t = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\\n{% endfor %}<|assistant|>"
    >>> chat_format(t).render("Hi")
    '<|user|>Hi\\n<|assistant|>'
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from etils import epath

from tpu_train import tokenizer_files

POT_TRIGGER = " Let's write a program."
FORMAT_FILE = "prompt_format.json"
FORMAT_NAMES = ("alpaca", "chat")
_MARK = "\x00instruction\x00"  # stands for the instruction while a chat template is rendered


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    name: str
    head: str
    tail: str
    stop: tuple[str, ...] = ()  # stop strings for the sampler (matched on the decoded text)

    def render(self, instruction: str) -> str:
        return self.head + instruction + self.tail

    def to_json(self) -> dict:
        return {"name": self.name, "head": self.head, "tail": self.tail, "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: dict) -> PromptFormat:
        return cls(data["name"], data["head"], data["tail"], tuple(data.get("stop", ())))


ALPACA = PromptFormat(
    "alpaca",
    head="Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n",
    tail="\n\n### Response:",
    # What an Alpaca-tuned model writes when it starts inventing the next example.
    stop=("### Instruction",),
)


def chat_format(template: str, bos_token: str = "", eos_token: str = "") -> PromptFormat:
    """The chat format of a Jinja2 chat template: one user turn, then the assistant's generation prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    text = env.from_string(template).render(
        messages=[{"role": "user", "content": _MARK}],
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    if text.count(_MARK) != 1:
        raise ValueError("chat template does not render the user message exactly once")
    head, tail = text.split(_MARK)
    return PromptFormat("chat", head, tail)


def make_format(name: str, tokenizer_dir: str | Path | None = None) -> PromptFormat:
    """The named format; "chat" reads the chat template from `tokenizer_dir`/tokenizer_config.json."""
    if name == "alpaca":
        return ALPACA
    if name != "chat":
        raise ValueError(f"prompt format {name!r}; choose one of {FORMAT_NAMES}")
    path = epath.Path(tokenizer_dir or ".") / tokenizer_files.TOKENIZER_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path}: prompt format 'chat' needs the tokenizer's chat_template")
    config = json.loads(path.read_text())
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        raise ValueError(f"{path}: no chat_template; use the 'alpaca' prompt format")

    def token(field: str) -> str:
        value = config.get(field) or ""
        return value.get("content", "") if isinstance(value, dict) else value

    return chat_format(template, token("bos_token"), token("eos_token"))


def write_format(workdir: str | Path, fmt: PromptFormat) -> None:
    path = epath.Path(workdir) / FORMAT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fmt.to_json(), indent=2) + "\n")


def read_format(workdir: str | Path) -> PromptFormat:
    """The format a workdir's model was trained with; Alpaca for workdirs that predate the record."""
    path = epath.Path(workdir) / FORMAT_FILE
    if not path.exists():
        return ALPACA
    try:
        return PromptFormat.from_json(json.loads(path.read_text()))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a prompt format record ({e})") from e


def resolve_format(name: str, directory: str | Path) -> PromptFormat:
    """`name` ("alpaca" or "chat", the latter from `directory`'s tokenizer), or for "" the format a
    workdir recorded (Alpaca where it recorded none, e.g. a Hugging Face directory)."""
    return make_format(name, directory) if name else read_format(directory)
