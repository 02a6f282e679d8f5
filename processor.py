"""Prompts and pixels: the tokenizer and the image processor turning (question, image) pairs into
the model's inputs (VLProcessor), and the prompt layout every stage shares (the system prompt, the
Qwen2-VL chat template, the special tokens). model.load_model returns a VLProcessor with the model.

    batch = processor.prompts(["Is there a lesion?"], [image])    # left-padded prompt + pixel values
    batch = processor.training_batch(questions, images, targets)  # prompt + target, labels on the target

The image side does not use transformers' stock Qwen2-VL *processor*, which needs torchvision for
video even when there is none; it uses the stock *image* processor (the PIL one where torchvision
is missing) and expands the image placeholder itself: one `<|image_pad|>` per merged 2x2 patch.
"""

import numpy as np
import torch

SYSTEM_PROMPT = ("You are a medical imaging assistant. Look at the image and answer the question. "
                 "First reason inside <think> </think>, then give a short final answer inside "
                 "<answer> </answer>.")
THINK_ANSWER_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# The Qwen2-VL chat layout, written out for the tiny tokenizer (real checkpoints bring their own).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def stock_image_processor(source=None, **pixels):
    """The stock Qwen2-VL image processor: the default one where torchvision exists, else PIL."""
    try:
        import torchvision  # noqa: F401
        from transformers import Qwen2VLImageProcessor as cls  # constructible, unlike AutoImageProcessor
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
            Qwen2VLImageProcessorPil as cls
    if source is None:
        return cls(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels)
    return cls.from_pretrained(source, **pixels)


def _pixel_table(image_processor):
    """(3, 256) float32: the value the image processor gives each 8-bit value of each RGB channel,
    from its own rescale and normalize run on the ramp 0..255 (0.02 ms: not worth caching)."""
    p = image_processor
    values = np.tile(np.arange(256, dtype=np.uint8), (3, 1, 1))   # (channels, 1, 256), channels first
    if p.do_rescale:
        values = p.rescale(values, p.rescale_factor)
    if p.do_normalize:
        values = p.normalize(values, p.image_mean, p.image_std)
    return np.asarray(values, dtype=np.float32)[:, 0]


def _same_size_pixels(image_processor, images):
    """(pixel_values, image_grid_thw) of RGB `images`, equal to the stock PIL image processor's, for
    a batch whose images share one size that needs no resize (the phantom's 112 x 112): the table
    of _pixel_table looked up for the whole batch, then one reshape into 14-px patches in the
    processor's order, instead of its per-image float64 rescale, normalize and patchify (8 phantom
    images: 1.3 ms against 5.8, a 2-core AMD EPYC). None where it does not apply: the torchvision
    processor, mixed sizes, a size to resize.
        8 images of 112 x 112 -> pixel_values (8 x 64, 3 x 2 x 14 x 14), image_grid_thw [[1, 8, 8]] x 8
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
    p = image_processor
    if type(p) is not Qwen2VLImageProcessorPil or not images or len({im.size for im in images}) > 1:
        return None
    width, height = images[0].size
    patch, merge, temporal = p.patch_size, p.merge_size, p.temporal_patch_size
    if smart_resize(height, width, factor=patch * merge, min_pixels=p.size["shortest_edge"],
                    max_pixels=p.size["longest_edge"]) != (height, width):
        return None
    count, rows, cols = len(images), height // patch, width // patch
    channels = np.arange(3) * 256   # the table's row of each channel, flattened
    pixels = _pixel_table(p).ravel().take(np.stack([np.asarray(im) for im in images]) + channels)   # (B, H, W, 3)
    pixels = pixels.reshape(count, rows // merge, merge, patch, cols // merge, merge, patch, 3)
    pixels = pixels.transpose(0, 1, 4, 2, 5, 7, 3, 6)   # (B, rows/2, cols/2, 2, 2, channel, 14, 14)
    pixels = np.broadcast_to(pixels[:, :, :, :, :, :, None], (*pixels.shape[:6], temporal, patch, patch))
    pixel_values = torch.from_numpy(np.ascontiguousarray(pixels).reshape(count * rows * cols, -1))
    return pixel_values, torch.tensor([[1, rows, cols]] * count)


class VLProcessor:
    """Tokenizer + image processor: turns (question, image) pairs into model inputs.

    A prompt is the chat template's text with the single `<|image_pad|>` expanded to one token per
    merged patch: a 112x112 image is an 8x8 grid of 14-px patches, merged 2x2, so 16 tokens.
    Prompts are left-padded (batched generation appends on the right) and never truncated, so
    image tokens always match the pixel values. system_prompt None: no system turn (pretrain.py's
    captions; a real Qwen chat template then writes its own default one).
    """

    def __init__(self, tokenizer, image_processor, system_prompt=SYSTEM_PROMPT):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system_prompt = system_prompt
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = "<|endoftext|>"
        self.image_token = "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.merge_size = image_processor.merge_size
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        # Qwen's generation config stops at <|im_end|> or <|endoftext|>; so does the mask.
        self.eos_token_ids = sorted({im_end, tokenizer.convert_tokens_to_ids("<|endoftext|>")})
        self.pad_token_id = tokenizer.pad_token_id

    def prompt_text(self, question):
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages = system + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(self.image_token) != 1:
            raise ValueError("processor.py: the tokenizer's chat template did not place exactly one "
                             f"{self.image_token} for the image; is this a Qwen2-VL tokenizer?")
        return text

    def _images(self, images):
        images = [im.convert("RGB") for im in images]
        same_size = _same_size_pixels(self.image_processor, images)
        if same_size is not None:
            return same_size
        out = self.image_processor(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def _expand(self, text, grid_thw):
        n = int(grid_thw.prod()) // self.merge_size ** 2
        return text.replace(self.image_token, self.image_token * n)

    def image_tokens(self, width, height):
        """Merged image tokens a width x height image becomes after the processor's resize
        (without decoding it): 140 x 84 px -> an 10 x 6 grid of 14-px patches -> 15 tokens."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        patch, size = self.image_processor.patch_size, self.image_processor.size
        h, w = smart_resize(height, width, factor=patch * self.merge_size, min_pixels=size["shortest_edge"],
                            max_pixels=size["longest_edge"])
        return (h // patch) * (w // patch) // self.merge_size ** 2

    def prompt_length(self, question, image_size):
        """Tokens of the prompt for `question` with an image of image_size = (width, height)."""
        text_tokens = len(self.tokenizer(self.prompt_text(question), add_special_tokens=False)["input_ids"])
        return text_tokens - 1 + self.image_tokens(*image_size)   # the one <|image_pad|> expands

    def token_types(self, input_ids):
        """mm_token_type_ids: 1 for image tokens, 0 for text, as the stock Qwen2-VL processor.

        Qwen2.5-VL was trained with 3-D (time, height, width) rotary positions for image tokens:
        the model computes them from these types (get_rope_index). Without them transformers falls
        back to 1-D positions, which no real checkpoint has seen.
            input_ids = [<|vision_start|>, <|image_pad|> x 4, <|vision_end|>, "What"]
            -> types  = [0, 1, 1, 1, 1, 0, 0]; positions (t, h, w) of the 2x2 image: (1,1,1),
               (1,1,2), (1,2,1), (1,2,2); the text after it restarts at 1 + 2 = 3
        """
        return (input_ids == self.image_token_id).int()

    def prompts(self, questions, images):
        """Left-padded prompt batch: input_ids, attention_mask, mm_token_type_ids (B, P),
        pixel_values, image_grid_thw."""
        pixel_values, grid = self._images(images)
        texts = [self._expand(self.prompt_text(q), g) for q, g in zip(questions, grid)]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    mm_token_type_ids=self.token_types(enc["input_ids"]),
                    pixel_values=pixel_values, image_grid_thw=grid)

    def training_batch(self, questions, images, targets):
        """Prompt + target, left-padded; labels are -100 everywhere but the target tokens.

        targets are the assistant's text, e.g. "<think>…</think><answer>…</answer>"; the end-of-turn
        token is appended so the model learns to stop.
        """
        pixel_values, grid = self._images(images)
        tok = self.tokenizer
        rows, labels = [], []
        for q, g, target in zip(questions, grid, targets):
            p = tok(self._expand(self.prompt_text(q), g), add_special_tokens=False)["input_ids"]
            t = tok(target + "<|im_end|>", add_special_tokens=False)["input_ids"]
            rows.append(p + t)
            labels.append([-100] * len(p) + t)
        width = max(map(len, rows))
        pad = lambda seq, value: [value] * (width - len(seq)) + seq  # noqa: E731
        input_ids = torch.tensor([pad(r, self.pad_token_id) for r in rows])
        return dict(input_ids=input_ids, attention_mask=torch.tensor([pad([1] * len(r), 0) for r in rows]),
                    mm_token_type_ids=self.token_types(input_ids),
                    labels=torch.tensor([pad(l, -100) for l in labels]),
                    pixel_values=pixel_values, image_grid_thw=grid)

    def save_pretrained(self, path):
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
