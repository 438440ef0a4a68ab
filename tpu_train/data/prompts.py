"""The prompt format shared by training data, sampling and evaluation (one definition, so they agree).

The MAmmoTH Alpaca template (Stanford Alpaca's "no input" prompt); the response follows "### Response:"
directly. PoT questions end with the trigger " Let's write a program."

Example:
    >>> format_prompt("What is 2+3?" + POT_TRIGGER).splitlines()[-3:]
    ["What is 2+3? Let's write a program.", '', '### Response:']
"""

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
POT_TRIGGER = " Let's write a program."
# What an Alpaca-tuned model writes when it starts inventing the next example: a natural stop string.
STOP_STRINGS = ("### Instruction",)


def format_prompt(instruction: str) -> str:
    """The Alpaca prompt for one instruction."""
    return PROMPT_TEMPLATE.format(instruction=instruction)
