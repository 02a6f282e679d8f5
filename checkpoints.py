"""Is a checkpoint folder whole and readable? Checked before any weights are read, so that a
weights-only copy, a hand-made merge or a file cut short by a full disk is named in one line
(records.CheckpointError) instead of failing deep inside transformers.

    check_checkpoint_folder("runs/grpo")     # raises CheckpointError: what is missing or damaged
    missing_checkpoint_files("runs/grpo")    # ["chat template (chat_template.jinja)", ...] or []

model.load_model runs it on every local folder; grpo.py and sft.py run it on --model / --resume
before they load any data. `python model.py complete` writes a whole folder from weights alone.
"""

import json
import os

from lora import is_adapter_dir
from records import CheckpointError, damaged_checkpoint

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def missing_checkpoint_files(path):
    """What the checkpoint folder `path` lacks to load, as the names shown to a user; [] if nothing.

    A full checkpoint (what save_checkpoint writes, and a Hub folder alike): config.json, weights
    (model.safetensors, or shards and their index), the tokenizer (tokenizer.json, or vocab.json
    and merges.txt; tokenizer_config.json), a chat template (in tokenizer_config.json, or
    chat_template.jinja / .json beside it) and preprocessor_config.json. An adapter folder: its
    weights (the base folder is checked when it loads).
    """
    def has(name):
        return os.path.isfile(os.path.join(path, name))
    if is_adapter_dir(path):
        return [] if any(map(has, ADAPTER_WEIGHT_FILES)) else ["adapter weights (adapter_model.safetensors)"]
    missing = [] if has("config.json") else ["config.json"]
    weights = next((name for name in WEIGHT_FILES if has(name)), None)
    if weights is None:
        missing.append("weights (model.safetensors)")
    elif weights.endswith(".index.json"):
        shards = sorted(set(_read_json(path, weights).get("weight_map", {}).values()))
        missing += [f"weights shard {name}" for name in shards if not has(name)]
    if not (has("tokenizer.json") or has("vocab.json") and has("merges.txt")) or not has("tokenizer_config.json"):
        missing.append("tokenizer (tokenizer.json, tokenizer_config.json)")
    elif not (has("chat_template.jinja") or has("chat_template.json")
              or _read_json(path, "tokenizer_config.json").get("chat_template")):
        missing.append("chat template (chat_template.jinja)")
    if not has("preprocessor_config.json"):
        missing.append("preprocessor_config.json")
    return missing


def _read_json(path, name):
    file = os.path.join(path, name)
    try:
        with open(file) as f:
            return json.load(f)
    except ValueError as error:
        raise damaged_checkpoint("checkpoints.py", file, error) from None


def check_checkpoint_folder(path):
    """Raise CheckpointError, one line, if the folder `path` is incomplete (missing_checkpoint_files)
    or a weights file of it is damaged (a .safetensors header that does not cover the file: a
    truncated copy). Reads only headers: this runs before any weights are loaded."""
    missing = missing_checkpoint_files(path)
    if missing:
        if any(name.startswith(("weights", "adapter weights", "config")) for name in missing):
            fix = ("it is not a whole checkpoint: copy it again, or write it again with the script that wrote it"
                   + _written_by(path))
        else:
            fix = (f"`python model.py complete {path} OUT --processor-from MODEL` writes a complete folder at OUT "
                   "(MODEL: the model its weights came from, e.g. tiny, a hub id or a checkpoint folder)")
        raise CheckpointError(f"checkpoints.py: {path} lacks {', '.join(missing)}; {fix}")
    from safetensors import SafetensorError, safe_open
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            try:
                with safe_open(os.path.join(path, name), "pt"):
                    pass
            except (SafetensorError, OSError) as error:
                raise damaged_checkpoint("checkpoints.py", os.path.join(path, name), error) from None


def checkpoint_meta(path):
    """The meta.json a script of this project wrote into the folder `path` (its script, step,
    options, ...), {} for a folder without one."""
    file = os.path.join(path, "meta.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return json.load(f)


def _written_by(path):
    """" (meta.json: sft.py)" for a folder this project wrote, else ""."""
    try:
        script = checkpoint_meta(path).get("script")
    except (OSError, ValueError, AttributeError):   # unreadable, cut short, or not an object
        return ""
    return f" (meta.json: {script})" if script else ""
