"""The file names of a tokenizer in a model directory or a workdir (the names Hugging Face uses).

A directory holds a Hugging Face tokenizer (`tokenizer.json`, with its config files beside it) or a
sentencepiece model (`tokenizer.model`); where both are present, `tokenizer.json` is the one read.
"""

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
SENTENCEPIECE_MODEL = "tokenizer.model"

# The Hugging Face files travel together; TOKENIZER_JSON is the one that must exist.
HF_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
ALL_FILES = (SENTENCEPIECE_MODEL, *HF_FILES)
