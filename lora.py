"""LoRA adapters on the frozen model, through peft (an optional dependency, imported only when
--lora-rank > 0): the options, adding and saving adapters in peft's format, and GRPO's reference
policy as the same model with its adapters off. model.py loads and saves models with them.
"""

import os
import sys
from contextlib import contextmanager, nullcontext

from training import at_least, lora_alpha

# LoRA (--lora-rank R > 0): low-rank adapters on the frozen model, through peft (imported only
# then). Each adapted linear layer W (out x in) computes W x + (alpha / R) B A x, with A (R x in)
# random and B (out x R) zero at the start: the adapted model starts as the base model exactly.
# [reconstructed] The default targets, as verl and EasyR1 do: every attention and MLP projection
# of the language model; the vision tower stays frozen (--lora-vision adapts its blocks too).
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
VISION_LORA_TARGETS = "qkv|proj|gate_proj|up_proj|down_proj"   # a Qwen2.5-VL vision block's linear layers


def add_lora_args(parser):
    parser.add_argument("--lora-rank", type=at_least(0), default=0,
                        help="LoRA adapters of this rank on the frozen model, through peft (0: full fine-tuning, "
                             "as ARMed); the learning rate then defaults to 10x the full fine-tuning one")
    parser.add_argument("--lora-alpha", type=float, default=None,
                        help="LoRA scale numerator: the update is (alpha / rank) B A [reconstructed: 2 x rank, as "
                             "VLM-R1's r=64, alpha=128]")
    parser.add_argument("--lora-dropout", type=at_least(0.0, float), default=0.0,
                        help="dropout on the adapters' input [reconstructed: 0, so that the sampling policy and "
                             "the trained one are the same function, as GRPO's ratio assumes]")
    parser.add_argument("--lora-targets", default=LORA_TARGETS,
                        help="comma-separated linear layers of each language-model decoder layer that get adapters "
                             "[reconstructed: all attention and MLP projections]")
    parser.add_argument("--lora-vision", action="store_true",
                        help="adapt the vision tower's blocks too (qkv, proj and MLP); by default it stays frozen")


def lora_config(args):
    """The peft LoraConfig the add_lora_args options ask for, or None for full fine-tuning."""
    if not args.lora_rank:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        sys.exit(f"{os.path.basename(sys.argv[0])}: --lora-rank needs peft (`pip install peft`)")
    return LoraConfig(r=args.lora_rank, lora_alpha=lora_alpha(args),
                      lora_dropout=args.lora_dropout, target_modules=lora_target_pattern(args.lora_targets,
                                                                                         args.lora_vision))


def lora_target_pattern(targets=LORA_TARGETS, vision=False):
    """The regular expression (peft's target_modules) of the module names that get adapters:
    "q_proj,v_proj" -> model.language_model.layers.<n>.(self_attn|mlp).(q_proj|v_proj)."""
    names = "|".join(t.strip() for t in targets.split(",") if t.strip())
    pattern = rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"
    if vision:
        pattern += rf"|model\.visual\.blocks\.\d+\.(attn|mlp)\.({VISION_LORA_TARGETS})"
    return pattern


def has_lora(model):
    """Whether `model` carries LoRA adapters (then only they train, and only they are saved)."""
    return bool(getattr(model, "peft_config", None))


def _adapter_config(path, trainable=False):
    from peft import LoraConfig
    config = LoraConfig.from_pretrained(path)
    config.inference_mode = not trainable
    return config


def _add_adapter(model, config, weights_from=None):
    """Inject the adapters of `config` into `model` in place (only they then require grad), with
    the weights of the adapter folder `weights_from` if given."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    inject_adapter_in_model(config, model)
    model.frozen_base = True   # only the adapters train: distributed.py stores the rest as a frozen model
    if weights_from is not None:
        from safetensors.torch import load_file
        state = load_file(os.path.join(weights_from, "adapter_model.safetensors"))
        prefix = "base_model.model."
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        unexpected = set_peft_model_state_dict(model, state).unexpected_keys
        if unexpected:
            raise ValueError(f"lora.py: {weights_from}/adapter_model.safetensors: {len(unexpected)} tensor(s) "
                             f"match no adapter of the model, e.g. {unexpected[0]}")
    if not config.inference_mode:
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)


def save_adapter(model, path, state_dict=None):
    """The adapters in peft's format (adapter_config.json, adapter_model.safetensors with peft's
    base_model.model.* names), which peft, TRL and vLLM read. state_dict: the adapters' weights
    gathered from a sharded model (Runtime.model_state); by default the model's own."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    state = get_peft_model_state_dict(model, state_dict=state_dict, save_embedding_layers=False)
    save_file({f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()},
              os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(path)


@contextmanager
def adapters_disabled(model):
    """Run `model` as its base model: every LoRA adapter off, no copy made."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def reference_policy(model, ref_model):
    """GRPO's frozen reference: ref_model, or for a LoRA model (ref_model None) the same model with
    its adapters off, which is exactly the starting policy without a second copy in memory."""
    return adapters_disabled(model) if ref_model is None and has_lora(model) else nullcontext(ref_model)
