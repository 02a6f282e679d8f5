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

from records import CheckpointError, damaged_checkpoint

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
              "chat_template.json", "adapter_config.json")   # check_checkpoint_folder parses each one there


def is_adapter_dir(path):
    """Whether `path` is a LoRA run's folder: an adapter in peft's format (lora.py), not full weights."""
    return os.path.isfile(os.path.join(str(path), "adapter_config.json"))


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
    if not (has("chat_template.jinja") or has("chat_template.json")
            or has("tokenizer_config.json") and _template_in(_read_json(path, "tokenizer_config.json"))):
        missing.append("chat template (chat_template.jinja)")
    if not has("preprocessor_config.json"):
        missing.append("preprocessor_config.json")
    return missing


def _template_in(tokenizer_config):
    return isinstance(tokenizer_config, dict) and tokenizer_config.get("chat_template")


def _read_json(path, name):
    file = os.path.join(path, name)
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, OSError) as error:   # cut short (JSONDecodeError, UnicodeDecodeError) or unreadable
        raise damaged_checkpoint("checkpoints.py", file, error) from None


def _check_template(path):
    """CheckpointError if chat_template.jinja is there and does not compile as the tokenizer compiles it."""
    import jinja2
    file = os.path.join(path, "chat_template.jinja")
    if not os.path.isfile(file):
        return
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
        try:   # transformers' own compiler: its extensions ({% generation %}, loop controls)
            from transformers.utils.chat_template_utils import _compile_jinja_template as compile_template
        except ImportError:
            compile_template = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse
        compile_template(text)
    except (jinja2.TemplateSyntaxError, ValueError, OSError) as error:
        raise damaged_checkpoint("checkpoints.py", file, error) from None


def check_checkpoint_folder(path):
    """Raise CheckpointError, one line, if the folder `path` is incomplete (missing_checkpoint_files)
    or a file of it is damaged: a JSON file of JSON_FILES that does not parse, a chat_template.jinja
    that does not compile, a .safetensors header that does not cover the file (a truncated copy).
    Reads only the small files and the weights' headers: this runs before any weights are loaded."""
    missing = missing_checkpoint_files(path)
    if missing:
        if any(name.startswith(("weights", "adapter weights", "config")) for name in missing):
            fix = ("it is not a whole checkpoint: copy it again, or write it again with the script that wrote it"
                   + _written_by(path))
        else:
            fix = (f"`python model.py complete {path} OUT --processor-from MODEL` writes a complete folder at OUT, "
                   "a new one (MODEL: the model its weights came from, e.g. tiny, a hub id or a checkpoint folder)"
                   + ("; to --resume this run instead, copy those files into it from the folder it started from"
                      if os.path.isfile(os.path.join(path, "trainer_state.pt")) else ""))
        raise CheckpointError(f"checkpoints.py: {path} lacks {', '.join(missing)}; {fix}")
    for name in JSON_FILES:   # small files; tokenizer.json is the largest (~11 MB for Qwen2.5-VL)
        if os.path.isfile(os.path.join(path, name)):
            _read_json(path, name)
    _check_template(path)
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


def written_by(path):
    """The script that wrote the folder `path` ("sft.py", from its meta.json), or None: no meta.json,
    or one unreadable, cut short or not an object."""
    try:
        return checkpoint_meta(path).get("script")
    except (OSError, ValueError, AttributeError):
        return None


def _written_by(path):
    """" (meta.json: sft.py)" for a folder this project wrote, else ""."""
    script = written_by(path)
    return f" (meta.json: {script})" if script else ""
