"""The vision-language model: configs, loading and checkpoints (prompts: processor.py; sampling and
log-probs: policy.py).

Every script goes through this file to touch the model:

    model, processor = load_model("tiny")               # offline default, built from a config
    model, processor = load_model("Qwen/Qwen2.5-VL-3B-Instruct", max_pixels=401408)
    batch = processor.prompts(questions, images)        # left-padded prompts + pixel values
    completions = policy.sample_completions(model, processor, batch, num_samples=8, temperature=0.7)

`tiny` is a Qwen2.5-VL with a few hundred thousand parameters and a byte-level BPE tokenizer
trained on the phantom dataset's text: it runs on a laptop CPU and learns the phantom task in
minutes. Every other name loads with `from_pretrained` (a local directory or a hub id; Qwen2-VL
and Qwen2.5-VL alike), and every checkpoint this project writes reloads with plain transformers:

    Qwen2_5_VLForConditionalGeneration.from_pretrained("runs/sft")
    AutoTokenizer.from_pretrained("runs/sft")

A run with --lora-rank R writes its LoRA adapter in peft's format instead (adapter_config.json,
adapter_model.safetensors): load_model reads such a folder directly (base + adapter merged), and

    python model.py merge runs/grpo-lora runs/grpo-lora-merged    # a full checkpoint, as above

Prompts and pixels (VLProcessor, the system prompt, the chat layout): processor.py.
"""

import json
import os
import shutil
import sys
import tempfile

import torch
from transformers import (AutoConfig, AutoTokenizer, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration)

from distributed import add_runtime_args
from lora import _adapter_config, _add_adapter, add_lora_args, has_lora, lora_config, save_adapter
from processor import (CHAT_TEMPLATE, SPECIAL_TOKENS, SYSTEM_PROMPT, THINK_ANSWER_TOKENS, VLProcessor,
                       stock_image_processor)
from checkpoints import check_checkpoint_folder, is_adapter_dir, missing_checkpoint_files
from records import CheckpointError, run_script
from training import at_least, is_checkpoint

# [reconstructed] Size of the offline default model; nothing here is from the papers, which use
# Qwen2.5-VL-3B-Instruct. Small enough that SFT + GRPO on the phantom data fit in minutes on CPU.
TINY_TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096,
                 # M-RoPE splits the 16 rotary frequencies into (time, height, width) blocks, highest
                 # first, and gives image tokens 3-D positions (a 112-px image: a 4x4 grid of merged
                 # tokens, height and width positions 0-3 past the text before it). With theta 10^4
                 # the width block turns by < 0.01 rad across the image; theta 10 keeps every block
                 # turning by 0.1-1 rad per position, fine for prompts of a few hundred tokens
                 # (measured: EXPERIMENTS.md §6).
                 rope_parameters={"rope_type": "default", "rope_theta": 10.0,
                                  "mrope_section": [4, 6, 6]})  # sums to head_dim / 2 = 16
TINY_VISION = dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                   fullatt_block_indexes=[1])
TINY_VOCAB_SIZE = 1024
# [reconstructed] The std of the tiny model's random weights (transformers' initializer_range).
# pretrain.py --optimizer adamw --init-std 0.04 (the same draws, twice as large) reached the base's
# probe of 97% whole captions in 2400 steps of 8 instead of 3600, on an Intel CPU (one seed of three
# missed it on an AMD one), but SFT from that base was weaker (concept 75.9 against 79.0) and GRPO
# then no longer beat it (EXPERIMENTS.md §1, "The initial weights' scale"): the default stays 0.02.
TINY_INIT_STD = 0.02

# The published Qwen2.5-VL configs (config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct):
# 3,754,622,976 and 8,292,166,656 parameters. load_model(name) builds them with random weights,
# for memory planning and benchmarks without downloading anything.
_QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
_QWEN25_VL_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
QWEN25_VL_SHAPES = {
    "qwen2.5-vl-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                          num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-vl-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def qwen25_vl_config(shape, layers=None, tokenizer=None):
    """The real Qwen2.5-VL config of `shape` ("qwen2.5-vl-3b" or "-7b"), optionally with fewer
    decoder layers; token ids from `tokenizer` when given (the tiny one, for random-weight runs)."""
    text = dict(QWEN25_VL_SHAPES[shape], max_position_embeddings=128000, rope_parameters=_QWEN25_VL_ROPE)
    if layers:
        text["num_hidden_layers"] = layers
    ids = {}
    if tokenizer is not None:
        get = tokenizer.convert_tokens_to_ids
        ids = dict(image_token_id=get("<|image_pad|>"), video_token_id=get("<|video_pad|>"),
                   vision_start_token_id=get("<|vision_start|>"), vision_end_token_id=get("<|vision_end|>"))
        text.update(eos_token_id=get("<|im_end|>"), pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    vision = dict(_QWEN25_VL_VISION, out_hidden_size=text["hidden_size"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=text["tie_word_embeddings"],
                            **ids)


def build_tiny_tokenizer(corpus=None, vocab_size=TINY_VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on the phantom dataset's text (deterministic, offline).

    Byte-level, so it encodes any text; the think/answer tags are single tokens, as are Qwen's
    special tokens, so the tiny model's prompts have the same layout as Qwen2.5-VL's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if corpus is None:
        from phantom import phantom_corpus
        corpus = phantom_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(list(corpus) + [SYSTEM_PROMPT], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    tokenizer.add_tokens(THINK_ANSWER_TOKENS)
    return tokenizer


def tiny_config(tokenizer, init_std=TINY_INIT_STD):
    """Qwen2.5-VL config of the offline default model, with token ids taken from `tokenizer`, its
    random weights drawn with std `init_std`."""
    ids = tokenizer.convert_tokens_to_ids
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), eos_token_id=ids("<|im_end|>"), initializer_range=init_std,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    vision = dict(TINY_VISION, out_hidden_size=TINY_TEXT["hidden_size"], initializer_range=init_std)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, initializer_range=init_std,
                            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                            vision_start_token_id=ids("<|vision_start|>"),
                            vision_end_token_id=ids("<|vision_end|>"))


def load_model(name_or_path="tiny", device=None, dtype=torch.float32, gradient_checkpointing=False,
               freeze_vision=False, min_pixels=None, max_pixels=None, seed=0, attn_implementation="sdpa", layers=None,
               lora=None, train_adapter=False, weights=True, init_std=None):
    """Load (model, processor). `tiny` builds the offline default; anything else is from_pretrained.

    Weights in `dtype` (fp32 unless asked: how training computes is distributed.py's business),
    on `device` (default: cuda if available). `max_pixels` caps the image size fed to the vision
    tower (the image processor resizes larger scans down) so that one large scan cannot exhaust
    memory. `layers`: fewer decoder layers for a qwen2.5-vl-* shape (benchmarks on a CPU).

    An adapter folder (adapter_config.json, as a LoRA run writes) loads its base
    (base_model_name_or_path; a tiny or qwen2.5-vl-* base is built again from `seed`) with the
    adapter merged into the weights, or with train_adapter (a resumed LoRA run) the adapter kept
    apart and trainable. lora: a LoraConfig (lora_config) adds fresh trainable adapters to the
    loaded model and freezes the rest. weights=False builds the model on the meta device without
    reading any weights (the processes other than rank 0 under torchrun: distributed.py fills them).
    init_std: the std of a tiny model's random weights (None: TINY_INIT_STD).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if os.path.isdir(name_or_path):
        check_checkpoint_folder(name_or_path)   # before anything is read
    if is_adapter_dir(name_or_path):
        config = _adapter_config(name_or_path, trainable=train_adapter)
        model, processor = load_model(config.base_model_name_or_path, device="cpu",
                                      dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels, seed=seed,
                                      attn_implementation=attn_implementation, layers=layers, weights=weights)
        if train_adapter:
            _add_adapter(model, config, name_or_path if weights else None)
        elif weights:   # on meta there is nothing to merge: the merged model has the base's shapes
            import warnings

            from peft import PeftModel
            with warnings.catch_warnings():   # peft itself reads transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
                model = PeftModel.from_pretrained(model, name_or_path).merge_and_unload()
    elif train_adapter:
        raise FileNotFoundError(f"--resume {name_or_path}: no adapter_config.json there; this run was not "
                                "trained with --lora-rank (resume it without)")
    else:
        model, processor = _load_base(name_or_path, dtype, min_pixels, max_pixels, seed, attn_implementation, layers,
                                      weights, init_std)
    if lora is not None:
        lora.base_model_name_or_path = os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path
        torch.manual_seed(seed)   # the adapters' initial A: the same for a seed, whatever ran before
        _add_adapter(model, lora)
    if weights:
        model.to(device=device, dtype=dtype)
    model.generation_config.pad_token_id = processor.pad_token_id
    if gradient_checkpointing:
        # transformers also makes the embeddings' output require grad (enable_input_require_grads):
        # with a frozen base, a checkpointed layer's input must still carry gradient to the adapters
        # inside ("element 0 of tensors does not require grad" otherwise, TRL #3089)
        model.activation_checkpointing_enable()
        model.config.use_cache = False
    if freeze_vision:
        model.model.visual.requires_grad_(False)
    return model, processor


def _load_base(name_or_path, dtype, min_pixels, max_pixels, seed, attn_implementation, layers, weights, init_std=None):
    """(model, processor) of a model without adapters: tiny, a qwen2.5-vl-* shape or a checkpoint."""
    pixels = {k: v for k, v in dict(min_pixels=min_pixels, max_pixels=max_pixels).items() if v}
    if name_or_path == "tiny" or name_or_path in QWEN25_VL_SHAPES:
        # built here, random weights: the tiny default, or a real Qwen2.5-VL shape for benchmarks
        tokenizer = build_tiny_tokenizer()
        tiny = name_or_path == "tiny"
        image_processor = stock_image_processor(None, **{"min_pixels": 56 * 56, "max_pixels": 112 * 112 if tiny
                                                    else 401408, **pixels})
        torch.manual_seed(seed)
        config = (tiny_config(tokenizer, TINY_INIT_STD if init_std is None else init_std) if tiny
                  else qwen25_vl_config(name_or_path, layers, tokenizer))
        config._attn_implementation = attn_implementation
        with torch.device("cpu" if weights else "meta"):
            model = Qwen2_5_VLForConditionalGeneration(config)
        return model, VLProcessor(tokenizer, image_processor)
    if not os.path.isdir(name_or_path) and (os.environ.get("HF_HUB_OFFLINE") == "1"
                                            or name_or_path.count("/") != 1 or name_or_path[0] in "./~"):
        raise FileNotFoundError(f"--model {name_or_path}: no such checkpoint directory"
                                + (" (and HF_HUB_OFFLINE=1: no hub download)" if "/" in name_or_path else ""))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if os.path.isdir(name_or_path) and not isinstance(error, ImportError):   # files that parse, yet do not load
            raise CheckpointError(f"model.py: {name_or_path}: its tokenizer (tokenizer.json, tokenizer_config.json) "
                                  f"could not be loaded ({type(error).__name__}: {reason}); copy those files again "
                                  "from the folder it came from") from None
        if not isinstance(error, (OSError, ValueError)):
            raise
        # neither a local directory nor a reachable hub id
        raise FileNotFoundError(f"--model {name_or_path}: not a checkpoint directory, and the hub "
                                f"could not provide it ({reason})") from None
    _chat_template_from_processor_files(tokenizer, name_or_path)
    image_processor = stock_image_processor(name_or_path, **pixels)
    config = AutoConfig.from_pretrained(name_or_path)
    cls = model_class(config)
    if weights:
        model = cls.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation)
    else:
        config._attn_implementation = attn_implementation
        with torch.device("meta"):
            model = cls(config)
    return model, VLProcessor(tokenizer, image_processor)


def model_class(config):
    """The transformers class of a Qwen2-VL or Qwen2.5-VL config."""
    return Qwen2VLForConditionalGeneration if config.model_type == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration


def save_weights(model, path, state_dict=None):
    """Write the model's weights to `path` as transformers (or, for a LoRA model, peft) reads them.

    state_dict: the full state dict gathered from a sharded model (Runtime.model_state). fully_shard
    renames the model's class (FSDPQwen2_5_VL…), and transformers finds the mapping back to the hub
    names (model.layers.*, visual.*) by class name: saved from the sharded model, the tensors would
    keep their in-memory names (model.language_model.*, model.visual.*), which vLLM and other tools
    refuse. A plain model of the same config, on the meta device (no memory), saves them under the
    hub names, exactly as one process does.
    """
    if has_lora(model):
        save_adapter(model, path, state_dict)
        return
    if state_dict is not None:
        with torch.device("meta"):
            plain = model_class(model.config)(model.config)
        plain.generation_config = model.generation_config
        model = plain
    model.save_pretrained(path, state_dict=state_dict)


def _chat_template_from_processor_files(tokenizer, path):
    """Older Qwen2-VL repos keep the chat template in chat_template.json, beside the tokenizer."""
    file = os.path.join(path, "chat_template.json")
    if tokenizer.chat_template is None and os.path.isfile(file):
        with open(file) as f:
            tokenizer.chat_template = json.load(f)["chat_template"]


def add_model_args(parser, default_model="tiny"):
    parser.add_argument("--model", default=default_model,
                        help="'tiny' (offline default), a checkpoint directory, a hub id, or "
                             "qwen2.5-vl-3b / qwen2.5-vl-7b (the real shape, random weights: benchmarks)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="cap on image pixels fed to the vision tower (e.g. 401408 = 512*28*28)")
    parser.add_argument("--min-pixels", type=int, default=None, help="floor on image pixels")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in backward to save memory")
    parser.add_argument("--freeze-vision", action="store_true", help="do not train the vision tower")
    add_prompt_limit_arg(parser)
    add_lora_args(parser)
    parser.add_argument("--attn-implementation", default="sdpa",
                        help="sdpa, eager, or flash_attention_2 (where the flash-attn package is installed)")
    add_runtime_args(parser)


def add_prompt_limit_arg(parser):
    parser.add_argument("--max-prompt-tokens", type=at_least(1), default=2048,
                        help="[reconstructed] longest prompt (image tokens included) a record may have: "
                             "longer ones stop the run, or are skipped and counted with --skip-bad")


def model_from_args(args, rt, name=None, seed=0, frozen=False):
    """(model, processor) from the add_model_args options, placed by the Runtime `rt`: on its
    device, in its precision, sharded under torchrun (only rank 0 reads the weights). frozen: a
    model that is never trained. With --lora-rank, the model gets fresh adapters, or, resumed
    (name is --resume), the adapters of the run it continues."""
    name = name or args.model
    lora = None if frozen else lora_config(args)
    resuming = not frozen and bool(getattr(args, "resume", None)) and name == args.resume
    try:
        model, processor = load_model(
            name, device="cpu", dtype=rt.frozen_dtype if frozen else rt.weight_dtype,
            gradient_checkpointing=args.gradient_checkpointing and not frozen,
            freeze_vision=args.freeze_vision, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
            seed=seed, attn_implementation=args.attn_implementation, lora=None if resuming else lora,
            train_adapter=resuming and (lora is not None or is_adapter_dir(name)), weights=rt.reads_weights)
    except FileNotFoundError as error:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {error}")
    if frozen:
        model.eval().requires_grad_(False)
    return rt.prepare(model, frozen=frozen), processor


def check_prompt_lengths(records, processor, limit, skip_bad, script):
    """The records whose prompt fits in `limit` tokens (question, template and image tokens).

    Prompts are never truncated (image tokens must match the pixels), so a longer one stops the
    run naming the record, or with skip_bad (--skip-bad) is left out and counted.
    """
    from PIL import Image

    from images import open_image
    kept, skipped = [], []
    for record in records:
        if isinstance(record.image, Image.Image):
            size = record.image.size
        else:
            try:
                with open_image(record.image) as image:    # reads the header, not the pixels
                    size = image.size
            except (OSError, ValueError):
                kept.append(record)                        # unreadable: data.load_image reports it
                continue
        n = processor.prompt_length(record.question, size)
        if n <= limit:
            kept.append(record)
        elif skip_bad:
            skipped.append(record)
        else:
            sys.exit(f"{script}: {record.source or record.id}: the prompt is {n} tokens, over "
                     f"--max-prompt-tokens {limit} (question of {len(record.question)} characters); "
                     "raise the limit, or --skip-bad to leave such records out")
    if skipped:
        print(f"{script}: skipped {len(skipped)} record(s) whose prompt is over --max-prompt-tokens {limit}",
              file=sys.stderr)
    return kept


def save_checkpoint(model, processor, path, trainer_state=None, meta=None, rt=None):
    """Write a Hugging Face checkpoint (+ trainer_state.pt, meta.json) to `path` atomically; for a
    LoRA model, its adapter in peft's format (model.save_weights).

    Everything goes to a temporary sibling directory first, which then replaces `path` with
    renames: an interrupted save leaves the previous checkpoint intact. meta.json also lists the
    option changes the run was resumed with (trainer_state["args"]["resumes"]:
    training.resume_options). With a Runtime `rt` of several processes, every process must call
    this (the weights are gathered from all shards); the main process writes.
    """
    state_dict = rt.model_state(model, trainable_only=has_lora(model)) if rt is not None else None
    if rt is not None and not rt.is_main:
        rt.barrier()
        return
    path = os.path.abspath(path)
    if os.path.isdir(path) and os.listdir(path) and not is_checkpoint(path):
        raise FileExistsError(f"model.py: {path} exists and is not a checkpoint; saving would replace "
                              "it whole: choose another --out")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes it private (0700); a checkpoint is a normal folder
    try:
        save_weights(model, tmp, state_dict)
        processor.save_pretrained(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, os.path.join(tmp, "trainer_state.pt"))
        resumes = (trainer_state or {}).get("args", {}).get("resumes")
        if meta is not None:
            meta = dict(meta, resumes=resumes) if resumes else meta
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f, indent=2)
        old = path + ".old"
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if rt is not None:
            rt.barrier()


def _new_folder(command, out):
    """Exit with one line if `out` exists and is not empty: merge and complete write a new folder
    and never replace one (not even their source: a training checkpoint's trainer_state.pt would go)."""
    if os.path.isdir(out) and os.listdir(out) or os.path.isfile(out):
        sys.exit(f"model.py {command}: {out} already exists; nothing there is replaced: give a new folder as OUT")


def merge_adapter(adapter_dir, out):
    """Write the model of a LoRA run's folder, adapter merged into the base weights, as a full
    checkpoint at `out` (a new folder; hub layout, fp32) that plain transformers, vLLM and evaluate.py load."""
    _new_folder("merge", out)
    if not is_adapter_dir(adapter_dir):
        sys.exit(f"model.py: {adapter_dir}: no adapter_config.json there (not a --lora-rank run's folder)")
    model, processor = load_model(adapter_dir, device="cpu")
    save_checkpoint(model, processor, out, meta=dict(script="model.py merge", adapter=os.path.abspath(adapter_dir)))
    print(f"model.py: wrote {out} ({adapter_dir} merged into its base)")


def complete_checkpoint(weights_dir, out, processor_from):
    """Write the model in weights_dir (config.json and weights: a weights-only copy, a hand-made
    merge) with the tokenizer, chat template and image processor of `processor_from` as a complete
    checkpoint at `out` (a new folder); weights_dir itself is left as it is."""
    _new_folder("complete", out)
    missing = [name for name in missing_checkpoint_files(weights_dir) if name.startswith(("weights", "config"))]
    if missing:
        sys.exit(f"model.py complete: {weights_dir} lacks {', '.join(missing)}: nothing to complete")
    config = AutoConfig.from_pretrained(weights_dir)
    model = model_class(config).from_pretrained(weights_dir, dtype=torch.float32)
    _, processor = load_model(processor_from, device="cpu", weights=False)
    save_checkpoint(model, processor, out, meta=dict(script="model.py complete", weights=os.path.abspath(weights_dir),
                                                     processor=processor_from))
    print(f"model.py: wrote {out} (the weights of {weights_dir}, the processor of {processor_from})")


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="python model.py merge runs/grpo-lora runs/grpo-lora-merged: "
                                     "a LoRA run's adapter merged into its base, as a full checkpoint. "
                                     "python model.py complete DIR OUT --processor-from MODEL: DIR's weights with "
                                     "MODEL's tokenizer, chat template and image processor, as a complete checkpoint")
    parser.add_argument("command", choices=["merge", "complete"])
    parser.add_argument("source", help="merge: folder a --lora-rank run wrote (adapter_config.json); complete: "
                                       "folder with config.json and weights")
    parser.add_argument("out", help="a new folder for the merged or completed checkpoint (an existing one is refused)")
    parser.add_argument("--processor-from", default=None,
                        help="complete (required): the model whose tokenizer and image processor go with the "
                             "weights (tiny, a hub id or a checkpoint folder)")
    args = parser.parse_args(argv)
    if args.command == "complete" and not args.processor_from:
        parser.error("complete needs --processor-from MODEL: the model the weights came from (its tokenizer "
                     "must match them)")
    if args.command == "merge":
        merge_adapter(args.source, args.out)
    else:
        complete_checkpoint(args.source, args.out, args.processor_from)


if __name__ == "__main__":
    run_script(main)
